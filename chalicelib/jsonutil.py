"""The one JSON reader and writer of the API: money never passes through a float.

Incoming JSON numbers with a fraction become ``Decimal``; outgoing ``Decimal`` values are written
exactly as they are (``8.99`` stays ``8.99``), which neither ``json`` nor Chalice's own encoder does.

Everything that reads JSON from outside (HTTP bodies, IPNs, terminal messages, queue records) reads
it here, under limits checked while the text is scanned, before any value is built: nesting depth,
the size of numbers, lone surrogates. Past a limit, :class:`JsonLimitError` names the offending
value's dotted path. A number like ``1E+300000`` is cheap to parse but ruinous to print or compute
with; refusing it at the door keeps every later step's cost bounded by the body's size.

    >>> loads('{"unit_price": 8.99}')
    {'unit_price': Decimal('8.99')}
    >>> dumps({"unit_price": Decimal("8.99"), "n": 1})
    '{"unit_price":8.99,"n":1}'
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any, NoReturn

from chalicelib.exceptions import JsonLimitError

_encode_str = json.encoder.encode_basestring_ascii

MAX_DEPTH = 32
MAX_DIGITS = 30
MAX_EXPONENT = 20

# One token at a time, anchored; ``[0-9]``, not ``\d``, which also matches other scripts' digits.
# A string is ``"`` then escapes or plain characters: the two alternatives start differently, so
# matching is linear. The scan stops at the first text that is no JSON token (``json`` refuses it).
_TOKEN = re.compile(
    r"""[ \t\n\r]*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<num>-?(?P<int>0|[1-9][0-9]*)(?:\.(?P<frac>[0-9]+))?(?:[eE](?P<exp>[+-]?[0-9]+))?)
    | (?P<open>[\[{])
    | (?P<close>[\]}])
    | (?P<comma>,)
    | (?P<colon>:)
    | (?P<lit>true|false|null)
    )""",
    re.VERBOSE,
)
_SURROGATE = re.compile("[\ud800-\udfff]")
# What only the scan can judge, looked for at C speed: a surrogate escape, or more brackets than the
# depth limit. Numbers are judged by the parser's own hooks as it meets them (``_parse_int``,
# ``_parse_float``): signatures, ids and timestamps full of digits and ``e`` cost no scan.
_SUSPECT = re.compile(r"\\u[dD][89a-fA-F]")
_NUMBER = re.compile(r"-?(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]+))?(?:[eE](?P<exp>[+-]?[0-9]+))?")


class _NumberPastLimit(Exception):
    """Raised by a parser hook; the scan then finds the number again and names its path."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _FractionMet(Exception):
    """Raised by the integers-only parser's hook at the first number with a fraction or an exponent."""


def loads(text: str | bytes) -> Any:
    """Parse JSON under the limits; fractions as ``Decimal``, NaN/Infinity refused.

    Raises :class:`JsonLimitError` past a limit, ``ValueError`` for text that is not JSON (or not
    UTF-8). The work is linear in the text's length whatever it holds."""
    return _decode(_DECODER, _admitted(text))


def loads_noting_fractions(text: str | bytes) -> tuple[Any, bool]:
    """:func:`loads`, and whether the text holds a number with a fraction or an exponent: without
    one, no ``Decimal`` is anywhere in the value, and a caller that refuses them need not look.

    Text without such a number is parsed once; with one, the parse stops there and the text is
    parsed again by :func:`loads` (same value, same refusals)."""
    admitted = _admitted(text)
    try:
        return _decode(_INTEGERS_DECODER, admitted), False
    except _FractionMet:
        return _decode(_DECODER, admitted), True


