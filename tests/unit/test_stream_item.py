"""The outbox poller writes a stream record's image as boto3's serializer does, attribute for attribute."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.adapters.aws import to_item
from local.pollers import stream_item

scalars = st.one_of(
    st.none(),
    st.text(),
    st.booleans(),
    st.integers(min_value=-(10**38) + 1, max_value=10**38 - 1),
    st.decimals(min_value=-(10**12), max_value=10**12, places=2),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3)
)


@given(st.dictionaries(st.text(), values, max_size=8))
def test_an_image_is_written_as_boto3_writes_it(image: dict[str, Any]) -> None:
    assert stream_item(image) == to_item(image)


def test_an_order_heads_image_is_written_as_boto3_writes_it() -> None:
    image = {
        "pk": "ORDER#M1#O-1",
        "merchant_id": "M1",
        "attempt": 2,
        "created_at_ms": 1_764_300_000_000,
        "cancelled": False,
        "note": None,
        "price": Decimal("8.99"),
    }
    assert stream_item(image) == to_item(image)


@pytest.mark.parametrize("number", [10**38, -(10**38), 10**40])
def test_an_integer_dynamodb_cannot_hold_is_refused_as_boto3_refuses_it(number: int) -> None:
    with pytest.raises(Exception) as by_boto:
        to_item({"n": number})
    with pytest.raises(type(by_boto.value)):
        stream_item({"n": number})


def test_a_float_is_refused_as_boto3_refuses_it() -> None:
    with pytest.raises(TypeError):
        stream_item({"amount": 8.99})
