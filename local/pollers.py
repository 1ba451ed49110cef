"""Stand-ins for AWS's event source mappings: stream and queue pollers for the local stack.

Two sources, one behaviour: the embedded store's outbox and queue tables (``STORE=sqlite``, the
default), or DynamoDB Streams and SQS in moto (``STORE=moto``).

Each poller feeds the very function ``app.py`` registers, with the event shape Lambda would give
it, and honours ``batchItemFailures`` as Lambda does: a failed stream record is retried (with the
records after it) before the shard moves on; a failed SQS message becomes visible again after a
short wait while the others are deleted. Delays (``DelaySeconds``) are the queue's own.

A handler that raises instead of answering is a bug: its traceback is logged and kept in
``crash`` (the local stack stops on it), and the batch is retried, as Lambda would.

    stop = threading.Event()
    pollers = start_pollers(settings, stop)   # started threads
    ...
    stop.set(); [p.join() for p in pollers]
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from chalicelib.adapters import sqs
from chalicelib.adapters.aws import client, to_value
from chalicelib.adapters.sqlite.db import Database
from chalicelib.adapters.sqlite.queues import Message as SqliteMessage
from chalicelib.adapters.sqlite.queues import Outbox, SqliteQueue, StreamRecord
from chalicelib.adapters.sqlite.store import SqliteStore
from chalicelib.config import Settings
from chalicelib.observability import log_event, logger

Handler = Callable[[dict[str, Any], Any], Any]
# Lambda waits for the visibility timeout before a failed message comes back; locally, briefly.
RETRY_AFTER_S = 1
# An idle poller asks again after this long: each empty poll costs moto a few ms of CPU, and the
# Console side has a second or two to show a transaction, not milliseconds.
IDLE_S = 0.2
# An idle poller woken by a new message waits this long for more before reading, so that under
# load it hands over batches (one receive and one settle per batch, not per message), as a Lambda
# event source's batching window does. The Console side has seconds to show a transaction.
BATCHING_WINDOW_S = 0.1
# Shards change rarely (never, in moto): list them again only this often.
SHARD_DISCOVERY_S = 10.0
# DynamoDB numbers hold 38 digits: an integer below this is written as its digits alone.
_N_LIMIT = 10**38


class Poller(threading.Thread, ABC):
    """A daemon thread calling ``poll_once`` until ``stop_event`` is set; errors never end it."""

    def __init__(self, name: str, handler: Handler, stop_event: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.handler = handler
        self.stop_event = stop_event
        self.crash: str | None = None
        self.batches = 0
        self.idles = 0  # polls that found nothing
        self.failed_items = 0

    def run(self) -> None:
        backoff = IDLE_S
        while not self.stop_event.is_set():
            seen = self.activity()
            try:
                worked = self.poll_once()
                backoff = IDLE_S
            except Exception:
                # Reaching the store failed, or the handler raised: log it whole, then try again.
                logger.exception("poller error", extra={"poller": self.name})
                worked, backoff = False, min(backoff * 2, 2.0)
            if not worked:
                self.idles += 1
                self.idle(seen, backoff)

    def activity(self) -> int:
        """A marker of the source's activity, taken before each poll (see ``idle``)."""
        return 0

    def idle(self, seen: int, timeout_s: float) -> None:
        """Nothing to do: wait before polling again."""
        self.stop_event.wait(timeout_s)

    @abstractmethod
    def poll_once(self) -> bool:
        """Read the source once and hand what it holds to the handler; False when it held nothing."""

    def call(self, event: dict[str, Any]) -> set[str]:
        """Run the handler; the identifiers it reports failed (all of them if it raised)."""
        self.batches += 1
        try:
            result = self.handler(event, None)
        except Exception:
            self.crash = traceback.format_exc()
            logger.exception("handler raised; batch will be retried", extra={"poller": self.name})
            raise
        failed = {str(item["itemIdentifier"]) for item in (result or {}).get("batchItemFailures", [])}
        self.failed_items += len(failed)
        return failed


