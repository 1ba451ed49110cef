"""A domain dataclass as the plain record a table keeps: ``dataclasses.asdict`` without its deep
copy of every value.

``asdict`` copies each leaf with ``copy.deepcopy``, which for a transaction (its basket, its
customer, its IPN) was a quarter of the IPN ingest's CPU. Strings, numbers, ``Decimal`` and
``None`` are immutable and kept as they are; dataclasses, dicts, lists and tuples are rebuilt, so
the record shares nothing mutable with the instance; anything else is deep-copied, as ``asdict``
does.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Line:
    ...     sku: str
    ...     qty: int
    >>> @dataclass
    ... class Basket:
    ...     lines: list[Line]
    ...     note: str | None = None
    >>> as_record(Basket([Line("A", 2)]))
    {'lines': [{'sku': 'A', 'qty': 2}], 'note': None}
"""

from __future__ import annotations

import copy
from dataclasses import fields, is_dataclass
from decimal import Decimal
from typing import Any

_IMMUTABLE = (str, int, float, Decimal, type(None))
_NAMES: dict[type, tuple[str, ...]] = {}


def as_record(instance: Any) -> dict[str, Any]:
    """The fields of a dataclass instance as a new dict, nested dataclasses as dicts."""
    cls = type(instance)
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(field.name for field in fields(cls))
    return {name: _plain(getattr(instance, name)) for name in names}


def _plain(value: Any) -> Any:
    if isinstance(value, _IMMUTABLE):
        return value
    if isinstance(value, dict):
        return type(value)((_plain(key), _plain(item)) for key, item in value.items())
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_plain(item) for item in value)
    if is_dataclass(value) and not isinstance(value, type):
        return as_record(value)
    return copy.deepcopy(value)
