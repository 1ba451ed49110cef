"""Lambda event shapes: DynamoDB stream batches and SQS batches, handed to the handlers as plain values.

Both answer ``{"batchItemFailures": [...]}`` (ReportBatchItemFailures): only the records that
failed come back, and a failure is logged with its traceback, never swallowed.

A record that cannot be read as the message it should be (not JSON, past the parsing limits, not
an object, a field missing or of the wrong type) is refused: logged with its reason and counted as
``RecordsRefused``, then let go, since no retry could ever make it readable. Anything else a handler
raises is a failure and the record comes back (then, for queues, lands in the dead-letter queue).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chalicelib import jsonutil
from chalicelib.adapters.aws import from_item
from chalicelib.exceptions import JsonLimitError, RecordRefused
from chalicelib.observability import count, log_event, logger

BatchResult = dict[str, list[dict[str, str]]]


def _refuse(source: str, exc: RecordRefused, record_id: Any) -> None:
    count("RecordsRefused", source=source, reason=exc.reason)
    log_event("record refused", level="warning", source=source, reason=exc.reason, detail=str(exc)[:200], id=record_id)


def _records(event: Any) -> list[Any]:
    records = event.get("Records") if isinstance(event, dict) else None
    return records if isinstance(records, list) else []


def stream_batch(event: dict[str, Any], handle: Callable[[dict[str, Any]], None], source: str) -> BatchResult:
    """Records of one shard, in order. At the first failure the rest are left for the retry, which
    restarts from that record: later records of the same order must not overtake it."""
    for record in _records(event):
        try:
            sequence = str(record["dynamodb"]["SequenceNumber"])
        except (KeyError, TypeError):
            _refuse(source, RecordRefused("not_a_stream_record"), None)
            continue
        try:
            handle(record)
        except RecordRefused as exc:
            _refuse(source, exc, record.get("eventID"))
        except Exception:
            count("BatchItemFailures", source=source)
            logger.exception("stream record failed", extra={"source": source, "event_id": record.get("eventID")})
            return {"batchItemFailures": [{"itemIdentifier": sequence}]}
    return {"batchItemFailures": []}


def message_body(record: Any) -> dict[str, Any]:
    """An SQS record's body as a JSON object read under the parsing limits, or ``RecordRefused``."""
    body = record.get("body") if isinstance(record, dict) else None
    if not isinstance(body, str):
        raise RecordRefused("no_body", "the record has no text body")
    try:
        value = jsonutil.loads(body)
    except JsonLimitError as exc:
        raise RecordRefused(exc.reason, f"{exc.path}: {exc}") from None
    except (ValueError, UnicodeError):
        raise RecordRefused("malformed", "the body is not JSON") from None
    if not isinstance(value, dict):
        raise RecordRefused("not_an_object", "the body is not a JSON object")
    return value


def text_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise RecordRefused("bad_field", f"{name} missing or not a string")
    return value


def sqs_batch(event: dict[str, Any], handle: Callable[[dict[str, Any]], Any], source: str) -> BatchResult:
    """Each message on its own: a failed one stays on the queue and comes back, the others are done."""
    failures = []
    for record in _records(event):
        message_id = record.get("messageId") if isinstance(record, dict) else None
        try:
            handle(message_body(record))
        except RecordRefused as exc:
            _refuse(source, exc, message_id)
        except Exception:
            count("BatchItemFailures", source=source)
            logger.exception("queue message failed", extra={"source": source, "message_id": message_id})
            if isinstance(message_id, str):
                failures.append({"itemIdentifier": message_id})
    return {"batchItemFailures": failures}


def new_image(record: dict[str, Any]) -> dict[str, Any] | None:
    """A stream record's item after an insert or a change, as plain values; None for a removal."""
    if record.get("eventName") not in ("INSERT", "MODIFY"):
        return None
    image = record.get("dynamodb", {}).get("NewImage")
    if not image:
        return None
    try:
        return from_item(image)
    except Exception as exc:  # the deserializer's errors are of many types, all meaning "not an item"
        raise RecordRefused("bad_image", type(exc).__name__) from None
