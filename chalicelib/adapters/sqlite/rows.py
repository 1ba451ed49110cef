"""A row's JSON text, written and read again without doing the same work twice.

The Console side writes a transaction, reads it back at once to mark its notification queued, and
reads it again to deliver that notification; each time ``jsonutil`` walked every value in Python.
Most rows are flat records (strings, integers, booleans, None, lists of strings and integers), for
which two shortcuts give exactly what ``jsonutil`` gives:

- ``flat_json(values)`` is the text ``jsonutil.dumps(values)`` writes, byte for byte, written by
  ``json``'s C encoder (which writes these values just as ``jsonutil`` does); None for anything
  else (a ``Decimal``, a nested object, a float to refuse), which the caller writes with ``jsonutil``.
- ``DecodedRows`` keeps, per row key, the text last written or read and the values it stands for;
  a read of the very same text gets a copy of those values instead of parsing it again. A text that
  ``jsonutil.loads`` would read differently (a number or a string past its limits) is never kept.

    rows = DecodedRows()
    text = rows.dumps("T1", {"status_code": 118, "flags": []})   # '{"status_code":118,"flags":[]}'
    rows.loads("T1", text)                                       # a copy, not parsed again
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

from chalicelib import jsonutil

# json's encoder, the C one, set to jsonutil's compact form: ASCII, no spaces.
_ENCODER = json.JSONEncoder(separators=(",", ":"))
# jsonutil.loads refuses integers of more than MAX_DIGITS significant digits.
_INT_LIMIT = 10**jsonutil.MAX_DIGITS
# The escape of a surrogate: jsonutil.loads checks the text around one before reading it.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
ROWS_KEPT = 1024


def _flat_copy(values: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of ``values`` that shares nothing mutable with it, if they are flat: only strings,
    integers within jsonutil's limits, booleans, None and lists of the first three, by exact type
    (no subclasses), which JSON writes and reads back as the very same values. None if not."""
    copy: dict[str, Any] = {}
    for key, value in values.items():
        kind = type(value)
        if type(key) is not str:
            return None
        if kind is str or value is None or kind is bool or (kind is int and -_INT_LIMIT < value < _INT_LIMIT):
            copy[key] = value
        elif kind is list:
            for item in value:
                kind = type(item)
                if not (kind is str or kind is bool or (kind is int and -_INT_LIMIT < item < _INT_LIMIT)):
                    return None
            copy[key] = value.copy()
        else:
            return None
    return copy


def is_flat(values: dict[str, Any]) -> bool:
    """Whether ``values`` is a flat record (see ``_flat_copy``)."""
    return _flat_copy(values) is not None


def flat_json(values: dict[str, Any]) -> str | None:
    """``jsonutil.dumps(values)`` for a flat record (see ``_flat_copy``); None for any other."""
    return _ENCODER.encode(values) if is_flat(values) else None


class DecodedRows:
    """Per row key, the flat values of the text last written or read, while that text stays the same."""

    def __init__(self, kept: int = ROWS_KEPT) -> None:
        self.kept = kept
        # Per key: the text, its values, and which of them are lists (the only values to copy).
        self._rows: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {}
        self._lock = threading.Lock()
        self.hits = 0

    def dumps(self, key: str, values: dict[str, Any]) -> str | None:
        """``flat_json(values)``, kept as the text of ``key``'s row; None (nothing kept) if not flat."""
        kept = _flat_copy(values)
        if kept is None:
            return None
        text = _ENCODER.encode(kept)
        self._keep(key, text, kept)
        return text

    def loads(self, key: str, text: str) -> Any:
        """``jsonutil.loads(text)``; a copy of the kept values when it is ``key``'s kept text."""
        with self._lock:
            kept = self._rows.get(key)
        if kept is not None and kept[0] == text:
            self.hits += 1
            values = dict(kept[1])
            for name in kept[2]:
                values[name] = values[name].copy()
            return values
        values = jsonutil.loads(text)
        if isinstance(values, dict):
            flat = _flat_copy(values)
            if flat is not None:
                self._keep(key, text, flat)
        return values

    def _keep(self, key: str, text: str, values: dict[str, Any]) -> None:
        """Keep ``values`` (the caller's own copy) as what ``text`` reads as."""
        if _SURROGATE_ESCAPE.search(text):
            return  # jsonutil.loads judges these itself: never answered for it
        lists = tuple(name for name, value in values.items() if type(value) is list)
        with self._lock:
            self._rows.pop(key, None)
            if len(self._rows) >= self.kept:
                del self._rows[next(iter(self._rows))]
            self._rows[key] = (text, values, lists)
