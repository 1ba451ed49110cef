"""Lambda event shapes: DynamoDB stream batches and SQS batches, handed to the handlers as plain values.

Both answer ``{"batchItemFailures": [...]}`` (ReportBatchItemFailures): only the records that
failed come back, and a failure is logged with its traceback, never swallowed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chalicelib import jsonutil
from chalicelib.adapters.aws import from_item
from chalicelib.observability import count, logger

BatchResult = dict[str, list[dict[str, str]]]


def stream_batch(event: dict[str, Any], handle: Callable[[dict[str, Any]], None], source: str) -> BatchResult:
    """Records of one shard, in order. At the first failure the rest are left for the retry, which
    restarts from that record: later records of the same order must not overtake it."""
    for record in event.get("Records", []):
        try:
            handle(record)
        except Exception:
            count("BatchItemFailures", source=source)
            logger.exception("stream record failed", extra={"source": source, "event_id": record.get("eventID")})
            return {"batchItemFailures": [{"itemIdentifier": record["dynamodb"]["SequenceNumber"]}]}
    return {"batchItemFailures": []}


def sqs_batch(event: dict[str, Any], handle: Callable[[dict[str, Any]], Any], source: str) -> BatchResult:
    """Each message on its own: a failed one stays on the queue and comes back, the others are done."""
    failures = []
    for record in event.get("Records", []):
        try:
            handle(jsonutil.loads(record["body"]))
        except Exception:
            count("BatchItemFailures", source=source)
            logger.exception("queue message failed", extra={"source": source, "message_id": record.get("messageId")})
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}


def new_image(record: dict[str, Any]) -> dict[str, Any] | None:
    """A stream record's item after an insert or a change, as plain values; None for a removal."""
    if record.get("eventName") not in ("INSERT", "MODIFY"):
        return None
    image = record.get("dynamodb", {}).get("NewImage")
    return from_item(image) if image else None
