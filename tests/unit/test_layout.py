"""The layout's rules, checked on every run: features meet only through ports, and only adapters
(and the composition root) touch AWS, brokers or other stores."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CHALICELIB = Path(__file__).resolve().parents[2] / "chalicelib"
FEATURES = ("payments", "console", "merchants")
# Libraries that talk to the outside world: only adapters may import them.
OUTSIDE = ("boto3", "botocore", "paho", "sqlite3", "urllib.request", "http.client", "socket")


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _outside(name: str) -> bool:
    return any(name == client or name.startswith(f"{client}.") for client in OUTSIDE)


def _modules(folder: str) -> list[Path]:
    return sorted((CHALICELIB / folder).glob("*.py"))


@pytest.mark.parametrize("feature", FEATURES)
def test_a_feature_reaches_another_only_through_its_ports(feature: str) -> None:
    crossings = [
        f"{path.name} imports {name}"
        for path in _modules(feature)
        for name in _imports(path)
        for other in FEATURES
        if other != feature
        and name.startswith(f"chalicelib.{other}")
        and not name.startswith(f"chalicelib.{other}.ports")
    ]
    assert crossings == []


@pytest.mark.parametrize("feature", FEATURES)
def test_features_never_import_adapters_or_outside_clients(feature: str) -> None:
    found = [
        f"{path.name} imports {name}"
        for path in _modules(feature)
        for name in _imports(path)
        if name.startswith("chalicelib.adapters") or _outside(name)
    ]
    assert found == []


def test_the_rules_above_see_a_crossing_when_there_is_one(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("from chalicelib.console.domain import Transaction\nimport boto3\n")
    assert "chalicelib.console.domain" in _imports(module)
    assert _outside("boto3") and _outside("botocore.exceptions") and not _outside("socketserver")
