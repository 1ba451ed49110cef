"""The signed envelope of docs/terminal-protocol.md, the JSON writer of the API and the card-data rules.

Signature vectors are computed here with hmac/hashlib from literal canonical strings, so the
signer is checked against the contract's text, not against itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib import jsonutil, protocol
from chalicelib.exceptions import JsonLimitError
from chalicelib.payments.domain import RESULT_FIELDS, clean_result, is_masked_pan

PASSPHRASE = "correct horse battery staple"
ACK = {
    "v": 1,
    "type": "ack",
    "request_id": "r-1",
    "terminal_id": "PAX-1850320198",
    "sent_at": "2026-11-28T03:12:00.123Z",
    "body": {},
}
ACK_CANONICAL = (
    '{"body":{},"request_id":"r-1","sent_at":"2026-11-28T03:12:00.123Z","terminal_id":"PAX-1850320198",'
    '"type":"ack","v":1}'
)
REQUEST = {
    "v": 1,
    "type": "payment_request",
    "request_id": "0f1e2d3c",
    "terminal_id": "INGENICO-A1b2",
    "sent_at": "2026-11-28T03:12:00.000Z",
    "body": {
        "order_id": "Commande n°42",
        "transaction_type": "Debit",
        "amount": 899,
        "currency": "EUR",
        "force_authorization": False,
        "description": "Café — crème",
        "expires_at": "2026-11-28T03:14:00.000Z",
    },
}
REQUEST_CANONICAL = (
    '{"body":{"amount":899,"currency":"EUR","description":"Café — crème","expires_at":"2026-11-28T03:14:00.000Z",'
    '"force_authorization":false,"order_id":"Commande n°42","transaction_type":"Debit"},"request_id":"0f1e2d3c",'
    '"sent_at":"2026-11-28T03:12:00.000Z","terminal_id":"INGENICO-A1b2","type":"payment_request","v":1}'
)


def hmac_hex(key: str, message: str) -> str:
    return hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def signed(envelope: dict[str, Any], passphrase: str = PASSPHRASE) -> dict[str, Any]:
    return {**envelope, "sig": protocol.signature(envelope, passphrase)}


# -- canonical JSON ---------------------------------------------------------------------------------


def test_canonical_json_sorts_keys_and_drops_whitespace() -> None:
    assert protocol.canonical_json(ACK) == ACK_CANONICAL.encode()


def test_canonical_json_writes_utf8_unescaped() -> None:
    assert protocol.canonical_json(REQUEST) == REQUEST_CANONICAL.encode("utf-8")
    assert "Café — crème".encode() in protocol.canonical_json(REQUEST)


def test_canonical_json_sorts_nested_keys_too() -> None:
    assert protocol.canonical_json({"b": {"z": 1, "a": [{"y": 2, "x": 3}]}, "a": None}) == (
        b'{"a":null,"b":{"a":[{"x":3,"y":2}],"z":1}}'
    )


@pytest.mark.parametrize("value", [{"amount": 8.99}, {"body": {"n": [1, 2.0]}}, 1.5, [{"x": 0.0}]])
def test_canonical_json_refuses_floats_anywhere(value: Any) -> None:
    with pytest.raises(protocol.EnvelopeError) as caught:
        protocol.canonical_json(value)
    assert caught.value.reason == "float_in_envelope"


# -- signatures -------------------------------------------------------------------------------------


def test_signature_of_an_ack_matches_the_contracts_recipe() -> None:
    assert protocol.signature(ACK, PASSPHRASE) == hmac_hex(PASSPHRASE, ACK_CANONICAL)


def test_signature_of_a_payment_request_with_non_ascii_text_and_key() -> None:
    key = "clé secrète ✓"
    assert protocol.signature(REQUEST, key) == hmac_hex(key, REQUEST_CANONICAL)


def test_signature_ignores_an_existing_sig_field() -> None:
    assert protocol.signature({**ACK, "sig": "whatever"}, PASSPHRASE) == hmac_hex(PASSPHRASE, ACK_CANONICAL)


def test_signature_is_lowercase_hex_sha256() -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", protocol.signature(ACK, PASSPHRASE))


def test_make_envelope_builds_the_contract_shape_and_signs_it() -> None:
    made = protocol.make_envelope("ack", "r-1", "PAX-1850320198", {}, PASSPHRASE, sent_at="2026-11-28T03:12:00.123Z")
    assert made == {**ACK, "sig": hmac_hex(PASSPHRASE, ACK_CANONICAL)}
    assert protocol.verify_signature(made, PASSPHRASE)


def test_make_envelope_stamps_now_with_milliseconds_and_z() -> None:
    made = protocol.make_envelope("ack", "r-1", "PAX-1", {}, PASSPHRASE)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", made["sent_at"])


def test_encode_is_the_canonical_form_of_the_signed_envelope() -> None:
    sig = hmac_hex(PASSPHRASE, ACK_CANONICAL)
    encoded = protocol.encode(signed(ACK))
    assert encoded == ACK_CANONICAL.replace(',"terminal_id"', f',"sig":"{sig}","terminal_id"').encode()
    assert protocol.decode(encoded) == signed(ACK)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("v", 2),
        ("type", "result"),
        ("request_id", "r-2"),
        ("terminal_id", "PAX-1850320199"),
        ("sent_at", "2026-11-28T03:12:00.124Z"),
        ("body", {"accepted": False}),
    ],
)
def test_tampering_any_field_breaks_the_signature(field: str, value: Any) -> None:
    tampered = {**signed(ACK), field: value}
    assert not protocol.verify_signature(tampered, PASSPHRASE)


@pytest.mark.parametrize("key", sorted(REQUEST["body"]))
def test_tampering_any_body_field_breaks_the_signature(key: str) -> None:
    original = signed(REQUEST)
    tampered = {**original, "body": {**original["body"], key: "tampered"}}
    assert protocol.verify_signature(original, PASSPHRASE)
    assert not protocol.verify_signature(tampered, PASSPHRASE)


def test_an_added_field_breaks_the_signature() -> None:
    assert not protocol.verify_signature({**signed(ACK), "extra": 1}, PASSPHRASE)


@pytest.mark.parametrize(
    "sig",
    [None, 12, "", hmac_hex(PASSPHRASE, ACK_CANONICAL).upper(), hmac_hex("other passphrase", ACK_CANONICAL)],
    ids=["null", "int", "empty", "uppercase", "other-key"],
)
def test_a_missing_or_wrong_signature_does_not_verify(sig: Any) -> None:
    assert not protocol.verify_signature({**ACK, "sig": sig}, PASSPHRASE)


def test_a_missing_sig_does_not_verify() -> None:
    assert not protocol.verify_signature(dict(ACK), PASSPHRASE)


def test_the_right_signature_verifies_only_with_its_passphrase() -> None:
    assert protocol.verify_signature(signed(ACK), PASSPHRASE)
    assert not protocol.verify_signature(signed(ACK), PASSPHRASE + " ")


@pytest.mark.parametrize(
    "envelope",
    [
        signed(ACK),
        signed(REQUEST),
        signed(ACK, "another passphrase"),
        {**signed(ACK), "sig": signed(ACK)["sig"].upper()},
        {**signed(ACK), "request_id": "r-2"},
        {**signed(REQUEST), "body": {**REQUEST["body"], "amount": 900}},
        {**signed(ACK), "extra": 1},
        {**ACK, "sig": ""},
    ],
    ids=["ack", "request", "other-passphrase", "upper-case", "tampered", "tampered-body", "added-field", "empty-sig"],
)
def test_a_decoded_envelope_verifies_exactly_when_its_signature_does(envelope: dict[str, Any]) -> None:
    decoded = protocol.decode(protocol.canonical_json(envelope))
    assert protocol.verify_decoded_signature(decoded, PASSPHRASE) is protocol.verify_signature(envelope, PASSPHRASE)
    assert protocol.verify_decoded_signature(decoded, PASSPHRASE) is (envelope["sig"] == signed(envelope)["sig"])


@pytest.mark.parametrize("sig", [None, 1, ["x"]], ids=["missing", "number", "array"])
def test_a_decoded_envelope_without_a_string_signature_does_not_verify(sig: Any) -> None:
    envelope = {**signed(ACK), "sig": sig}
    if sig is None:
        del envelope["sig"]
    assert protocol.verify_decoded_signature(envelope, PASSPHRASE) is False


# -- decode -------------------------------------------------------------------------------------------


def decode_reason(payload: bytes | str) -> str:
    with pytest.raises(protocol.EnvelopeError) as caught:
        protocol.decode(payload)
    return caught.value.reason


@pytest.mark.parametrize(
    "payload",
    [b"", b"not json", b"{", b"\xff\xfe\x00", b"[1, 2]", b'"ack"', b"null"],
    ids=["empty", "text", "truncated", "not-utf8", "array", "string", "null"],
)
def test_decode_refuses_what_is_not_a_json_object_as_malformed(payload: bytes) -> None:
    assert decode_reason(payload) == "malformed"


@pytest.mark.parametrize("version", [None, 0, 2, "1", True], ids=["missing", "0", "2", "string", "true"])
def test_decode_refuses_other_versions(version: Any) -> None:
    envelope = signed(ACK)
    if version is None:
        del envelope["v"]
    else:
        envelope["v"] = version
    assert decode_reason(jsonutil.dumps(envelope)) == "bad_version"


@pytest.mark.parametrize("field", ["type", "request_id", "terminal_id", "sent_at", "sig"])
def test_decode_refuses_a_missing_or_non_string_envelope_field(field: str) -> None:
    missing = {k: v for k, v in signed(ACK).items() if k != field}
    assert decode_reason(jsonutil.dumps(missing)) == "malformed"
    assert decode_reason(jsonutil.dumps({**signed(ACK), field: 1})) == "malformed"


@pytest.mark.parametrize("body", [None, [], "x", 1])
def test_decode_refuses_a_body_that_is_not_an_object(body: Any) -> None:
    assert decode_reason(jsonutil.dumps({**signed(ACK), "body": body})) == "malformed"


def test_decode_refuses_floats_in_the_body() -> None:
    text = protocol.encode(signed(ACK)).replace(b'"body":{}', b'"body":{"amount":8.99}')
    assert decode_reason(text) == "float_in_envelope"


# Where a number that is not an integer may hide: decode judges them from the parser's own note, so
# every position is checked, exponents included.
FRACTION_POSITIONS = {
    "body": b'"body":{"amount":8.99}',
    "nested-object": b'"body":{"a":{"b":{"c":-0.5}}}',
    "array": b'"body":{"a":[1,2,3.0]}',
    "object-in-array": b'"body":{"a":[{"b":1},{"c":[0,1e2]}]}',
    "array-in-array": b'"body":{"a":[[1],[[2E-1]]]}',
    "exponent-only": b'"body":{"a":1E+2}',
    "negative-zero-fraction": b'"body":{"a":-0.0}',
    "beside-the-body": b'"body":{},"extra":[1.5]',
}


@pytest.mark.parametrize("body", FRACTION_POSITIONS.values(), ids=FRACTION_POSITIONS.keys())
def test_decode_refuses_a_fraction_or_an_exponent_in_any_position(body: bytes) -> None:
    text = protocol.encode(signed(ACK)).replace(b'"body":{}', body)
    with pytest.raises(protocol.EnvelopeError) as caught:
        protocol.decode(text)
    assert (caught.value.reason, str(caught.value)) == ("float_in_envelope", "envelopes carry integers only")


@pytest.mark.parametrize(
    ("field", "reason"),
    [(b'"v":1', "bad_version"), (b'"type":"ack"', "malformed"), (b'"body":{}', "malformed")],
    ids=["version", "type", "body"],
)
def test_a_fraction_in_place_of_an_envelope_field_is_refused_for_the_field(field: bytes, reason: str) -> None:
    """The envelope's shape is judged before its numbers, as it always was."""
    name = field.split(b":")[0]
    text = protocol.encode(signed(ACK)).replace(field, name + b":1.0")
    assert decode_reason(text) == reason


