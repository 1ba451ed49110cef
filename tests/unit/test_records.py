"""The records the stores keep are ``dataclasses.asdict`` of the domain objects, value for value,
without sharing anything mutable with them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from chalicelib.adapters.records import as_record
from tests.contract.builders import head_and_dispatch, order_details, transaction
from tests.unit.test_docs import example_transaction


@dataclass
class _Leaf:
    name: str
    tags: set[str] = field(default_factory=set)


@dataclass
class _Tree:
    amount: Decimal
    leaves: list[_Leaf]
    pair: tuple[int, _Leaf]
    extra: dict[str, Any]
    note: str | None = None


def _domain_objects() -> list[Any]:
    head, dispatch = head_and_dispatch()
    return [
        head,
        dispatch,
        transaction("T-1", flags=["late_result"], notified_statuses=[116, 118]),
        example_transaction(),
        order_details(),
        _Tree(Decimal("8.99"), [_Leaf("a", {"x"})], (1, _Leaf("b")), {"k": [1, {"n": None}]}),
    ]


@pytest.mark.parametrize("instance", _domain_objects(), ids=lambda o: type(o).__name__)
def test_a_record_is_what_asdict_gives(instance: Any) -> None:
    record = as_record(instance)
    assert record == asdict(instance)
    assert list(record) == list(asdict(instance))


def test_a_record_shares_no_mutable_value_with_its_instance() -> None:
    tree = _Tree(Decimal("1"), [_Leaf("a", {"x"})], (1, _Leaf("b")), {"k": [1]})
    record = as_record(tree)
    record["leaves"][0]["tags"].add("y")
    record["extra"]["k"].append(2)
    record["pair"][1]["name"] = "changed"
    assert tree.leaves[0].tags == {"x"}
    assert tree.extra == {"k": [1]}
    assert tree.pair[1].name == "b"
