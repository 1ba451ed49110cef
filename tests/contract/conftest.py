"""Every implementation of every repository port, behind one ``stores`` fixture.

Each contract test runs once per entry of ``tests/contract/stores.py``'s ``IMPLEMENTATIONS``: the
in-memory fakes the unit tests stand on, the DynamoDB adapters on moto (one moto per test module,
tables emptied per test), and the local stack's SQLite store (a fresh data directory per test).
"""

from __future__ import annotations

import pytest

from chalicelib.console.ports import IpnInbox, OrderDetailsRepository, TransactionRepository
from chalicelib.limits import LimitStore
from chalicelib.merchants.ports import MerchantRepository
from chalicelib.payments.ports import PaymentRepository, TerminalRepository
from tests.contract.stores import IMPLEMENTATIONS, Stores
from tests.integration.moto_per_module import (  # noqa: F401
    aws_with_fresh_tables,
    dynamodb_actions_one_at_a_time,
    moto_for_module,
)


@pytest.fixture(params=list(IMPLEMENTATIONS))
def stores(request: pytest.FixtureRequest) -> Stores:
    return IMPLEMENTATIONS[request.param](request)


@pytest.fixture
def terminals(stores: Stores) -> TerminalRepository:
    return stores.terminals


@pytest.fixture
def payments(stores: Stores) -> PaymentRepository:
    return stores.payments


@pytest.fixture
def merchants(stores: Stores) -> MerchantRepository:
    return stores.merchants


@pytest.fixture
def transactions(stores: Stores) -> TransactionRepository:
    return stores.transactions


@pytest.fixture
def order_details(stores: Stores) -> OrderDetailsRepository:
    return stores.order_details


@pytest.fixture
def ipn_inbox(stores: Stores) -> IpnInbox:
    return stores.ipn_inbox


@pytest.fixture
def limits(stores: Stores) -> LimitStore:
    return stores.limits
