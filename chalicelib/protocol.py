"""The signed JSON envelope of the terminal protocol (docs/terminal-protocol.md), the one signer everything calls.

>>> env = make_envelope("ack", "r-1", "PAX-1", {}, "secret", sent_at="2026-11-28T03:12:00.123Z")
>>> verify_signature(env, "secret")
True
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from chalicelib import jsonutil
from chalicelib.exceptions import EnvelopeError, JsonLimitError

ENVELOPE_VERSION = 1
TOPIC_PREFIX = "nepting/v1/terminals"
_TERMINAL_ID = re.compile(r"^[A-Z0-9]{1,32}-[A-Za-z0-9]{1,64}$")
_TOPIC = re.compile(rf"^{TOPIC_PREFIX}/([^/]+)/(requests|events|status)$")


def terminal_id_for(manufacturer: str, serial_number: str) -> str:
    return f"{manufacturer.upper()}-{serial_number}"


def is_terminal_id(value: str) -> bool:
    return bool(_TERMINAL_ID.match(value))


def topic_for(terminal_id: str, kind: str) -> str:
    return f"{TOPIC_PREFIX}/{terminal_id}/{kind}"


def parse_topic(topic: str) -> tuple[str, str]:
    """``nepting/v1/terminals/PAX-1/events`` -> ``("PAX-1", "events")``."""
    match = _TOPIC.match(topic)
    if not match:
        raise EnvelopeError("bad_topic", f"not a terminal topic: {topic!r}")
    return match.group(1), match.group(2)


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds, the one timestamp format of every contract."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def timestamp_from_ms(epoch_ms: int) -> str:
    return format_timestamp(datetime.fromtimestamp(epoch_ms / 1000, tz=UTC))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def parse_timestamp_ms(value: str) -> int:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (TypeError, ValueError) as exc:
        raise EnvelopeError("bad_timestamp", f"not an RFC 3339 timestamp: {value!r}") from exc
    if moment.tzinfo is None:
        raise EnvelopeError("bad_timestamp", "timestamp has no time zone")
    # Exact integer arithmetic: float seconds × 1000 reads .179 as .178999….
    return (moment - _EPOCH) // _MILLISECOND


def _reject_floats(value: Any) -> None:
    if isinstance(value, float | Decimal):
        raise EnvelopeError("float_in_envelope", "envelopes carry integers only")
    if isinstance(value, dict):
        for item in value.values():
            _reject_floats(item)
    elif isinstance(value, list):
        for item in value:
            _reject_floats(item)


# Built once (``json.dumps`` with options builds an encoder on every call); it keeps no state between calls.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> bytes:
    """Keys sorted, no insignificant whitespace, UTF-8 unescaped, integers only."""
    _reject_floats(value)
    return _CANONICAL.encode(value).encode("utf-8")


def signature(envelope: dict[str, Any], passphrase: str) -> str:
    return _signature(canonical_json(_unsigned(envelope)), passphrase)


def _unsigned(envelope: dict[str, Any]) -> dict[str, Any]:
    return {key: val for key, val in envelope.items() if key != "sig"}


def _signature(canonical: bytes, passphrase: str) -> str:
    return hmac.new(passphrase.encode("utf-8"), canonical, hashlib.sha256).hexdigest()


def verify_signature(envelope: dict[str, Any], passphrase: str) -> bool:
    given = envelope.get("sig")
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given, signature(envelope, passphrase))


def verify_decoded_signature(envelope: dict[str, Any], passphrase: str) -> bool:
    """:func:`verify_signature` of an envelope :func:`decode` returned: decode refused any number
    that is not an integer, so the canonical form is written without looking for one again."""
    given = envelope.get("sig")
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given, _signature(_CANONICAL.encode(_unsigned(envelope)).encode("utf-8"), passphrase))


def new_request_id() -> str:
    return uuid.uuid4().hex


def make_envelope(
    message_type: str,
    request_id: str,
    terminal_id: str,
    body: dict[str, Any],
    passphrase: str,
    sent_at: str | None = None,
) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "type": message_type,
        "request_id": request_id,
        "terminal_id": terminal_id,
        "sent_at": sent_at or format_timestamp(datetime.now(UTC)),
        "body": body,
    }
    envelope["sig"] = signature(envelope, passphrase)
    return envelope


def encode(envelope: dict[str, Any]) -> bytes:
    return canonical_json(envelope)


def decode(payload: bytes | str) -> dict[str, Any]:
    """Parse one envelope; structural checks only (the signature needs the terminal's passphrase)."""
    try:
        value, fractions = jsonutil.loads_noting_fractions(payload)
    except JsonLimitError as exc:
        raise EnvelopeError(exc.reason, f"payload past a parsing limit at {exc.path!r}: {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvelopeError("malformed", "payload is not JSON") from exc
    if not isinstance(value, dict):
        raise EnvelopeError("malformed", "envelope is not a JSON object")
    # ``true == 1`` in Python: the version must be the JSON integer itself.
    if type(value.get("v")) is not int or value["v"] != ENVELOPE_VERSION:
        raise EnvelopeError("bad_version", f"unsupported envelope version {value.get('v')!r}")
    for key in ("type", "request_id", "terminal_id", "sent_at", "sig"):
        if not isinstance(value.get(key), str):
            raise EnvelopeError("malformed", f"envelope field {key!r} missing or not a string")
    if not isinstance(value.get("body"), dict):
        raise EnvelopeError("malformed", "envelope body is not an object")
    # Every Decimal in the value is a number the parser read with a fraction or an exponent: without
    # one there is nothing to look for (with one, the value is searched: a repeated key may have
    # replaced it, and the envelope stands as it did).
    if fractions:
        _reject_floats(value)
    return value
