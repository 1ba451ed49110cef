"""``jsonutil.dumps``: what it writes reads back as the same value, ``Decimal`` verbatim, and a float
anywhere is refused (money never leaves as a float)."""

from __future__ import annotations

import json
from decimal import Decimal
from enum import Enum, IntEnum, StrEnum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib import jsonutil


class Status(StrEnum):
    CAPTURED = "Captured"


class Code(IntEnum):
    OK = 118


scalars = st.one_of(
    st.none(),
    st.booleans(),
    # Within what the reader accepts (jsonutil.MAX_DIGITS): past it, reading refuses by design.
    st.integers(min_value=-(10**29), max_value=10**29),
    st.text(),
    st.decimals(min_value=-(10**12), max_value=10**12, places=2),
    st.decimals(min_value=-(10**6), max_value=10**6, places=8),
    st.sampled_from([Status.CAPTURED, Code.OK]),
)


@given(st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4)))
def test_what_is_written_reads_back_as_the_same_value(value: Any) -> None:
    back = jsonutil.loads(jsonutil.dumps(value))

    def plain(v: Any) -> Any:
        if isinstance(v, Enum):
            return v.value
        if isinstance(v, Decimal) and v == v.to_integral_value() and v.as_tuple().exponent >= 0:  # type: ignore[operator]
            return int(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    assert back == plain(value)


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        {"amount": 8.99},
        {"list": [1, 2, 1e20]},
        {"text": "8.99", "n": 1e-05},
        float("nan"),
        [float("inf")],
        {"deep": {"deeper": [0.0]}},
    ],
)
def test_a_float_anywhere_is_refused_even_where_a_string_looks_like_one(value: Any) -> None:
    with pytest.raises(TypeError, match="floats are not written"):
        jsonutil.dumps(value)


def test_strings_that_look_like_floats_are_written_as_strings() -> None:
    value = {"at": "2026-11-29T10:00:00.123Z", "pan": "497010******0014", "e": "1e5", "q": 'a"1.5"\\'}
    assert jsonutil.dumps(value) == json.dumps(value, separators=(",", ":"))


def test_decimals_are_written_verbatim_and_integral_ones_as_integers() -> None:
    assert jsonutil.dumps({"price": Decimal("8.90"), "n": Decimal("12"), "e": Decimal("1E+2")}) == (
        '{"price":8.90,"n":12,"e":100}'
    )


def test_a_type_json_has_no_word_for_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="cannot write object as JSON"):
        jsonutil.dumps({"x": [object()]})
    with pytest.raises(ValueError, match="non-finite Decimal"):
        jsonutil.dumps({"x": Decimal("NaN")})
