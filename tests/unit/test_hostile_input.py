"""Hostile or sloppy input is refused with a reason, never a crash: the bounded JSON reader, then
generated garbage fed to the envelope decoder, the terminal handlers, the IPN route and every
queue and stream handler (fakes only)."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app as chalice_app
from chalicelib import jsonutil, protocol
from chalicelib.config import Settings
from chalicelib.console import notifications
from chalicelib.console.ipn import IpnDeps, ipn_signature, receive_ipn
from chalicelib.errors import ApiError
from chalicelib.event_sources import message_body, sqs_batch, stream_batch
from chalicelib.exceptions import EnvelopeError, JsonLimitError, RecordRefused
from chalicelib.observability import METRIC_COUNTS
from chalicelib.payments.terminal_events import handle_event, handle_status
from tests.conftest import PASSPHRASE, TERMINAL_ID, World
from tests.fakes import FakeClock

GARBAGE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# JSON values of every shape, nesting included, with the numbers and strings hostile clients send.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
hostile_fragments = st.sampled_from(
    [
        "1E+300000",
        "1E-999999999",
        "-" + "9" * 41,
        "[" * 5000,
        "]" * 5000,
        '"\\ud800"',
        '"\\udfff\\ud800"',
        "NaN",
        "Infinity",
        "0.1e0000000000000000000000000000001",
        '{"a":',
        "}",
        '"\\',
        "\x00",
        ",",
        ":",
        "\ufeff",
        "²",
        "١٢",
    ]
)
hostile_texts = st.lists(hostile_fragments | st.text(max_size=5), max_size=12).map("".join)
hostile_bytes = hostile_texts.map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary(max_size=200)


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    return 0


def within_limits(value: Any) -> bool:
    if isinstance(value, dict):
        return all(within_limits(k) and within_limits(v) for k, v in value.items())
    if isinstance(value, list):
        return all(within_limits(item) for item in value)
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return len(str(abs(value))) <= jsonutil.MAX_DIGITS
    if isinstance(value, Decimal):
        _sign, digits, exponent = value.as_tuple()
        return len(digits) <= jsonutil.MAX_DIGITS and isinstance(exponent, int)
    if isinstance(value, str):
        return not any(0xD800 <= ord(char) <= 0xDFFF for char in value)
    return False


# -- the bounded reader --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason", "path"),
    [
        ('{"order":{"custom_data":{"x":1E+300000}}}', "exponent_too_large", "order.custom_data.x"),
        ('{"order":{"basket":[{},{"tax_rate":1E-999999999}]}}', "exponent_too_large", "order.basket.1.tax_rate"),
        ('{"unknown":1e21}', "exponent_too_large", "unknown"),
        ('{"a":[' + "9" * 31 + "]}", "number_too_long", "a.0"),
        ('{"a":0.' + "1" * 31 + "}", "number_too_long", "a"),
        ('{"a":{"b":"\\ud800"}}', "lone_surrogate", "a.b"),
        ('{"a":["x","\\udc00\\ud83d"]}', "lone_surrogate", "a.1"),
        ('{"a":{"\\ud800":1}}', "lone_surrogate", "a"),
        ("[" * 33 + "]" * 33, "too_deep", ".".join(["0"] * 32)),
        ('{"a":' * 5000 + "1" + "}" * 5000, "too_deep", ".".join(["a"] * 32)),
    ],
)
def test_a_value_past_a_parsing_limit_is_refused_with_its_path(text: str, reason: str, path: str) -> None:
    with pytest.raises(JsonLimitError) as caught:
        jsonutil.loads(text)
    assert (caught.value.reason, caught.value.path) == (reason, path)


def test_values_at_the_limits_are_read_exactly() -> None:
    deepest = "[" * 31 + "]" * 31  # inside the top-level object: 32 levels in all
    text = '{"n":' + "9" * 30 + ',"e":1e20,"f":-1.5E-20,"s":"\\ud83d\\ude00","deep":' + deepest + "}"
    value = jsonutil.loads(text)
    assert value["n"] == int("9" * 30)
    assert value["e"] == Decimal("1e20") and value["f"] == Decimal("-1.5E-20")
    assert value["s"] == "\U0001f600"
    assert depth_of(value) == 32


@pytest.mark.parametrize(
    ("literal", "refused"),
    [("9" * 30, False), ("-" + "9" * 30, False), ("9" * 31, True), ("-" + "9" * 31, True), ("-1", False)],
    ids=["30-digits", "negative-30-digits", "31-digits", "negative-31-digits", "short"],
)
def test_an_integer_is_refused_past_its_significant_digits_not_its_characters(literal: str, refused: bool) -> None:
    text = '{"a":[' + literal + "]}"
    if refused:
        with pytest.raises(JsonLimitError) as caught:
            jsonutil.loads(text)
        assert (caught.value.reason, caught.value.path) == ("number_too_long", "a.0")
    else:
        assert jsonutil.loads(text) == {"a": [int(literal)]}


@pytest.mark.parametrize("text", [None, 12, memoryview(b"{}")], ids=["none", "int", "memoryview"])
def test_what_is_neither_text_nor_bytes_is_a_type_error(text: Any) -> None:
    with pytest.raises(TypeError):
        jsonutil.loads(text)


@GARBAGE
@given(json_values)
def test_the_parser_hooks_refuse_exactly_what_the_full_scan_refuses(value: Any) -> None:
    text = jsonutil.dumps(value)
    try:
        jsonutil.check_limits(text)
        expected = None
    except JsonLimitError as refused:
        expected = (refused.reason, refused.path)
    try:
        jsonutil.loads(text)
        got = None
    except JsonLimitError as refused:
        got = (refused.reason, refused.path)
    assert got == expected


def test_digits_and_exponents_inside_strings_cost_no_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_scan(_text: str) -> None:
        raise AssertionError("scanned")

    monkeypatch.setattr(jsonutil, "check_limits", no_scan)
    text = json.dumps({"signature": "3e45" * 16, "id": "9" * 64, "at": "2026-11-29T07:00:00.123Z", "n": 1e20})
    assert jsonutil.loads(text)["id"] == "9" * 64
    with pytest.raises(AssertionError, match="scanned"):  # a number past a limit is looked up by the scan
        jsonutil.loads('{"n":1e21}')


def test_a_raw_lone_surrogate_in_text_is_refused() -> None:
    with pytest.raises(JsonLimitError) as caught:
        jsonutil.loads('{"a":"\ud800"}')
    assert caught.value.path == ""


def test_bytes_that_are_not_utf8_are_not_json() -> None:
    with pytest.raises(ValueError):
        jsonutil.loads(b'{"a":"\xed\xa0\x80"}')  # a surrogate encoded in UTF-8 bytes


@GARBAGE
@given(hostile_texts)
def test_the_reader_answers_any_text_with_a_value_within_limits_or_a_value_error(text: str) -> None:
    try:
        value = jsonutil.loads(text)
    except ValueError:
        return
    assert within_limits(value)
    assert depth_of(value) <= jsonutil.MAX_DEPTH
    jsonutil.dumps(value)  # whatever was read can be written back


def outcome_of(read: Any, text: str) -> Any:
    """What a reader answers: the value, or the refusal's type, reason and path."""
    try:
        return ("value", read(text))
    except JsonLimitError as exc:
        return ("limit", exc.reason, exc.path, str(exc))
    except ValueError as exc:
        return ("not_json", type(exc), str(exc))


