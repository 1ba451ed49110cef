"""tests/unit runs on fakes only: fast, and about the logic, never about an AWS adapter.

``console`` installs the application on fakes: ``bootstrap.components()`` answers with in-memory
ports, so every handler and route of app.py runs without moto. Tests of an adapter or of the wiring
against AWS (moto's ``aws``/``console_aws``) belong in tests/integration; asking for them here fails.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chalicelib import bootstrap
from chalicelib.bootstrap import Components
from tests.fakes import fake_components

_ON_AWS = ("aws", "console_aws")


@pytest.fixture(autouse=True)
def _fakes_only(request: pytest.FixtureRequest) -> None:
    wanted = [name for name in _ON_AWS if name in request.fixturenames]
    if wanted:
        pytest.fail(f"{request.node.nodeid} asks for {wanted}: tests on moto belong in tests/integration")


@pytest.fixture
def console() -> Iterator[Components]:
    """Every handler and route of app.py runs on these fakes until the test ends."""
    parts = fake_components()
    bootstrap.install(parts)
    yield parts
    bootstrap.install(None)
