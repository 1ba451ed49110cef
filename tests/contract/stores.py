"""Every implementation of the repository ports, by name: the contract tests run against each.

A new store (another database, say) joins every contract test with one line in ``IMPLEMENTATIONS``:
its name and a function that builds its repositories, empty, for one test (it may ask pytest for
the fixtures it needs through ``request``). ``make typecheck`` holds each entry to the ports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from chalicelib.config import Settings
from chalicelib.console.ports import IpnInbox, OrderDetailsRepository, TransactionRepository
from chalicelib.limits import LimitStore
from chalicelib.merchants.ports import MerchantRepository
from chalicelib.payments.ports import PaymentRepository, TerminalRepository
from tests.fakes import (
    FakeIpnInbox,
    FakeMerchants,
    FakeOrderDetails,
    FakePayments,
    FakeTerminals,
    FakeTransactions,
    MemoryLimitStore,
)

RETENTION_S = 90 * 86_400


@dataclass
class Stores:
    terminals: TerminalRepository
    payments: PaymentRepository
    merchants: MerchantRepository
    transactions: TransactionRepository
    order_details: OrderDetailsRepository
    ipn_inbox: IpnInbox
    limits: LimitStore


def in_memory(request: pytest.FixtureRequest) -> Stores:
    return Stores(
        FakeTerminals(),
        FakePayments(),
        FakeMerchants(),
        FakeTransactions(),
        FakeOrderDetails(),
        FakeIpnInbox(),
        MemoryLimitStore(),
    )


def dynamodb_on_moto(request: pytest.FixtureRequest) -> Stores:
    from chalicelib.adapters.dynamodb.console import (
        DynamoIpnInbox,
        DynamoOrderDetailsRepository,
        DynamoTransactionRepository,
    )
    from chalicelib.adapters.dynamodb.limits import DynamoLimitStore
    from chalicelib.adapters.dynamodb.merchants import DynamoMerchantRepository
    from chalicelib.adapters.dynamodb.payments import DynamoPaymentRepository, DynamoTerminalRepository

    settings: Settings = request.getfixturevalue("aws")
    # DynamoDB applies each item write whole; moto needs the help when the race tests use threads.
    request.getfixturevalue("linearizable_dynamodb")
    return Stores(
        DynamoTerminalRepository(settings.terminals_table),
        DynamoPaymentRepository(settings.payments_table, RETENTION_S),
        DynamoMerchantRepository(settings.merchants_table),
        DynamoTransactionRepository(settings.transactions_table),
        DynamoOrderDetailsRepository(settings.order_details_table),
        DynamoIpnInbox(settings.ipn_table),
        DynamoLimitStore(settings.merchants_table),
    )


def sqlite_in_tmp(request: pytest.FixtureRequest) -> Stores:
    """The local stack's embedded store, in a fresh data directory per test."""
    from chalicelib.adapters.sqlite.store import SqliteStore

    store = SqliteStore.open(request.getfixturevalue("tmp_path") / "data", retention_s=RETENTION_S)
    request.addfinalizer(store.close)
    return Stores(
        store.terminals,
        store.payments,
        store.merchants,
        store.transactions,
        store.order_details,
        store.ipn_inbox,
        store.limits,
    )


IMPLEMENTATIONS: dict[str, Callable[[pytest.FixtureRequest], Stores]] = {
    "memory": in_memory,
    "dynamodb": dynamodb_on_moto,
    "sqlite": sqlite_in_tmp,
}