def holds_a_decimal(value: Any) -> bool:
    if isinstance(value, dict):
        return any(holds_a_decimal(item) for item in value.values())
    if isinstance(value, list):
        return any(holds_a_decimal(item) for item in value)
    return isinstance(value, Decimal)


@given(hostile_texts | json_values.map(jsonutil.dumps))
def test_the_reader_noting_fractions_answers_as_the_reader_does(text: str) -> None:
    noted = outcome_of(jsonutil.loads_noting_fractions, text)
    plain = outcome_of(jsonutil.loads, text)
    if noted[0] == "value":
        value, fractions = noted[1]
        assert plain == ("value", value)
        # A Decimal comes only from a number read with a fraction or an exponent.
        assert fractions or not holds_a_decimal(value)
    else:
        assert noted == plain


@pytest.mark.parametrize(
    ("text", "fractions"),
    [
        ('{"a":1,"b":[-2,{"c":3}],"d":"1.5e3","e":true,"f":null}', False),
        ('{"a":1,"b":[2,{"c":3.25}]}', True),
        ("[1E+2]", True),
        ("-0.0", True),
        ('{"a":1.5,"a":1}', True),
    ],
    ids=["integers", "fraction", "exponent", "negative-zero", "replaced-by-a-repeated-key"],
)
def test_the_reader_notes_whether_a_number_had_a_fraction_or_an_exponent(text: str, fractions: bool) -> None:
    assert jsonutil.loads_noting_fractions(text) == (jsonutil.loads(text), fractions)


