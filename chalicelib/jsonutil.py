"""The one JSON reader and writer of the API: money never passes through a float.

Incoming JSON numbers with a fraction become ``Decimal``; outgoing ``Decimal`` values are written
exactly as they are (``8.99`` stays ``8.99``), which neither ``json`` nor Chalice's own encoder does.

    >>> loads('{"unit_price": 8.99}')
    {'unit_price': Decimal('8.99')}
    >>> dumps({"unit_price": Decimal("8.99"), "n": 1})
    '{"unit_price":8.99,"n":1}'
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

_encode_str = json.encoder.encode_basestring_ascii


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str | bytes) -> Any:
    """Parse JSON; fractions as ``Decimal``, NaN/Infinity refused."""
    return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)


def dumps(value: Any) -> str:
    """Compact JSON; ``Decimal`` written verbatim, integral ``Decimal`` as an integer."""
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts)


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_encode_str(value))
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("non-finite Decimal")
        exponent = value.as_tuple().exponent
        integral = isinstance(exponent, int) and exponent >= 0
        out.append(str(int(value)) if integral else format(value, "f"))
    elif isinstance(value, float):
        raise TypeError("floats are not written by this API")
    elif isinstance(value, dict):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(_encode_str(str(key)))
            out.append(":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot write {type(value).__name__} as JSON")
