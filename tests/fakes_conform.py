"""Each fake held to its port by the type checker (``make typecheck`` runs mypy on this file).

Nothing here runs: a fake whose methods drift from its Protocol (a renamed argument, a missing
method, another return type) fails type checking, before any test builds on the drifted fake.
"""

from __future__ import annotations

from chalicelib.console.ports import FormPoster, IpnInbox, OrderDetailsRepository, TransactionRepository
from chalicelib.merchants.ports import LoginReader, MerchantReader, MerchantRepository
from chalicelib.payments.ports import PaymentRepository, TerminalChannel, TerminalRepository
from chalicelib.ports import Clock, MessageQueue, Waker
from tests.fakes import (
    FakeClock,
    FakeIpnInbox,
    FakeMerchants,
    FakeOrderDetails,
    FakePayments,
    FakeTerminals,
    FakeTransactions,
    RecordingChannel,
    RecordingQueue,
    ScriptedPoster,
    ScriptedWaker,
)

clock: Clock = FakeClock()
waker: Waker = ScriptedWaker(FakeClock())
queue: MessageQueue = RecordingQueue()
terminals: TerminalRepository = FakeTerminals()
payments: PaymentRepository = FakePayments()
channel: TerminalChannel = RecordingChannel()
transactions: TransactionRepository = FakeTransactions()
order_details: OrderDetailsRepository = FakeOrderDetails()
ipn_inbox: IpnInbox = FakeIpnInbox()
poster: FormPoster = ScriptedPoster()
merchants: MerchantRepository = FakeMerchants()
merchant_reader: MerchantReader = FakeMerchants()
login_reader: LoginReader = FakeMerchants()