@pytest.mark.parametrize(
    ("text", "reason", "path"),
    [
        ('{"a":1.5,"b":[1E+99]}', "exponent_too_large", "b.0"),
        ('{"a":1,"b":[' + "9" * 31 + '],"c":2.5}', "number_too_long", "b.0"),
        ('{"a":0.5,"b":' + "1." + "1" * 30 + "}", "number_too_long", "b"),
    ],
    ids=["after-a-fraction", "before-a-fraction", "the-fraction-itself"],
)
def test_the_reader_noting_fractions_refuses_a_number_past_a_limit_wherever_it_is(
    text: str, reason: str, path: str
) -> None:
    with pytest.raises(JsonLimitError) as caught:
        jsonutil.loads_noting_fractions(text)
    assert (caught.value.reason, caught.value.path) == (reason, path)


@pytest.mark.parametrize("read", [jsonutil.loads, jsonutil.loads_noting_fractions], ids=["loads", "noting"])
def test_a_byte_order_mark_is_not_json(read: Any) -> None:
    with pytest.raises(ValueError, match="BOM"):
        read("\ufeff{}")
    with pytest.raises(ValueError, match="BOM"):
        read("\ufeff{}".encode())


bounded_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**29), max_value=10**29)
    | st.decimals(min_value=-(10**20), max_value=10**20, places=9)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
).filter(lambda value: depth_of(value) <= jsonutil.MAX_DEPTH)


@GARBAGE
@given(bounded_values)
def test_json_within_the_limits_reads_back_as_written(value: Any) -> None:
    text = jsonutil.dumps(value)
    assert jsonutil.dumps(jsonutil.loads(text)) == text


# -- terminal messages ------------------------------------------------------------------------------------


@GARBAGE
@given(hostile_bytes)
def test_the_envelope_decoder_refuses_garbage_only_as_envelope_errors(payload: bytes) -> None:
    try:
        envelope = protocol.decode(payload)
    except EnvelopeError as exc:
        assert exc.reason
        return
    assert isinstance(envelope["body"], dict)


def state_of(world: World) -> Any:
    return copy.deepcopy((world.payments.dispatches, world.payments.heads, world.terminals.items))


@pytest.fixture(scope="module")
def garbage_world() -> World:
    return World()


@GARBAGE
@given(payload=hostile_bytes, topic=st.sampled_from([f"nepting/v1/terminals/{TERMINAL_ID}/events", "x", ""]))
def test_the_event_handler_refuses_garbage_and_moves_nothing(garbage_world: World, payload: bytes, topic: str) -> None:
    before = state_of(garbage_world)
    refused = METRIC_COUNTS["EventsRefused"]
    outcome = handle_event(garbage_world.event_deps, topic, payload)
    assert outcome.startswith("refused:")
    assert METRIC_COUNTS["EventsRefused"] == refused + 1
    assert state_of(garbage_world) == before


@GARBAGE
@given(payload=hostile_bytes)
def test_the_status_handler_refuses_garbage_and_moves_nothing(garbage_world: World, payload: bytes) -> None:
    before = state_of(garbage_world)
    outcome = handle_status(garbage_world.event_deps, f"nepting/v1/terminals/{TERMINAL_ID}/status", payload, 1)
    assert outcome.startswith("refused:")
    assert state_of(garbage_world) == before