class StreamPoller(Poller):
    """Reads every shard of a table's stream from its start, like a TRIM_HORIZON mapping."""

    def __init__(self, table: str, handler: Handler, stop_event: threading.Event, batch_size: int = 100) -> None:
        super().__init__(f"stream:{table}", handler, stop_event)
        self.table = table
        self.batch_size = batch_size
        self.stream_arn: str | None = None
        self.next_discovery = 0.0
        self.iterators: dict[str, str | None] = {}
        # Records of a failed batch, from the first failed one: delivered again before moving on.
        self.retry: dict[str, list[dict[str, Any]]] = {}

    def _discover(self) -> None:
        now = time.monotonic()
        if self.stream_arn is not None and now < self.next_discovery:
            return
        self.next_discovery = now + SHARD_DISCOVERY_S
        if self.stream_arn is None:
            self.stream_arn = client("dynamodb").describe_table(TableName=self.table)["Table"]["LatestStreamArn"]
        streams = client("dynamodbstreams")
        shards = streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]["Shards"]
        for shard in shards:
            if shard["ShardId"] not in self.iterators:
                self.iterators[shard["ShardId"]] = streams.get_shard_iterator(
                    StreamArn=self.stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]

    def poll_once(self) -> bool:
        self._discover()
        worked = False
        for shard_id, iterator in list(self.iterators.items()):
            records = self.retry.pop(shard_id, None)
            if records is None:
                if iterator is None:
                    continue
                page = client("dynamodbstreams").get_records(ShardIterator=iterator, Limit=self.batch_size)
                self.iterators[shard_id] = page.get("NextShardIterator")
                records = page.get("Records", [])
            if not records:
                continue
            worked = True
            try:
                failed = self.call({"Records": [self._lambda_record(record) for record in records]})
            except Exception:
                self.retry[shard_id] = records
                raise
            if failed:
                first = min(int(sequence) for sequence in failed)
                self.retry[shard_id] = [r for r in records if int(r["dynamodb"]["SequenceNumber"]) >= first]
                self.stop_event.wait(RETRY_AFTER_S)
        return worked

    def _lambda_record(self, record: dict[str, Any]) -> dict[str, Any]:
        change = dict(record["dynamodb"])
        created = change.get("ApproximateCreationDateTime")
        if created is not None and hasattr(created, "timestamp"):
            change["ApproximateCreationDateTime"] = int(created.timestamp())
        return {
            "eventID": record.get("eventID"),
            "eventName": record.get("eventName"),
            "eventVersion": record.get("eventVersion", "1.1"),
            "eventSource": "aws:dynamodb",
            "awsRegion": record.get("awsRegion") or os.environ.get("AWS_DEFAULT_REGION", ""),
            "dynamodb": change,
            "eventSourceARN": self.stream_arn,
        }


class QueuePoller(Poller):
    """Receives up to ``batch_size`` messages and hands them over as one SQS event."""

    def __init__(
        self, queue_url: str, handler: Handler, stop_event: threading.Event, batch_size: int = 10, wait_s: int = 1
    ) -> None:
        super().__init__(f"sqs:{queue_url.rsplit('/', 1)[-1]}", handler, stop_event)
        self.queue_url = queue_url
        self.batch_size = batch_size
        self.wait_s = wait_s
        self._arn: str | None = None

    def poll_once(self) -> bool:
        messages = sqs.receive(self.queue_url, self.batch_size, self.wait_s, visibility_s=30)
        if not messages:
            return False
        if self._arn is None:
            self._arn = sqs.queue_arn(self.queue_url)
        records = [self._lambda_record(message) for message in messages]
        try:
            failed = self.call({"Records": records})
        except Exception:
            failed = {record["messageId"] for record in records}
            raise
        finally:
            for message in messages:
                if message["MessageId"] in failed:
                    sqs.retry_later(self.queue_url, message["ReceiptHandle"], RETRY_AFTER_S)
                else:
                    sqs.delete(self.queue_url, message["ReceiptHandle"])
        return True

    def _lambda_record(self, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": message.get("MessageAttributes", {}),
            "md5OfBody": message.get("MD5OfBody"),
            "eventSource": "aws:sqs",
            "eventSourceARN": self._arn,
            "awsRegion": os.environ.get("AWS_DEFAULT_REGION", ""),
        }


class _SqlitePoller(Poller):
    """Polls the embedded store, and is woken at once when something is queued or streamed there."""

    db: Database
    channel: str

    def activity(self) -> int:
        return self.db.generation(self.channel)

    batching_window_s = BATCHING_WINDOW_S

    def idle(self, seen: int, timeout_s: float) -> None:
        # A delayed or retried message becomes visible by the clock alone: poll again after timeout_s
        # anyway (a SELECT on an index, microseconds).
        if self.db.wait_for_activity(self.channel, seen, timeout_s) != seen and self.batching_window_s:
            # Woken by a new message: let the batch gather, as Lambda's batching window does.
            self.stop_event.wait(self.batching_window_s)


class OutboxPoller(_SqlitePoller):
    """Reads an outbox stream in order from its saved position, like a TRIM_HORIZON stream mapping:
    a failed record is retried (with the records after it) before the stream moves on."""

    def __init__(
        self, outbox: Outbox, table: str, handler: Handler, stop_event: threading.Event, batch_size: int = 100
    ) -> None:
        super().__init__(f"stream:{table}", handler, stop_event)
        self.outbox = outbox
        self.db = outbox.db
        self.channel = outbox.stream
        self.table = table
        self.batch_size = batch_size
        self.position: int | None = None
        region = os.environ.get("AWS_DEFAULT_REGION", "local")
        self.stream_arn = f"arn:aws:dynamodb:{region}:000000000000:table/{table}/stream/local"
        # What each record says (read once: the environment does not change under a running stack).
        self.aws_region = os.environ.get("AWS_DEFAULT_REGION", "")

    def poll_once(self) -> bool:
        if self.position is None:
            self.position = self.outbox.position()
        records = self.outbox.read(self.position, self.batch_size)
        if not records:
            return False
        failed = self.call({"Records": [self._lambda_record(record) for record in records]})
        if failed:
            first = min(int(sequence) for sequence in failed)
            done = [r.sequence for r in records if r.sequence < first]
            if done:
                self._advance(done[-1])
            self.stop_event.wait(RETRY_AFTER_S)
        else:
            self._advance(records[-1].sequence)
        return True

    def _advance(self, sequence: int) -> None:
        self.outbox.advance(sequence)
        self.position = sequence

    def _lambda_record(self, record: StreamRecord) -> dict[str, Any]:
        image = stream_item(record.image)
        return {
            "eventID": f"{self.outbox.stream}-{record.sequence}",
            "eventName": record.event_name,
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": self.aws_region,
            "dynamodb": {
                "ApproximateCreationDateTime": record.created_at_ms // 1000,
                "Keys": {"pk": image["pk"]} if "pk" in image else {},
                "NewImage": image,
                "SequenceNumber": str(record.sequence),
                "StreamViewType": "NEW_AND_OLD_IMAGES",
            },
            "eventSourceARN": self.stream_arn,
        }


