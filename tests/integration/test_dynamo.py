"""The DynamoDB repositories against moto: correctness lives in their conditions (CONTRACT §1
idempotency, one payment per terminal), and the IoT channel publishes what the contract says."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from botocore.stub import Stubber

from chalicelib import protocol
from chalicelib.adapters.aws import client
from chalicelib.adapters.channels import IotDataChannel
from chalicelib.adapters.dynamodb.merchants import DynamoMerchantRepository
from chalicelib.adapters.dynamodb.payments import (
    DynamoPaymentRepository,
    DynamoTerminalRepository,
    dispatch_key,
    head_key,
)
from chalicelib.config import Settings
from chalicelib.exceptions import ChannelError, ConditionFailed
from chalicelib.merchants import enrollment
from chalicelib.merchants.auth import Authenticator
from chalicelib.payments.domain import IN_FLIGHT, Dispatch, DispatchState, OrderHead, Terminal
from tests.conftest import PASSPHRASE, TERMINAL_ID
from tests.integration.moto_per_module import (  # noqa: F401
    aws_with_fresh_tables,
    dynamodb_actions_one_at_a_time,
    moto_for_module,
)

NOW = 1_795_000_000_000
RETENTION_S = 90 * 86_400
PENDING = frozenset({DispatchState.PENDING})


@pytest.fixture
def terminals(aws: Settings) -> DynamoTerminalRepository:
    repository = DynamoTerminalRepository(aws.terminals_table)
    repository.put(Terminal(TERMINAL_ID, "M1", PASSPHRASE, online=True))
    return repository


@pytest.fixture
def payments(aws: Settings) -> DynamoPaymentRepository:
    return DynamoPaymentRepository(aws.payments_table, RETENTION_S)


@pytest.fixture
def merchants(aws: Settings) -> DynamoMerchantRepository:
    return DynamoMerchantRepository(aws.merchants_table)


def raw_item(table: str, key: dict[str, Any]) -> dict[str, Any] | None:
    found: dict[str, Any] | None = (
        client("dynamodb").get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
    )
    return found


def head_and_dispatch(
    request_id: str = "r-1", attempt: int = 1, order_id: str = "O-1", terminal_id: str = TERMINAL_ID
) -> tuple[OrderHead, Dispatch]:
    head = OrderHead(
        merchant_id="M1",
        order_id=order_id,
        attempt=attempt,
        request_id=request_id,
        terminal_id=terminal_id,
        payload_hash="h" * 64,
        request_json='{"order":{"order_id":"O-1","price":{"amount":899}}}',
        created_at_ms=NOW,
        updated_at_ms=NOW + attempt,
    )
    dispatch = Dispatch(
        request_id=request_id,
        merchant_id="M1",
        order_id=order_id,
        attempt=attempt,
        terminal_id=terminal_id,
        transaction_type="Debit",
        amount=899,
        currency="EUR",
        state=DispatchState.PENDING,
        created_at_ms=NOW,
        ack_deadline_ms=NOW + 10_000,
        deadline_ms=NOW + 120_000,
    )
    return head, dispatch


def started(payments: DynamoPaymentRepository, request_id: str = "r-1", **kwargs: Any) -> Dispatch:
    head, dispatch = head_and_dispatch(request_id, **kwargs)
    payments.start_attempt(head, dispatch, None)
    return dispatch


def race(*actions: Callable[[], Any]) -> list[Any]:
    """Run the actions at the same moment on threads; each one's return value or exception."""
    barrier = threading.Barrier(len(actions))
    outcomes: list[Any] = [None] * len(actions)

    def run(index: int, action: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            outcomes[index] = action()
        except Exception as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(actions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


# -- terminals ----------------------------------------------------------------------------------------


def test_terminal_round_trips_through_its_item(terminals: DynamoTerminalRepository) -> None:
    terminal = Terminal("ING-42", "M2", "pass", online=False, last_seen_at="2026-11-28T03:12:00.123Z", status_at_ms=7)
    terminals.put(terminal)
    assert terminals.get("ING-42") == terminal
    assert terminals.get(TERMINAL_ID) == Terminal(TERMINAL_ID, "M1", PASSPHRASE, online=True)
    assert terminals.get("PAX-404") is None


def test_enrolling_a_taken_terminal_id_fails_and_keeps_the_first(terminals: DynamoTerminalRepository) -> None:
    with pytest.raises(ConditionFailed):
        terminals.create(Terminal(TERMINAL_ID, "M2", "hijack"))
    found = terminals.get(TERMINAL_ID)
    assert found is not None and (found.merchant_id, found.passphrase) == ("M1", PASSPHRASE)


def test_passphrase_is_rotated_or_removed_only_by_its_merchant(terminals: DynamoTerminalRepository) -> None:
    with pytest.raises(ConditionFailed):
        terminals.set_passphrase(TERMINAL_ID, "M2", "stolen")
    terminals.set_passphrase(TERMINAL_ID, "M1", "rotated")
    assert terminals.get(TERMINAL_ID).passphrase == "rotated"  # type: ignore[union-attr]
    terminals.set_passphrase(TERMINAL_ID, "M1", None)
    assert terminals.get(TERMINAL_ID).passphrase is None  # type: ignore[union-attr]
    with pytest.raises(ConditionFailed):
        terminals.set_passphrase("PAX-404", "M1", "x")
    assert terminals.get("PAX-404") is None


def test_claim_marks_a_free_terminal_busy(terminals: DynamoTerminalRepository) -> None:
    assert terminals.claim(TERMINAL_ID, "r-1", NOW, NOW + 120_000)
    terminal = terminals.get(TERMINAL_ID)
    assert terminal is not None and (terminal.busy_request_id, terminal.busy_until_ms) == ("r-1", NOW + 120_000)
    assert terminal.is_busy(NOW) and not terminal.is_busy(NOW + 120_000)


def test_an_unexpired_claim_holds_and_is_left_untouched(terminals: DynamoTerminalRepository) -> None:
    terminals.claim(TERMINAL_ID, "r-1", NOW, NOW + 120_000)
    assert not terminals.claim(TERMINAL_ID, "r-2", NOW + 119_999, NOW + 240_000)
    terminal = terminals.get(TERMINAL_ID)
    assert terminal is not None and (terminal.busy_request_id, terminal.busy_until_ms) == ("r-1", NOW + 120_000)


@pytest.mark.parametrize("later_ms", [120_000, 500_000])
def test_an_expired_claim_is_taken_over(terminals: DynamoTerminalRepository, later_ms: int) -> None:
    terminals.claim(TERMINAL_ID, "crashed", NOW, NOW + 120_000)
    assert terminals.claim(TERMINAL_ID, "r-2", NOW + later_ms, NOW + later_ms + 120_000)
    assert terminals.get(TERMINAL_ID).busy_request_id == "r-2"  # type: ignore[union-attr]
    assert not terminals.release(TERMINAL_ID, "crashed"), "the old holder can no longer free it"


def test_claiming_an_unknown_terminal_fails_without_creating_it(terminals: DynamoTerminalRepository) -> None:
    assert not terminals.claim("PAX-404", "r-1", NOW, NOW + 1)
    assert terminals.get("PAX-404") is None


def test_release_frees_only_for_the_holder(terminals: DynamoTerminalRepository) -> None:
    terminals.claim(TERMINAL_ID, "r-1", NOW, NOW + 120_000)
    assert not terminals.release(TERMINAL_ID, "r-other")
    assert terminals.get(TERMINAL_ID).busy_request_id == "r-1"  # type: ignore[union-attr]
    assert terminals.release(TERMINAL_ID, "r-1")
    terminal = terminals.get(TERMINAL_ID)
    assert terminal is not None and (terminal.busy_request_id, terminal.busy_until_ms) == (None, 0)
    assert not terminals.release(TERMINAL_ID, "r-1"), "releasing twice is a no-op"
    assert terminals.claim(TERMINAL_ID, "r-2", NOW, NOW + 1)


@pytest.mark.usefixtures("linearizable_dynamodb")
def test_of_concurrent_claims_exactly_one_wins(terminals: DynamoTerminalRepository) -> None:
    for round_ in range(5):
        ids = [f"r-{round_}-{n}" for n in range(6)]
        outcomes = race(*[lambda rid=rid: terminals.claim(TERMINAL_ID, rid, NOW, NOW + 60_000) for rid in ids])
        assert outcomes.count(True) == 1 and outcomes.count(False) == 5, outcomes
        winner = ids[outcomes.index(True)]
        assert terminals.get(TERMINAL_ID).busy_request_id == winner  # type: ignore[union-attr]
        assert terminals.release(TERMINAL_ID, winner)


def test_status_newer_wins_and_older_is_ignored(terminals: DynamoTerminalRepository) -> None:
    assert terminals.record_status(TERMINAL_ID, False, NOW, "t1")
    assert not terminals.record_status(TERMINAL_ID, True, NOW - 1, "t0")
    terminal = terminals.get(TERMINAL_ID)
    assert terminal is not None and (terminal.online, terminal.status_at_ms, terminal.last_seen_at) == (
        False,
        NOW,
        "t1",
    )
    assert terminals.record_status(TERMINAL_ID, True, NOW, "t1-again"), "same instant: the later arrival wins"
    assert terminals.record_status(TERMINAL_ID, False, NOW + 5, "t2")
    terminal = terminals.get(TERMINAL_ID)
    assert terminal is not None and (terminal.online, terminal.last_seen_at) == (False, "t2")


def test_status_of_an_unknown_terminal_creates_nothing(terminals: DynamoTerminalRepository) -> None:
    assert not terminals.record_status("PAX-404", True, NOW, "t")
    assert terminals.get("PAX-404") is None


def test_status_keeps_the_claim(terminals: DynamoTerminalRepository) -> None:
    terminals.claim(TERMINAL_ID, "r-1", NOW, NOW + 60_000)
    terminals.record_status(TERMINAL_ID, False, NOW, "t")
    assert terminals.get(TERMINAL_ID).busy_request_id == "r-1"  # type: ignore[union-attr]


def test_list_for_merchant_uses_the_index_and_sees_only_that_merchant(terminals: DynamoTerminalRepository) -> None:
    for terminal_id, merchant in (("ING-1", "M1"), ("ABC-9", "M1"), ("PAX-2", "M2")):
        terminals.put(Terminal(terminal_id, merchant, "p"))
    assert sorted(t.terminal_id for t in terminals.list_for_merchant("M1")) == ["ABC-9", "ING-1", TERMINAL_ID]
    assert [t.terminal_id for t in terminals.list_for_merchant("M2")] == ["PAX-2"]
    assert terminals.list_for_merchant("M3") == []
    found = {t.terminal_id: t for t in terminals.list_for_merchant("M1")}
    assert found[TERMINAL_ID] == Terminal(TERMINAL_ID, "M1", PASSPHRASE, online=True)


# -- payments ------------------------------------------------------------------------------------------


def test_first_attempt_writes_head_and_dispatch_with_their_expiry(
    aws: Settings, payments: DynamoPaymentRepository
) -> None:
    head, dispatch = head_and_dispatch()
    payments.start_attempt(head, dispatch, None)
    assert payments.get_head("M1", "O-1") == head
    assert payments.get_dispatch("r-1") == dispatch
    for key in (head_key("M1", "O-1"), dispatch_key("r-1")):
        item = raw_item(aws.payments_table, key)
        assert item is not None and item["expires_at"] == {"N": str(head.updated_at_ms // 1000 + RETENTION_S)}


def test_heads_are_per_merchant(payments: DynamoPaymentRepository) -> None:
    started(payments)
    assert payments.get_head("M2", "O-1") is None
    assert payments.get_dispatch("r-unknown") is None


def test_a_second_first_attempt_fails_and_writes_nothing(payments: DynamoPaymentRepository) -> None:
    started(payments, "r-1")
    head, dispatch = head_and_dispatch("r-2")
    with pytest.raises(ConditionFailed):
        payments.start_attempt(head, dispatch, None)
    assert payments.get_head("M1", "O-1").request_id == "r-1"  # type: ignore[union-attr]
    assert payments.get_dispatch("r-2") is None, "the transaction wrote neither item"


def test_of_two_retries_of_the_same_attempt_one_fails(payments: DynamoPaymentRepository) -> None:
    started(payments, "r-1")
    first = head_and_dispatch("r-2", attempt=2)
    second = head_and_dispatch("r-3", attempt=2)
    payments.start_attempt(*first, 1)
    with pytest.raises(ConditionFailed):
        payments.start_attempt(*second, 1)
    head = payments.get_head("M1", "O-1")
    assert head is not None and (head.attempt, head.request_id) == (2, "r-2")
    assert payments.get_dispatch("r-3") is None
    assert payments.get_dispatch("r-1") is not None, "earlier attempts stay readable"


@pytest.mark.usefixtures("linearizable_dynamodb")
def test_of_concurrent_retries_exactly_one_starts(payments: DynamoPaymentRepository) -> None:
    started(payments, "r-1")
    attempts = [head_and_dispatch(f"r-retry-{n}", attempt=2) for n in range(4)]
    outcomes = race(*[lambda a=a: payments.start_attempt(*a, 1) for a in attempts])
    assert sum(outcome is None for outcome in outcomes) == 1, outcomes
    assert sum(isinstance(outcome, ConditionFailed) for outcome in outcomes) == 3
    winner = attempts[outcomes.index(None)][1].request_id
    assert payments.get_head("M1", "O-1").request_id == winner  # type: ignore[union-attr]
    assert [payments.get_dispatch(a[1].request_id) is not None for a in attempts].count(True) == 1


def test_retry_against_a_stale_attempt_number_fails(payments: DynamoPaymentRepository) -> None:
    started(payments, "r-1")
    with pytest.raises(ConditionFailed):
        payments.start_attempt(*head_and_dispatch("r-2", attempt=3), 2)


def test_transition_moves_forward_and_counts_versions(payments: DynamoPaymentRepository) -> None:
    started(payments)
    acked = payments.transition("r-1", PENDING, DispatchState.ACKNOWLEDGED, NOW + 50, terminal_id=TERMINAL_ID)
    assert (acked.state, acked.acked_at_ms, acked.finished_at_ms, acked.version) == (
        DispatchState.ACKNOWLEDGED,
        NOW + 50,
        None,
        1,
    )
    result = {"payment_status": "Success", "error_data": {"code": "00", "n": 3}, "authorized_online": True}
    done = payments.transition("r-1", IN_FLIGHT, DispatchState.SUCCEEDED, NOW + 900, result=result)
    assert (done.state, done.finished_at_ms, done.version, done.result) == (
        DispatchState.SUCCEEDED,
        NOW + 900,
        2,
        result,
    )
    assert payments.get_dispatch("r-1") == done


def test_transition_from_a_wrong_state_fails_and_changes_nothing(
    aws: Settings, payments: DynamoPaymentRepository
) -> None:
    started(payments)
    payments.transition("r-1", IN_FLIGHT, DispatchState.FAILED, NOW + 1, reason="terminal_busy")
    before = raw_item(aws.payments_table, dispatch_key("r-1"))
    with pytest.raises(ConditionFailed):
        payments.transition("r-1", IN_FLIGHT, DispatchState.SUCCEEDED, NOW + 2, result={"payment_status": "Success"})
    with pytest.raises(ConditionFailed):
        payments.transition("r-1", PENDING, DispatchState.ACKNOWLEDGED, NOW + 3)
    assert raw_item(aws.payments_table, dispatch_key("r-1")) == before


def test_transition_for_another_terminal_fails_and_changes_nothing(
    aws: Settings, payments: DynamoPaymentRepository
) -> None:
    started(payments)
    before = raw_item(aws.payments_table, dispatch_key("r-1"))
    with pytest.raises(ConditionFailed):
        payments.transition("r-1", PENDING, DispatchState.ACKNOWLEDGED, NOW, terminal_id="PAX-77")
    assert raw_item(aws.payments_table, dispatch_key("r-1")) == before


def test_transition_of_an_unknown_dispatch_fails_without_creating_it(payments: DynamoPaymentRepository) -> None:
    with pytest.raises(ConditionFailed):
        payments.transition("r-ghost", IN_FLIGHT, DispatchState.FAILED, NOW)
    assert payments.get_dispatch("r-ghost") is None


def test_late_result_is_flagged_and_keeps_the_timeout_reason(payments: DynamoPaymentRepository) -> None:
    started(payments)
    timed_out = payments.transition("r-1", IN_FLIGHT, DispatchState.TIMED_OUT, NOW + 1, reason="result_timeout")
    assert timed_out.late is False
    late = payments.transition(
        "r-1",
        frozenset({DispatchState.TIMED_OUT}),
        DispatchState.SUCCEEDED,
        NOW + 2,
        terminal_id=TERMINAL_ID,
        result={"payment_status": "Success"},
        late=True,
    )
    assert (late.state, late.late, late.reason) == (DispatchState.SUCCEEDED, True, "result_timeout")
    assert payments.get_dispatch("r-1").late is True  # type: ignore[union-attr]


def test_a_failure_may_be_left_for_a_late_result_only_when_its_reason_allows(
    payments: DynamoPaymentRepository,
) -> None:
    started(payments, "r-1")
    started(payments, "r-2", order_id="O-2")
    payments.transition("r-1", IN_FLIGHT, DispatchState.FAILED, NOW + 1, reason="terminal_disconnected")
    payments.transition("r-2", IN_FLIGHT, DispatchState.FAILED, NOW + 1, reason="terminal_busy")
    allowed = frozenset({"terminal_disconnected", "terminal_unreachable"})
    late = payments.transition(
        "r-1",
        frozenset({DispatchState.TIMED_OUT}),
        DispatchState.SUCCEEDED,
        NOW + 2,
        terminal_id=TERMINAL_ID,
        late=True,
        failed_for=allowed,
    )
    assert (late.state, late.late) == (DispatchState.SUCCEEDED, True)
    with pytest.raises(ConditionFailed):
        payments.transition(
            "r-2",
            frozenset({DispatchState.TIMED_OUT}),
            DispatchState.SUCCEEDED,
            NOW + 2,
            terminal_id=TERMINAL_ID,
            late=True,
            failed_for=allowed,
        )
    assert payments.get_dispatch("r-2").state == DispatchState.FAILED  # type: ignore[union-attr]


@pytest.mark.usefixtures("linearizable_dynamodb")
def test_of_concurrent_results_exactly_one_lands(payments: DynamoPaymentRepository) -> None:
    started(payments)
    outcomes = race(
        *[
            lambda to=to: payments.transition("r-1", IN_FLIGHT, to, NOW, result={"payment_status": to.value})
            for to in (DispatchState.SUCCEEDED, DispatchState.FAILED, DispatchState.CANCELLED, DispatchState.TIMED_OUT)
        ]
    )
    landed = [o for o in outcomes if isinstance(o, Dispatch)]
    assert len(landed) == 1 and sum(isinstance(o, ConditionFailed) for o in outcomes) == 3
    assert payments.get_dispatch("r-1") == landed[0]


def test_dispatch_attributes_unknown_to_the_model_come_back_as_extra(payments: DynamoPaymentRepository) -> None:
    head, dispatch = head_and_dispatch()
    dispatch = replace(dispatch, extra={"notified_at_ms": NOW, "source": "ecr"})
    payments.start_attempt(head, dispatch, None)
    assert payments.get_dispatch("r-1") == dispatch


# -- merchants ------------------------------------------------------------------------------------------


def test_merchant_and_login_round_trip(merchants: DynamoMerchantRepository) -> None:
    merchants.put_merchant("M1", "https://shop.example/notify", "notify-secret")
    merchants.put_login("shop", "M1", "scrypt$hash")
    assert merchants.get_merchant("M1") == {
        "pk": "MERCHANT#M1",
        "merchant_id": "M1",
        "notify_url": "https://shop.example/notify",
        "notify_passphrase": "notify-secret",
        "basket_policy": "lenient",
    }
    assert merchants.get_login("shop") == {
        "pk": "LOGIN#shop",
        "login": "shop",
        "merchant_id": "M1",
        "password_hash": "scrypt$hash",
    }
    assert merchants.get_login("M1") is None and merchants.get_merchant("shop") is None


def test_merchant_created_by_enrollment_authenticates_through_dynamodb(merchants: DynamoMerchantRepository) -> None:
    enrollment.create_merchant(merchants, "M1", "shop", "a-long-password")
    merchant = merchants.get_merchant("M1")
    assert merchant is not None and "notify_url" not in merchant and len(merchant["notify_passphrase"]) >= 32
    login = merchants.get_login("shop")
    assert login is not None and "a-long-password" not in str(login)
    import base64

    header = "Basic " + base64.b64encode(b"shop:a-long-password").decode()
    assert Authenticator(merchants, 60).merchant_for(header) == "M1"


# -- the IoT channel --------------------------------------------------------------------------------------


def published_payloads() -> list[tuple[str, bytes]]:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iotdata.models import iotdata_backends

    return list(iotdata_backends[DEFAULT_ACCOUNT_ID]["eu-west-3"].published_payloads)


def capture_publish_params(endpoint: str | None) -> list[dict[str, Any]]:
    captured: list[dict[str, Any]] = []
    client("iot-data", endpoint).meta.events.register(
        "provide-client-params.iot-data.Publish", lambda params, **_: captured.append(dict(params))
    )
    return captured


@pytest.mark.parametrize("endpoint", ["", "data-ats.iot.eu-west-3.amazonaws.com"], ids=["default", "ats-endpoint"])
def test_iot_channel_publishes_the_canonical_envelope_at_qos_1(aws: Settings, endpoint: str) -> None:
    envelope = protocol.make_envelope(
        "payment_request", "r-1", TERMINAL_ID, {"amount": 899, "description": "Café"}, PASSPHRASE
    )
    params = capture_publish_params(f"https://{endpoint}" if endpoint else None)
    IotDataChannel(endpoint).publish(TERMINAL_ID, envelope)
    topic = f"nepting/v1/terminals/{TERMINAL_ID}/requests"
    assert published_payloads() == [(topic, protocol.encode(envelope))]
    assert [(p["topic"], p["qos"], p["payload"]) for p in params] == [(topic, 1, protocol.encode(envelope))]
    assert protocol.verify_signature(protocol.decode(published_payloads()[0][1]), PASSPHRASE)


def test_iot_channel_turns_a_refused_publish_into_a_channel_error(aws: Settings) -> None:
    iot = client("iot-data", None)
    with Stubber(iot) as stubber:
        stubber.add_client_error("publish", service_error_code="ThrottlingException", http_status_code=429)
        with pytest.raises(ChannelError) as caught:
            IotDataChannel().publish(TERMINAL_ID, protocol.make_envelope("cancel_request", "r-1", TERMINAL_ID, {}, "p"))
    assert TERMINAL_ID in str(caught.value)
    assert published_payloads() == []