def test_a_fraction_that_a_repeated_key_replaced_is_not_in_the_envelope() -> None:
    """JSON's last repeated key wins: the envelope is judged as it stands once read."""
    text = protocol.encode(signed(ACK)).replace(b'"body":{}', b'"body":{"a":1.5,"a":1}')
    assert protocol.decode(text)["body"] == {"a": 1}


def contains_decimal(value: Any) -> bool:
    if isinstance(value, dict):
        return any(contains_decimal(item) for item in value.values())
    if isinstance(value, list):
        return any(contains_decimal(item) for item in value)
    return isinstance(value, Decimal)


envelope_bodies = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from("abcd"), envelope_bodies, max_size=4))
def test_decode_refuses_exactly_the_envelopes_whose_value_holds_a_fraction(body: dict[str, Any]) -> None:
    text = jsonutil.dumps({**signed(ACK), "body": body})
    try:
        parsed = jsonutil.loads(text)
    except JsonLimitError:
        return  # past a parsing limit: refused for that, whatever it holds
    if contains_decimal(parsed):
        assert decode_reason(text) == "float_in_envelope"
    else:
        assert protocol.decode(text) == parsed


def test_an_envelope_of_integers_is_not_searched_for_fractions_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser noted that no number had a fraction: searching the value would find nothing."""
    integers = protocol.encode(signed({**ACK, "body": {"amount": 899, "items": [{"n": 1}], "note": "1.5e3"}}))
    fraction = protocol.encode(signed(ACK)).replace(b'"body":{}', b'"body":{"a":1.5}')
    searched: list[Any] = []
    monkeypatch.setattr(protocol, "_reject_floats", searched.append)
    protocol.decode(integers)
    assert searched == []
    protocol.decode(fraction)
    assert len(searched) == 1


# The detail goes into the "terminal message refused" log line beside the reason: it is what an
# operator reads to tell a broken terminal from a misconfigured one.
@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b"not json", "payload is not JSON"),
        (b"[1, 2]", "envelope is not a JSON object"),
        (jsonutil.dumps({**ACK, "v": 2}), "unsupported envelope version 2"),
        (jsonutil.dumps({k: v for k, v in ACK.items() if k != "v"}), "unsupported envelope version None"),
        (jsonutil.dumps({**ACK, "sig": "x", "type": 1}), "envelope field 'type' missing or not a string"),
        (jsonutil.dumps({**ACK, "sig": "x", "body": []}), "envelope body is not an object"),
    ],
    ids=["not-json", "not-object", "version", "no-version", "field", "body"],
)
def test_decode_refusals_say_what_is_wrong(payload: bytes | str, detail: str) -> None:
    with pytest.raises(protocol.EnvelopeError) as caught:
        protocol.decode(payload)
    assert str(caught.value) == detail


def test_a_float_refusal_says_envelopes_carry_integers_only() -> None:
    with pytest.raises(protocol.EnvelopeError) as caught:
        protocol.canonical_json({"amount": 8.99})
    assert str(caught.value) == "envelopes carry integers only"


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("yesterday", "not an RFC 3339 timestamp: 'yesterday'"),
        ("2026-11-28T03:12:00.123", "timestamp has no time zone"),
    ],
)
def test_timestamp_refusals_say_what_is_wrong(value: str, detail: str) -> None:
    with pytest.raises(protocol.EnvelopeError) as caught:
        protocol.parse_timestamp_ms(value)
    assert str(caught.value) == detail


def test_sub_millisecond_digits_are_dropped_to_whole_milliseconds() -> None:
    parsed = protocol.parse_timestamp_ms("2026-11-28T03:12:00.123999Z")
    assert parsed == protocol.parse_timestamp_ms("2026-11-28T03:12:00.123Z") and type(parsed) is int


def test_timestamps_are_written_in_utc_whatever_the_hosts_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        moment = datetime(2026, 11, 28, 3, 12, 0, 123_000, tzinfo=UTC)
        assert protocol.format_timestamp(moment) == "2026-11-28T03:12:00.123Z"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_decode_accepts_text_and_bytes() -> None:
    encoded = protocol.encode(signed(REQUEST))
    assert protocol.decode(encoded) == protocol.decode(encoded.decode("utf-8")) == signed(REQUEST)


# -- topics and terminal ids -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["requests", "events", "status"])
def test_topic_round_trip(kind: str) -> None:
    topic = protocol.topic_for("PAX-1850320198", kind)
    assert topic == f"nepting/v1/terminals/PAX-1850320198/{kind}"
    assert protocol.parse_topic(topic) == ("PAX-1850320198", kind)


@pytest.mark.parametrize(
    "topic",
    [
        "nepting/v1/terminals/PAX-1/other",
        "nepting/v2/terminals/PAX-1/events",
        "nepting/v1/terminals//events",
        "nepting/v1/terminals/PAX/1/events",
        "nepting/v1/terminals/PAX-1/events/extra",
        "/nepting/v1/terminals/PAX-1/events",
        "",
    ],
)
def test_other_topics_are_refused(topic: str) -> None:
    with pytest.raises(protocol.EnvelopeError) as caught:
        protocol.parse_topic(topic)
    assert caught.value.reason == "bad_topic"
    assert str(caught.value) == f"not a terminal topic: {topic!r}"


def test_terminal_id_is_the_upper_cased_manufacturer_and_the_serial() -> None:
    assert protocol.terminal_id_for("pax", "1850320198") == "PAX-1850320198"
    assert protocol.terminal_id_for("Ingenico", "aB1") == "INGENICO-aB1"


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("PAX-1850320198", True),
        ("PAX-aB1", True),
        ("pax-1", False),
        ("PAX1850320198", False),
        ("PAX-18-50", False),
        ("-1", False),
        ("X" * 33 + "-1", False),
        ("PAX-" + "1" * 65, False),
    ],
)
def test_terminal_id_format(value: str, valid: bool) -> None:
    assert protocol.is_terminal_id(value) is valid


# -- timestamps -----------------------------------------------------------------------------------------


def test_timestamps_are_rfc3339_utc_with_milliseconds_and_z() -> None:
    moment = datetime(2026, 11, 28, 3, 12, 0, 123_999, tzinfo=UTC)
    assert protocol.format_timestamp(moment) == "2026-11-28T03:12:00.123Z"
    assert protocol.format_timestamp(moment.replace(microsecond=0)) == "2026-11-28T03:12:00.000Z"


def test_timestamps_of_other_zones_are_written_in_utc() -> None:
    paris = timezone(timedelta(hours=1))
    assert (
        protocol.format_timestamp(datetime(2026, 11, 28, 4, 12, 0, 5_000, tzinfo=paris)) == "2026-11-28T03:12:00.005Z"
    )


def test_timestamp_from_epoch_milliseconds() -> None:
    assert protocol.timestamp_from_ms(0) == "1970-01-01T00:00:00.000Z"
    assert protocol.timestamp_from_ms(1_795_835_520_123) == "2026-11-28T03:12:00.123Z"


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=4_102_444_800_000))
def test_timestamp_milliseconds_round_trip_exactly(epoch_ms: int) -> None:
    assert protocol.parse_timestamp_ms(protocol.timestamp_from_ms(epoch_ms)) == epoch_ms


def test_parse_timestamp_accepts_offsets() -> None:
    assert protocol.parse_timestamp_ms("2026-11-28T04:12:00.123+01:00") == 1_795_835_520_123


@pytest.mark.parametrize("value", ["2026-11-28T03:12:00.123", "yesterday", "", "2026-13-01T00:00:00Z"])
def test_parse_timestamp_refuses_junk_and_zoneless_times(value: str) -> None:
    with pytest.raises(protocol.EnvelopeError) as caught:
        protocol.parse_timestamp_ms(value)
    assert caught.value.reason == "bad_timestamp"


def test_request_ids_are_unique_hex() -> None:
    ids = {protocol.new_request_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


# -- jsonutil ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"unit_price":8.99}',
        '{"unit_price":8.990}',
        '{"a":[0.01,-12.50,100,0]}',
        '{"big":12345678901234567890.123456789}',
        '{"s":"caf\\u00e9","b":true,"n":null,"f":false}',
    ],
)
def test_decimals_round_trip_verbatim(text: str) -> None:
    assert jsonutil.dumps(jsonutil.loads(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-(10**9), max_value=10**9))
def test_any_finite_decimal_survives_a_round_trip_with_its_value(value: Decimal) -> None:
    back = jsonutil.loads(jsonutil.dumps({"x": value}))["x"]
    assert back == value and not isinstance(back, float)


def test_fractions_are_read_as_decimals_and_integers_as_ints() -> None:
    parsed = jsonutil.loads('{"p":8.99,"q":3,"e":1e2}')
    assert parsed["p"] == Decimal("8.99") and isinstance(parsed["p"], Decimal)
    assert parsed["q"] == 3 and type(parsed["q"]) is int
    assert parsed["e"] == Decimal(100) and isinstance(parsed["e"], Decimal)


def test_integral_decimals_are_written_as_integers() -> None:
    assert jsonutil.dumps([Decimal("100"), Decimal("1E+2"), Decimal("-7")]) == "[100,100,-7]"


@pytest.mark.parametrize("text", ["NaN", '{"x":NaN}', '{"x":Infinity}', '{"x":-Infinity}'])
def test_nan_and_infinity_are_refused_on_read(text: str) -> None:
    with pytest.raises(ValueError):
        jsonutil.loads(text)


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_non_finite_decimals_are_refused_on_write(value: Decimal) -> None:
    with pytest.raises(ValueError):
        jsonutil.dumps({"x": value})


@pytest.mark.parametrize("value", [8.99, {"x": 1.0}, [0.5]])
def test_floats_are_refused_on_write(value: Any) -> None:
    with pytest.raises(TypeError):
        jsonutil.dumps(value)


def test_unknown_types_are_refused_on_write() -> None:
    with pytest.raises(TypeError):
        jsonutil.dumps({"when": datetime(2026, 1, 1, tzinfo=UTC)})


def test_booleans_stay_booleans_and_tuples_become_arrays() -> None:
    assert jsonutil.dumps({"t": True, "f": False, "l": (1, "a")}) == '{"t":true,"f":false,"l":[1,"a"]}'


# -- card data --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pan",
    [
        "497010******0001",
        "************0001",
        "497010XXXXXX0001",
        "4970##########01",
        "497010**0001",
        "497010" + "*" * 9 + "0001",
    ],
)
def test_masked_pans_show_at_most_the_first_6_and_last_4_digits(pan: str) -> None:
    assert is_masked_pan(pan)


@pytest.mark.parametrize(
    "pan",
    [
        "4970101234560001",
        "4970101*****0001",
        "497010******00012",
        "497010*****10001",
        "497010 ****** 0001",
        "497010**001",
        "497010" + "*" * 10 + "0001",
        "ABCDEF******0001",
        "٤٩٧٠١٠******0001",
        "497010******⁰⁰⁰¹",
        "",
        None,
        4970101234560001,
    ],
    ids=[
        "full",
        "7-leading",
        "5-trailing",
        "digit-in-middle",
        "spaces",
        "too-short",
        "too-long",
        "letters",
        "arabic-indic-digits",
        "superscript-digits",
        "empty",
        "null",
        "int",
    ],
)
def test_anything_that_may_show_more_is_not_a_masked_pan(pan: Any) -> None:
    assert not is_masked_pan(pan)


def test_clean_result_keeps_only_the_contract_fields_and_drops_nulls() -> None:
    body = {field: f"v-{field}" for field in RESULT_FIELDS}
    body.update(masked_pan="497010******0001", authorized_online=False, error_code=None, pin="1234", cvv="123")
    cleaned = clean_result(body)
    assert set(cleaned) == set(RESULT_FIELDS) - {"error_code"}
    assert cleaned["authorized_online"] is False and cleaned["masked_pan"] == "497010******0001"


def test_clean_result_drops_an_unmasked_pan_and_says_so() -> None:
    cleaned = clean_result({"payment_status": "Success", "masked_pan": "4970101234560001"})
    assert cleaned == {"payment_status": "Success", "masked_pan_refused": True}
    assert "4970101234560001" not in repr(cleaned)