@GARBAGE
@given(body=st.dictionaries(st.sampled_from(["payment_status", "error_data", "receipt", "x"]), json_values))
def test_a_signed_result_with_any_body_is_applied_or_refused_never_raised(garbage_world: World, body: Any) -> None:
    envelope = protocol.make_envelope("result", "no-such-request", TERMINAL_ID, {}, PASSPHRASE)
    envelope["body"] = body
    envelope.pop("sig")
    try:
        envelope["sig"] = protocol.signature(envelope, PASSPHRASE)
    except EnvelopeError:
        return  # a float: never signed by a conforming terminal, refused by decode below anyway
    payload = json.dumps(envelope, default=str).encode()
    outcome = handle_event(garbage_world.event_deps, f"nepting/v1/terminals/{TERMINAL_ID}/events", payload)
    assert outcome.startswith("refused:")


@pytest.mark.parametrize(
    "event",
    [{}, {"topic": "t"}, {"topic": 1, "payload": None}, {"topic": "t", "payload": "%%%"}, []],
    ids=["empty", "no-payload", "wrong-types", "not-base64", "not-an-object"],
)
def test_a_topic_rule_event_of_the_wrong_shape_is_refused_by_both_handlers(event: Any) -> None:
    assert chalice_app.terminal_events_handler(event, None) == {"outcome": "refused:bad_event"}
    assert chalice_app.terminal_status_handler(event, None) == {"outcome": "refused:bad_event"}


# -- IPN ----------------------------------------------------------------------------------------------------


class MemoryInbox:
    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def store(self, reference: str, merchant_id: str, body_json: str, body_sha256: str, received_at_ms: int) -> bool:
        if reference in self.items:
            return False
        self.items[reference] = {"body_json": body_json, "body_sha256": body_sha256}
        return True

    def get(self, reference: str) -> dict[str, Any] | None:
        return self.items.get(reference)

    def mark_merged(self, reference: str, merged_at_ms: int) -> None:
        self.items[reference]["merged_at_ms"] = merged_at_ms


class Merchants:
    def get_merchant(self, merchant_id: str) -> dict[str, Any] | None:
        return {"merchant_id": merchant_id} if merchant_id == "M1" else None


class Queue:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, body: dict[str, Any], delay_s: int = 0) -> None:
        self.sent.append(body)


SECRET = "ipn secret"


def ipn_deps() -> IpnDeps:
    return IpnDeps(MemoryInbox(), Merchants(), Queue(), lambda: SECRET, FakeClock())


