"""Which application metrics the code emits, and with which dimensions, read from its source.

Every ``count("Name", …, key=value)`` call in chalicelib/ is one metric emitted through Powertools,
which adds the ``service`` dimension to each; a conditional name counts as both of its names.
"""

from __future__ import annotations

import ast
from pathlib import Path

CHALICELIB = Path(__file__).resolve().parents[2] / "chalicelib"


def _names(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _names(node.body) + _names(node.orelse)
    raise AssertionError(f"metric name that cannot be read statically: {ast.unparse(node)}")


def emitted_metrics() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in CHALICELIB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "count"):
                continue
            if not node.args:
                continue
            dimensions = {"service", *(k.arg for k in node.keywords if k.arg not in (None, "value"))}
            for name in _names(node.args[0]):
                previous = found.setdefault(name, dimensions)
                assert previous == dimensions, f"{name} is emitted with {previous} and with {dimensions}"
    return found