def _admitted(text: str | bytes) -> str:
    """The text, once what only a scan can judge is judged (see ``_SUSPECT``)."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8")
    # ASCII text holds no surrogate (``isascii`` reads a flag the string carries: no scan).
    if not (isinstance(text, str) and text.isascii()) and _SURROGATE.search(text):
        raise JsonLimitError("lone_surrogate", "the text holds a lone surrogate", "")
    if _SUSPECT.search(text) or text.count("[") + text.count("{") > MAX_DEPTH:
        check_limits(text)
    # What ``json.loads`` checks before its decoder runs; the decoders here are called directly.
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return text


def _decode(decoder: json.JSONDecoder, text: str) -> Any:
    try:
        return decoder.decode(text)
    except _NumberPastLimit as past:
        check_limits(text)  # raises with the number's path
        raise JsonLimitError(past.args[0], past.args[1], "") from None  # a scan that finds no path
    except RecursionError:  # unreachable after check_limits; kept so no input can crash a caller
        raise JsonLimitError("too_deep", f"nesting deeper than {MAX_DEPTH}", "") from None


def _parse_int(literal: str) -> int:
    # An integer has no exponent, and no more significant digits than characters.
    if len(literal) > MAX_DIGITS:
        _judge_number(literal)
    return int(literal)


def _parse_float(literal: str) -> Decimal:
    _judge_number(literal)
    return Decimal(literal)


def _fraction_met(literal: str) -> NoReturn:
    raise _FractionMet


# Built once: ``json.loads`` with hooks builds a decoder (and its scanner) on every call. A decoder
# keeps no state between calls (the module's own ``json.loads`` shares one across threads).
_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_reject_constant)
_INTEGERS_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_fraction_met, parse_constant=_reject_constant)


def _judge_number(literal: str) -> None:
    parts = _NUMBER.fullmatch(literal)
    refusal = _number_refusal(parts.group("int"), parts.group("frac"), parts.group("exp")) if parts else None
    if refusal is not None:
        raise _NumberPastLimit(*refusal)


def _number_refusal(integral: str, fraction: str | None, exponent: str | None) -> tuple[str, str] | None:
    """(reason, message) for a number past a limit, from its parts as written; None within them."""
    digits = (integral + (fraction or "")).lstrip("0")
    magnitude = (exponent or "0").lstrip("+-").lstrip("0")
    if len(digits) > MAX_DIGITS:
        return "number_too_long", f"numbers have at most {MAX_DIGITS} significant digits"
    if len(magnitude) > 2 or int(magnitude or "0") > MAX_EXPONENT:
        return "exponent_too_large", f"exponents are limited to ±{MAX_EXPONENT}"
    return None


def _path(stack: list[list[Any]]) -> str:
    return ".".join(str(frame[1]) for frame in stack if frame[1] is not None)


def check_limits(text: str) -> None:
    """Scan ``text`` once, keeping the path of the value at hand; raise at the first limit passed."""
    # A frame is [kind, key or index, expecting a key]; the key is None until an object's first one.
    stack: list[list[Any]] = []
    position, end = 0, len(text)
    match = _TOKEN.match
    while position < end:
        token = match(text, position)
        if token is None or token.end() == position:
            return
        position = token.end()
        kind = token.lastgroup
        if kind == "str":
            raw = token.group("str")
            top = stack[-1] if stack else None
            is_key = top is not None and top[0] == "o" and top[2]
            if is_key or "\\u" in raw:
                try:
                    value = json.loads(raw)
                except ValueError:
                    return
                if _SURROGATE.search(value):
                    raise JsonLimitError("lone_surrogate", "a string holds a lone surrogate", _path(stack))
                if is_key and top is not None:
                    top[1], top[2] = value, False
        elif kind in ("num", "int", "frac", "exp"):
            _check_number(token, stack)
        elif kind == "open":
            if len(stack) >= MAX_DEPTH:
                raise JsonLimitError("too_deep", f"nesting deeper than {MAX_DEPTH}", _path(stack))
            stack.append(["o", None, True] if token.group("open") == "{" else ["a", 0, False])
        elif kind == "close":
            if not stack:
                return
            stack.pop()
        elif kind == "comma" and stack:
            top = stack[-1]
            if top[0] == "a":
                top[1] += 1
            else:
                top[2] = True


def _check_number(token: re.Match[str], stack: list[list[Any]]) -> None:
    refusal = _number_refusal(token.group("int"), token.group("frac"), token.group("exp"))
    if refusal is not None:
        raise JsonLimitError(*refusal, _path(stack))


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
            # The most common member, written here rather than by a call of its own.
            if type(item) is str:
                out.append(_encode_str(item))
            else:
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