def signed(deps: IpnDeps, body: bytes, timestamp: str | None = None) -> dict[str, str]:
    stamp = timestamp if timestamp is not None else str(deps.clock.now_ms() // 1000)
    return {"x-nepting-timestamp": stamp, "x-nepting-signature": ipn_signature(SECRET, stamp, body)}


@GARBAGE
@given(hostile_bytes)
def test_a_signed_ipn_of_garbage_is_a_400_with_nothing_stored(body: bytes) -> None:
    deps = ipn_deps()
    with pytest.raises(ApiError) as caught:
        receive_ipn(deps, signed(deps, body), body)
    assert caught.value.status in (400, 422)
    assert caught.value.body()["error"]["code"]
    assert deps.inbox.items == {} and deps.queue.sent == []  # type: ignore[attr-defined]


@GARBAGE
@given(st.text(max_size=14))
def test_any_timestamp_header_is_answered_401_or_accepted_never_raised(stamp: str) -> None:
    deps = ipn_deps()
    body = b"{}"
    try:
        headers = signed(deps, body, stamp)
    except UnicodeEncodeError:
        headers = {"x-nepting-timestamp": stamp, "x-nepting-signature": "0" * 64}
    with pytest.raises(ApiError) as caught:
        receive_ipn(deps, headers, body)
    assert caught.value.status in (400, 401)


def test_an_ipn_timestamp_of_other_scripts_digits_is_refused_before_any_signature_check() -> None:
    deps = ipn_deps()
    with pytest.raises(ApiError) as caught:
        receive_ipn(deps, {"x-nepting-timestamp": "١٧٦٤٣٠٠٠٠٠", "x-nepting-signature": "0" * 64}, b"{}")
    assert (caught.value.status, caught.value.code) == (401, "ipn.timestamp_invalid")


def test_an_ipn_past_a_parsing_limit_is_refused_with_its_path() -> None:
    deps = ipn_deps()
    body = b'{"amount":1E+300000}'
    with pytest.raises(ApiError) as caught:
        receive_ipn(deps, signed(deps, body), body)
    assert caught.value.body()["error"]["details"] == {"path": "amount"}


# -- queue and stream records -------------------------------------------------------------------------------

sqs_records = st.one_of(
    st.builds(lambda body, mid: {"messageId": mid, "body": body}, hostile_texts, st.text(min_size=1, max_size=4)),
    st.builds(lambda value: {"messageId": "m", "body": json.dumps(value, default=str)}, json_values),
    json_values,
)


@GARBAGE
@given(st.lists(sqs_records, max_size=5))
def test_the_queue_batch_hands_handlers_only_objects_and_refuses_the_rest(records: list[Any]) -> None:
    seen: list[Any] = []
    refused = METRIC_COUNTS["RecordsRefused"]
    result = sqs_batch({"Records": records}, seen.append, "test")
    assert result == {"batchItemFailures": []}
    assert all(isinstance(body, dict) for body in seen)
    assert len(seen) + METRIC_COUNTS["RecordsRefused"] - refused == len(records)


@pytest.mark.parametrize(
    "body",
    ['{"transaction_reference": 7}', "[]", '{"transaction_reference": "' + "[" * 40 + '"', "{}"],
    ids=["wrong-type", "array", "not-json", "missing"],
)
def test_the_ipn_ingest_handler_refuses_an_unreadable_message(body: str) -> None:
    refused = METRIC_COUNTS["RecordsRefused.source=ipn_ingest"]
    assert chalice_app.ipn_ingest_handler({"Records": [{"messageId": "m", "body": body}]}, None) == {
        "batchItemFailures": []
    }
    assert METRIC_COUNTS["RecordsRefused.source=ipn_ingest"] == refused + 1


@GARBAGE
@given(st.lists(json_values, max_size=4))
def test_a_notification_message_of_the_wrong_shape_is_refused_not_retried(messages: list[Any]) -> None:
    deps = notifications.NotifierDeps(
        transactions=None,  # type: ignore[arg-type]  # never reached: the message is refused first
        merchants=Merchants(),
        queue=Queue(),
        dead_letters=Queue(),
        poster=None,  # type: ignore[arg-type]
        clock=FakeClock(),
        settings=Settings(),
    )
    records = [{"messageId": str(i), "body": jsonutil.dumps(m)} for i, m in enumerate(messages) if isinstance(m, dict)]
    refused = METRIC_COUNTS["RecordsRefused"]
    result = sqs_batch({"Records": records}, lambda body: notifications.deliver(deps, body), "merchant_notifier")
    assert result == {"batchItemFailures": []}
    assert METRIC_COUNTS["RecordsRefused"] == refused + len(records)


stream_records = st.one_of(
    json_values,
    st.builds(
        lambda image, name: {"eventName": name, "dynamodb": {"SequenceNumber": "1", "NewImage": image}},
        json_values,
        st.sampled_from(["INSERT", "MODIFY", "REMOVE", None]),
    ),
)


@GARBAGE
@given(st.lists(stream_records, max_size=5))
def test_the_stream_handler_refuses_unreadable_records_and_never_raises(records: list[Any]) -> None:
    from chalicelib.event_sources import new_image

    seen: list[Any] = []
    result = stream_batch({"Records": records}, lambda record: seen.append(new_image(record)), "test")
    assert result == {"batchItemFailures": []}
    assert all(image is None or isinstance(image, dict) for image in seen)


def test_a_queue_body_past_a_parsing_limit_is_refused_with_its_reason() -> None:
    with pytest.raises(RecordRefused) as caught:
        message_body({"body": '{"transaction_reference":' + "[" * 40 + "]" * 40 + "}"})
    assert caught.value.reason == "too_deep"
