"""The payment lifecycle as a state machine (hypothesis), on the in-memory fakes and on the DynamoDB
adapters (moto): requests, duplicates, acks, results, cancels, disconnects, deadlines and crashes in
any order, with the invariants money depends on checked after every step:

- the ECR is told ``Success`` iff the terminal's first result for that request was ``Success`` (and a
  Cancel is confirmed only when the terminal reported the payment aborted);
- never two dispatches in flight for one order, or for one terminal;
- every final state has released its claim;
- an order's reported state never moves backwards.

The terminal is modelled as an honest one: its first result for a request is its truth, and it only
ever repeats it. Examples are derandomized, so CI runs the same ones every time.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from chalicelib.config import Settings
from chalicelib.errors import ApiError
from chalicelib.payments.domain import AWAITING_RESULT, FINAL, DispatchState
from chalicelib.payments.schemas import parse_order_request
from chalicelib.payments.service import order_status, request_payment
from tests.conftest import MERCHANT, TERMINAL_ID, World, example
from tests.faults.conftest import DynamoWorld, lifecycle

ORDERS = ("ORDER-A", "ORDER-B")
SUCCESS = {"payment_status": "Success", "transaction_reference": "TX-SM", "masked_pan": "497010******0001"}
DECLINED = {"payment_status": "Failed", "error_code": "declined"}
ABORTED = {"payment_status": "Failed", "error_code": "cancelled"}
OUTCOMES = {"success": SUCCESS, "declined": DECLINED, "aborted": ABORTED}
# Reported states in the order they may follow one another within one attempt.
RANK = {
    "pending": 0,
    "acknowledged": 1,
    "cancelling": 2,
    "timed_out": 3,
    "failed": 3,
    "succeeded": 4,
    "cancelled": 4,
}
MACHINE_SETTINGS = Settings(
    ack_timeout_ms=10_000,
    payment_deadline_ms=60_000,
    async_payment_deadline_ms=60_000,
    cancel_timeout_ms=10_000,
    # Each wait of the scripted waker moves the fake clock by a whole poll: few polls per deadline.
    poll_initial_ms=2_500,
    poll_max_ms=2_500,
    poll_growth_pct=100,
)
STEPS = st.lists(st.sampled_from(["nothing", "ack", "success", "declined", "aborted", "drop", "kill"]), max_size=4)
counted = {"fakes": 0, "dynamodb": 0}


class WaiterKilled(BaseException):
    pass


class PaymentLifecycle(RuleBasedStateMachine):
    make_world: Any = None
    variant = "fakes"

    @initialize()
    def start(self) -> None:
        counted[self.variant] += 1
        self.world: World = type(self).make_world()
        self.truth: dict[str, dict[str, Any]] = {}  # request id → the terminal's first result
        self.received: list[str] = []  # payment requests that reached the terminal, in order
        self.highest: dict[str, int] = {}  # request id → highest rank reported
        self.session = 0
        self.cancel_mode = "abort"
        self.world.channel.on_publish = self._terminal_receives
        self._connect()

    # -- the terminal --------------------------------------------------------------------------------------

    def _terminal_receives(self, _terminal_id: str, envelope: dict[str, Any]) -> None:
        if envelope["type"] == "payment_request":
            self.received.append(envelope["request_id"])
        elif envelope["type"] == "cancel_request" and self.cancel_mode == "abort":
            target = envelope["body"]["target_request_id"]
            # Aborted while the customer had not paid; otherwise its real result, again.
            self._result(target, "aborted")

    def _result(self, request_id: str, outcome: str) -> str:
        body = self.truth.setdefault(request_id, OUTCOMES[outcome])
        return self.world.terminal_says("result", request_id, body)

    def _connect(self) -> None:
        self.session += 1
        lifecycle(self.world, "connected", f"s-{self.session}")

    def _step(self, action: str) -> Any:
        def act(request_id: str) -> None:
            if action == "ack":
                self.world.terminal_says("ack", request_id, {})
            elif action in OUTCOMES:
                self._result(request_id, action)
            elif action == "drop":
                lifecycle(self.world, "disconnected", f"s-{self.session}")
                self._connect()
            elif action == "kill":
                raise WaiterKilled

        return act

    # -- what the ECR is told ---------------------------------------------------------------------------

    def _told(self, order_id: str, reply: Any) -> None:
        if reply.status != 200 or "attempt" not in reply.body:
            return
        head = self.world.payments.get_head(MERCHANT, order_id)
        assert head is not None
        dispatch = self.world.payments.get_dispatch(head.request_id)
        assert dispatch is not None and dispatch.attempt == reply.body["attempt"]
        truth = self.truth.get(dispatch.request_id)
        told_success = reply.body["paymentStatus"] == "Success"
        assert told_success == (truth is not None and truth["payment_status"] == "Success"), (reply.body, truth)

    def _pay(self, order_id: str, **kwargs: Any) -> Any:
        body = example(order_id=order_id)
        try:
            return request_payment(self.world.payment_deps, MERCHANT, parse_order_request(body), body, **kwargs)
        except ApiError as exc:
            return exc
        except WaiterKilled:
            return None

    # -- rules ---------------------------------------------------------------------------------------------

    @rule(order_id=st.sampled_from(ORDERS))
    def ecr_sends_async(self, order_id: str) -> None:
        reply = self._pay(order_id, respond_async=True)
        if reply is not None and not isinstance(reply, ApiError):
            self._told(order_id, reply)

    @rule(order_id=st.sampled_from(ORDERS), steps=STEPS)
    def ecr_sends_and_waits(self, order_id: str, steps: list[str]) -> None:
        self.world.waker.steps = [self._step(action) for action in steps]
        reply = self._pay(order_id)
        self.world.waker.steps = []
        if reply is not None and not isinstance(reply, ApiError):
            self._told(order_id, reply)

    @rule(order_id=st.sampled_from(ORDERS), mode=st.sampled_from(["abort", "silent"]))
    def ecr_cancels(self, order_id: str, mode: str) -> None:
        self.cancel_mode = mode
        body = example(order_id=order_id, transaction_type="Cancel")
        try:
            reply = request_payment(self.world.payment_deps, MERCHANT, parse_order_request(body), body)
        except ApiError as exc:
            assert exc.code in ("terminal.cancel_timeout", "terminal.unreachable"), exc.code
            return
        finally:
            self.cancel_mode = "abort"
        if reply.body["paymentStatus"] == "Success":
            head = self.world.payments.get_head(MERCHANT, order_id)
            assert head is not None
            truth = self.truth.get(head.request_id)
            assert truth is not None and truth.get("error_code") == "cancelled", "cancel confirmed without the terminal"
        else:
            assert reply.body["errorCode"] == "not_cancellable"

    @rule(data=st.data(), kind=st.sampled_from(["ack", "busy_ack", "success", "declined", "aborted"]))
    def terminal_speaks(self, data: st.DataObject, kind: str) -> None:
        if not self.received:
            return
        request_id = data.draw(st.sampled_from(self.received))
        if kind == "ack":
            self.world.terminal_says("ack", request_id, {})
        elif kind == "busy_ack":
            if request_id not in self.truth:  # a terminal that said busy never reports a result
                self.truth[request_id] = {"payment_status": "Failed", "error_code": "never"}
                self.world.terminal_says("ack", request_id, {"accepted": False, "reason": "busy"})
        else:
            self._result(request_id, kind)

    @rule()
    def terminal_drops_and_reconnects(self) -> None:
        lifecycle(self.world, "disconnected", f"s-{self.session}")
        self._connect()

    @rule()
    def old_session_disconnect_delivered_late(self) -> None:
        lifecycle(self.world, "disconnected", f"s-{max(1, self.session - 1)}")

    @rule(ms=st.sampled_from([1_000, 5_000, 10_000, 30_000, 61_000]))
    def time_passes(self, ms: int) -> None:
        self.world.clock.advance(ms)

    # -- invariants ------------------------------------------------------------------------------------------

    @invariant()
    def never_two_dispatches_in_flight(self) -> None:
        if not hasattr(self, "world"):
            return
        now = self.world.clock.now_ms()
        live = []
        for request_id in self.received:
            dispatch = self.world.payments.get_dispatch(request_id)
            assert dispatch is not None
            if dispatch.effective_state(now) in AWAITING_RESULT and now < dispatch.deadline_ms:
                live.append(dispatch)
        assert len(live) <= 1, [(d.order_id, d.state) for d in live]  # one terminal, and so one per order

    @invariant()
    def final_states_have_released_their_claim(self) -> None:
        if not hasattr(self, "world"):
            return
        terminal = self.world.terminals.get(TERMINAL_ID)
        assert terminal is not None
        if not terminal.is_busy(self.world.clock.now_ms()):
            return
        dispatch = self.world.payments.get_dispatch(terminal.busy_request_id or "")
        assert dispatch is None or dispatch.state not in FINAL, (dispatch.state, dispatch.reason)

    @invariant()
    def reported_state_never_moves_backwards(self) -> None:
        if not hasattr(self, "world"):
            return
        for order_id in ORDERS:
            try:
                status = order_status(self.world.payment_deps, MERCHANT, order_id).wire()
            except ApiError:
                continue
            rank = RANK[status["state"]]
            previous = self.highest.get(status["request_id"], -1)
            assert rank >= previous, (order_id, status["state"])
            self.highest[status["request_id"]] = rank
            if status["payment"] is not None and status["state"] in (
                DispatchState.SUCCEEDED.value,
                DispatchState.CANCELLED.value,
            ):
                truth = self.truth.get(status["request_id"])
                told_success = status["payment"]["paymentStatus"] == "Success"
                assert told_success == (truth is not None and truth["payment_status"] == "Success")


MAX_EXAMPLES = {"fakes": 300, "dynamodb": 25}


def _run(variant: str, make_world: Any) -> None:
    machine = type(f"PaymentLifecycle_{variant}", (PaymentLifecycle,), {"make_world": make_world, "variant": variant})
    before = counted[variant]
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=MAX_EXAMPLES[variant],
            stateful_step_count=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    print(f"state machine on {variant}: {counted[variant] - before} examples")
    assert counted[variant] - before >= MAX_EXAMPLES[variant]


def test_payment_lifecycle_on_the_fakes() -> None:
    _run("fakes", lambda: World(MACHINE_SETTINGS))


@pytest.mark.usefixtures("linearizable_dynamodb")
def test_payment_lifecycle_on_the_dynamodb_adapters(aws: Settings) -> None:
    from chalicelib.adapters.aws import client

    def fresh_world() -> World:
        # Empty the two tables between examples (cheaper than recreating them).
        for table, key in ((aws.payments_table, "pk"), (aws.terminals_table, "terminal_id")):
            for item in client("dynamodb").scan(TableName=table)["Items"]:
                client("dynamodb").delete_item(TableName=table, Key={key: item[key]})
        return DynamoWorld(replace(aws, **{f: getattr(MACHINE_SETTINGS, f) for f in _TIMING}))

    _run("dynamodb", fresh_world)


_TIMING = (
    "ack_timeout_ms",
    "payment_deadline_ms",
    "async_payment_deadline_ms",
    "cancel_timeout_ms",
    "poll_initial_ms",
    "poll_max_ms",
    "poll_growth_pct",
)
