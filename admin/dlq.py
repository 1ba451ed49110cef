"""``python -m admin replay-dlq --queue merchant-notifications``: parked messages back to work.

Each parked notification goes back to its main queue with a fresh 24 h of tries, and leaves the
dead-letter queue only once it is safely on the main one. Already-acknowledged statuses are
skipped by the notifier, so replaying twice sends nothing twice.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from admin.local import data_dir_of, open_local_store
from chalicelib import jsonutil
from chalicelib.adapters import sqs
from chalicelib.adapters.sqlite.queues import SqliteQueue
from chalicelib.adapters.sqlite.store import NOTIFICATIONS_DLQ, NOTIFICATIONS_QUEUE
from chalicelib.config import Settings
from chalicelib.console.notifications import replayable

# --queue -> (dead-letter queue setting, main queue setting)
QUEUE_PAIRS = {"merchant-notifications": ("notifications_dlq_url", "notifications_queue_url")}
# --queue -> (dead-letter queue, main queue) in the local stack's data directory (--data-dir)
LOCAL_QUEUE_PAIRS = {"merchant-notifications": (NOTIFICATIONS_DLQ, NOTIFICATIONS_QUEUE)}


def replay(dlq_url: str, main_url: str, limit: int | None = None) -> int:
    """Move messages from ``dlq_url`` to ``main_url``; returns how many moved."""
    main = sqs.SqsQueue(main_url)
    moved = 0
    while limit is None or moved < limit:
        batch = sqs.receive(dlq_url, max_messages=min(10, (limit - moved) if limit else 10), visibility_s=60)
        if not batch:
            return moved
        for message in batch:
            try:
                body = jsonutil.loads(message["Body"])
            except ValueError:
                body = None
            if isinstance(body, dict):
                main.send(replayable(body))
            else:
                main.send_raw(message["Body"])
            sqs.delete(dlq_url, message["ReceiptHandle"])
            moved += 1
    return moved


def replay_local(dead_letters: SqliteQueue, main: SqliteQueue, limit: int | None = None) -> int:
    """The same move between the local stack's queue tables; returns how many moved."""
    moved = 0
    while limit is None or moved < limit:
        batch = dead_letters.receive(min(10, (limit - moved) if limit else 10), visibility_s=60)
        if not batch:
            return moved
        for message in batch:
            try:
                body = jsonutil.loads(message.body)
            except ValueError:
                body = None
            if isinstance(body, dict):
                main.send(replayable(body))
            else:
                main.send_raw(message.body)
            dead_letters.delete(message.receipt)
            moved += 1
    return moved


def run(args: argparse.Namespace) -> int:
    data_dir = data_dir_of(args)
    if data_dir is not None:
        store = open_local_store(data_dir)
        dlq_name, main_name = LOCAL_QUEUE_PAIRS[args.queue]
        moved = replay_local(store.queue(dlq_name), store.queue(main_name), args.max)
        print(f"{moved} message(s) moved from {args.queue} dead-letter queue back to {args.queue}")
        return 0
    settings = Settings.from_env()
    dlq_setting, main_setting = QUEUE_PAIRS[args.queue]
    dlq_url, main_url = getattr(settings, dlq_setting), getattr(settings, main_setting)
    if not dlq_url or not main_url:
        print(
            f"error: set {dlq_setting.upper()} and {main_setting.upper()} (the queue URLs: the stack's outputs on "
            "AWS; make admin ARGS='…' sets them for the local stack)",
            file=sys.stderr,
        )
        return 2
    moved = replay(dlq_url, main_url, args.max)
    print(f"{moved} message(s) moved from {args.queue} dead-letter queue back to {args.queue}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("replay-dlq", help="move parked messages back to their queue")
    parser.add_argument("--queue", required=True, choices=sorted(QUEUE_PAIRS))
    parser.add_argument("--max", type=int, default=None, help="move at most this many")
    parser.set_defaults(func=run)
