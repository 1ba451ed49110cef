"""The one translation of DynamoDB's refused conditions into ``ConditionFailed``.

    with conditional(f"terminal {terminal_id} is already enrolled"):
        client("dynamodb").put_item(..., ConditionExpression="attribute_not_exists(terminal_id)")

A write whose refusal is an ordinary answer (a claim already held) asks ``holds`` instead:

    claimed = holds(lambda: client("dynamodb").update_item(...))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from botocore.exceptions import ClientError

from chalicelib.exceptions import ConditionFailed

# A transaction's condition failing comes back as a cancelled transaction.
_CONDITION_CODES = ("ConditionalCheckFailedException", "TransactionCanceledException")


def is_condition_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in _CONDITION_CODES


@contextmanager
def conditional(message: str) -> Iterator[None]:
    """Raise ``ConditionFailed(message)`` when the write inside is refused by its condition."""
    try:
        yield
    except ClientError as exc:
        if is_condition_failure(exc):
            raise ConditionFailed(message) from exc
        raise


def holds(write: Callable[[], object]) -> bool:
    """Run a conditional write: True when it was applied, False when its condition refused it."""
    try:
        with conditional("condition refused"):
            write()
    except ConditionFailed:
        return False
    return True
