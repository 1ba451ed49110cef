"""The embedded store's shortcuts for a row's JSON text give exactly what ``jsonutil`` gives: the
same bytes written, the same values read, nothing shared with the caller."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib import jsonutil
from chalicelib.adapters.sqlite.rows import DecodedRows, flat_json, is_flat
from chalicelib.exceptions import JsonLimitError

LIMIT = 10**jsonutil.MAX_DIGITS
items = st.one_of(st.text(), st.booleans(), st.integers(min_value=-LIMIT + 1, max_value=LIMIT - 1))
flat_records = st.dictionaries(st.text(), st.one_of(st.none(), items, st.lists(items, max_size=4)), max_size=8)
any_values = st.recursive(
    st.one_of(st.none(), items, st.integers(), st.decimals(allow_nan=False, allow_infinity=False, places=2)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(flat_records)
def test_a_flat_record_is_written_byte_for_byte_as_jsonutil_writes_it(values: dict[str, Any]) -> None:
    assert flat_json(values) == jsonutil.dumps(values)


@given(st.dictionaries(st.text(), any_values, max_size=4))
def test_a_record_is_written_here_only_when_it_is_flat_and_then_exactly_as_jsonutil_would(
    values: dict[str, Any],
) -> None:
    text = flat_json(values)
    if text is None:
        assert not is_flat(values)
    else:
        assert text == jsonutil.dumps(values)


@pytest.mark.parametrize(
    "value",
    [
        Decimal("8.99"),
        1.5,
        {"nested": 1},
        [[1]],
        [Decimal("1")],
        [None],
        LIMIT,
        -LIMIT,
        (1, 2),
        b"bytes",
    ],
)
def test_anything_but_plain_values_and_flat_lists_is_left_to_jsonutil(value: Any) -> None:
    assert flat_json({"k": value}) is None


def test_subclasses_of_plain_types_are_left_to_jsonutil() -> None:
    class Code(int):
        pass

    class Label(str):
        pass

    assert flat_json({"k": Code(1)}) is None
    assert flat_json({"k": Label("x")}) is None
    assert flat_json({Label("k"): 1}) is None


@given(flat_records)
def test_a_kept_text_reads_back_as_what_jsonutil_reads(values: dict[str, Any]) -> None:
    rows = DecodedRows()
    text = rows.dumps("k", values)
    assert text is not None
    assert rows.loads("k", text) == jsonutil.loads(text) == values


def test_reading_the_text_just_written_parses_nothing_and_shares_nothing() -> None:
    rows = DecodedRows()
    values = {"flags": ["a"], "status_code": 118, "note": None}
    text = rows.dumps("T1", values)
    assert text is not None
    values["flags"].append("changed by the writer afterwards")
    first = rows.loads("T1", text)
    first["flags"].append("changed by a reader")
    second = rows.loads("T1", text)
    assert (first is not second, second) == (True, {"flags": ["a"], "status_code": 118, "note": None})
    assert rows.hits == 2


def test_another_text_for_the_same_key_is_parsed_and_then_kept() -> None:
    rows = DecodedRows()
    rows.dumps("T1", {"version": 1})
    assert rows.loads("T1", '{"version":2}') == {"version": 2}
    assert rows.hits == 0
    assert rows.loads("T1", '{"version":2}') == {"version": 2}
    assert rows.hits == 1


def test_a_text_jsonutil_must_judge_is_never_answered_from_what_was_kept() -> None:
    rows = DecodedRows()
    lone = rows.dumps("T1", {"name": "\ud800"})
    assert lone == jsonutil.dumps({"name": "\ud800"})
    with pytest.raises(JsonLimitError):
        rows.loads("T1", lone)
    assert rows.loads("T2", rows.dumps("T2", {"name": "\U0001f600"}) or "") == {"name": "\U0001f600"}
    assert rows.hits == 0


def test_a_text_that_is_not_flat_is_parsed_every_time() -> None:
    rows = DecodedRows()
    text = jsonutil.dumps({"price": Decimal("8.99")})
    assert rows.loads("T1", text) == rows.loads("T1", text) == {"price": Decimal("8.99")}
    assert rows.hits == 0


def test_only_the_latest_rows_are_kept() -> None:
    rows = DecodedRows(kept=2)
    texts = {key: rows.dumps(key, {"key": key}) or "" for key in ("a", "b", "c")}
    assert (rows.loads("c", texts["c"]), rows.loads("b", texts["b"]), rows.hits) == ({"key": "c"}, {"key": "b"}, 2)
    assert (rows.loads("a", texts["a"]), rows.hits) == ({"key": "a"}, 2)  # let go when "c" came: parsed
