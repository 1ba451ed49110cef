"""What the application logs, as records a test can read: the lines operators search and alarm on
(refusal reasons, outcome labels) are part of the behaviour, and pinned like it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from chalicelib.observability import logger

# The standard logger under the structured one: its records carry the fields passed to log_event.
_LOGGER = logging.getLogger(logger.service)


class Logged:
    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []

    def lines(self, message: str) -> list[dict[str, Any]]:
        """Every line logged with this message: its level and fields."""
        return [
            {"level": record.levelname.lower(), **{key: getattr(record, key) for key in _fields(record)}}
            for record in self.records
            if record.getMessage() == message
        ]

    def one(self, message: str) -> dict[str, Any]:
        found = self.lines(message)
        assert len(found) == 1, f"{len(found)} lines {message!r} in {[r.getMessage() for r in self.records]}"
        return found[0]


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> list[str]:
    return [key for key in vars(record) if key not in _STANDARD]


class _Handler(logging.Handler):
    def __init__(self, logged: Logged) -> None:
        super().__init__(logging.DEBUG)
        self._logged = logged

    def emit(self, record: logging.LogRecord) -> None:
        self._logged.records.append(record)


@contextmanager
def captured_logs() -> Iterator[Logged]:
    logged = Logged()
    handler = _Handler(logged)
    # Info lines count too, whatever level the test run logs at.
    level = _LOGGER.level
    _LOGGER.setLevel(logging.INFO)
    _LOGGER.addHandler(handler)
    try:
        yield logged
    finally:
        _LOGGER.removeHandler(handler)
        _LOGGER.setLevel(level)