def stream_item(values: dict[str, Any]) -> dict[str, Any]:
    """``to_item(values)``: an order head's strings and integers written here, the rest by boto3's
    serializer (which takes a few microseconds for each value of each record)."""
    item: dict[str, Any] = {}
    for key, value in values.items():
        kind = type(value)
        if kind is str:
            item[key] = {"S": value}
        elif kind is int and -_N_LIMIT < value < _N_LIMIT:
            item[key] = {"N": str(value)}
        elif value is not None:
            item[key] = to_value(value)
    return item


class SqliteQueuePoller(_SqlitePoller):
    """Receives up to ``batch_size`` messages of a queue table and hands them over as one SQS event."""

    def __init__(self, queue: SqliteQueue, handler: Handler, stop_event: threading.Event, batch_size: int = 10) -> None:
        super().__init__(f"sqs:{queue.name}", handler, stop_event)
        self.queue = queue
        self.db = queue.db
        self.channel = queue.name
        self.batch_size = batch_size
        region = os.environ.get("AWS_DEFAULT_REGION", "local")
        self.arn = f"arn:aws:sqs:{region}:000000000000:{queue.name}"
        self.aws_region = os.environ.get("AWS_DEFAULT_REGION", "")

    def poll_once(self) -> bool:
        messages = self.queue.receive(self.batch_size, visibility_s=30)
        if not messages:
            return False
        failed = {message.message_id for message in messages}
        try:
            failed = self.call({"Records": [self._lambda_record(message) for message in messages]})
        finally:
            self.queue.settle(
                [m.receipt for m in messages if m.message_id not in failed],
                [m.receipt for m in messages if m.message_id in failed],
                RETRY_AFTER_S,
            )
        return True

    def _lambda_record(self, message: SqliteMessage) -> dict[str, Any]:
        return {
            "messageId": message.message_id,
            "receiptHandle": message.receipt,
            "body": message.body,
            "attributes": {
                "ApproximateReceiveCount": str(message.receive_count),
                "SentTimestamp": str(message.sent_at_ms),
            },
            "messageAttributes": {},
            "md5OfBody": hashlib.md5(message.body.encode("utf-8")).hexdigest(),  # noqa: S324 (SQS's own checksum)
            "eventSource": "aws:sqs",
            "eventSourceARN": self.arn,
            "awsRegion": self.aws_region,
        }


def start_sqlite_pollers(settings: Settings, store: SqliteStore, stop_event: threading.Event) -> list[Poller]:
    """The same three event sources as ``start_pollers``, read from the embedded store."""
    import app as chalice_app

    pollers: list[Poller] = [
        OutboxPoller(
            store.payments_stream, settings.payments_table, chalice_app.order_notifications_handler, stop_event
        ),
        SqliteQueuePoller(store.ipn_queue, chalice_app.ipn_ingest_handler, stop_event),
        SqliteQueuePoller(store.notifications, chalice_app.merchant_notifier_handler, stop_event),
    ]
    for poller in pollers:
        poller.start()
    log_event("pollers started", pollers=[poller.name for poller in pollers])
    return pollers


def start_pollers(settings: Settings, stop_event: threading.Event) -> list[Poller]:
    """Start the event sources of the Console side: what CDK wires on AWS.

    The payments table's stream feeds ``order_notifications``; the ``ipn`` queue feeds
    ``ipn_ingest``; the merchant-notifications queue feeds ``merchant_notifier``.
    """
    import app as chalice_app

    missing = [name for name in ("ipn_queue_url", "notifications_queue_url") if not getattr(settings, name)]
    if missing:
        raise ValueError(f"queue URLs not configured: {', '.join(name.upper() for name in missing)}")
    pollers: list[Poller] = [
        StreamPoller(settings.payments_table, chalice_app.order_notifications_handler, stop_event),
        QueuePoller(settings.ipn_queue_url, chalice_app.ipn_ingest_handler, stop_event),
        QueuePoller(settings.notifications_queue_url, chalice_app.merchant_notifier_handler, stop_event),
    ]
    for poller in pollers:
        poller.start()
    log_event("pollers started", pollers=[poller.name for poller in pollers])
    return pollers
