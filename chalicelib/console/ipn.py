"""IPN reception (docs/ipn.md): verify, validate, store durably, queue for the merge, answer 200.

Every refusal is the contract's error format, counted as ``IpnRefused`` with its reason, and
happens before anything is stored. The merge itself runs in ``ipn_ingest`` (``console.ingest``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from chalicelib import jsonutil
from chalicelib.console.ports import IpnInbox
from chalicelib.console.schemas import IpnAccepted, parse_ipn
from chalicelib.errors import ApiError
from chalicelib.exceptions import JsonLimitError
from chalicelib.http import json_limit_error, malformed_json
from chalicelib.merchants.ports import MerchantReader
from chalicelib.observability import count, log_event
from chalicelib.ports import Clock, MessageQueue


@dataclass
class IpnDeps:
    inbox: IpnInbox
    merchants: MerchantReader
    queue: MessageQueue
    secret: Callable[[], str]
    clock: Clock
    freshness_s: int = 300


def ipn_signature(secret: str, timestamp: str, body: bytes) -> str:
    """Lowercase hex HMAC-SHA256(secret, timestamp + "." + raw body): what the gateway sends."""
    return hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def _refuse(reason: str, error: ApiError) -> ApiError:
    count("IpnRefused", reason=reason)
    log_event("ipn refused", level="warning", reason=reason, code=error.code)
    return error


def _unauthorized(reason: str, message: str) -> ApiError:
    return _refuse(reason, ApiError(401, f"ipn.{reason}", message))


def verify(deps: IpnDeps, headers: Mapping[str, str], body: bytes) -> None:
    timestamp = (headers.get("x-nepting-timestamp") or "").strip()
    given = (headers.get("x-nepting-signature") or "").strip()
    if not timestamp or not given:
        raise _unauthorized("signature_missing", "X-Nepting-Timestamp and X-Nepting-Signature are required")
    # isascii(): str.isdigit() also takes other scripts' digits, which int() reads or chokes on.
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        raise _unauthorized("timestamp_invalid", "X-Nepting-Timestamp must be Unix seconds")
    if abs(deps.clock.now_ms() // 1000 - int(timestamp)) > deps.freshness_s:
        # A captured IPN cannot be replayed later: the signature covers the timestamp.
        raise _unauthorized("timestamp_out_of_window", "X-Nepting-Timestamp is more than 5 minutes away")
    expected = ipn_signature(deps.secret(), timestamp, body)
    if not hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8")):
        raise _unauthorized("signature_invalid", "X-Nepting-Signature does not match")


def receive_ipn(deps: IpnDeps, headers: Mapping[str, str], body: bytes) -> IpnAccepted:
    """The route's whole job; returns the 200 body."""
    verify(deps, headers, body)
    try:
        parsed = jsonutil.loads(body)
    except JsonLimitError as exc:
        raise _refuse(exc.reason, json_limit_error(exc)) from None
    except (ValueError, UnicodeDecodeError):
        raise _refuse("malformed", malformed_json()) from None
    try:
        ipn = parse_ipn(parsed)
    except ApiError as error:
        raise _refuse("invalid", error) from None
    if deps.merchants.get_merchant(ipn.merchant_id) is None:
        raise _refuse(
            "unknown_merchant", ApiError(422, "ipn.unknown_merchant", "merchant_id is not a merchant of this platform")
        )
    reference = ipn.transaction_reference
    body_json = jsonutil.dumps(ipn.model_dump(mode="python"))
    digest = hashlib.sha256(body_json.encode("utf-8")).hexdigest()
    outcome: Literal["stored", "duplicate"]
    if deps.inbox.store(reference, ipn.merchant_id, body_json, digest, deps.clock.now_ms()):
        count("IpnStored")
        outcome = "stored"
    else:
        stored = deps.inbox.get(reference) or {}
        if stored.get("body_sha256") != digest:
            count("IpnDuplicate", reason="different_body")
            log_event(
                "ipn repeated with a different body; first kept", level="warning", transaction_reference=reference
            )
        else:
            count("IpnDuplicate", reason="same_body")
        if stored.get("merged_at_ms") is not None:
            return IpnAccepted(status="duplicate", transaction_reference=reference)
        # Stored but never merged (we failed between storing and queueing): queue it again.
        outcome = "duplicate"
    deps.queue.send({"transaction_reference": reference})
    log_event("ipn accepted", transaction_reference=reference, order_id=ipn.order_id, terminal_id=ipn.terminal_id)
    return IpnAccepted(status=outcome, transaction_reference=reference)
