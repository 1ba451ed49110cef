"""SQS: the queues between the Console's handlers, and what the local pollers and admin need of them.

Bodies are JSON written by :mod:`chalicelib.jsonutil`, so an amount never turns into a float.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from chalicelib import jsonutil
from chalicelib.adapters.aws import client
from chalicelib.config import Settings

# SQS refuses a longer DelaySeconds; a longer wait is several hops.
MAX_DELAY_S = 900

# setting -> queue name (the local stack and the tests create them; infra/ declares them on AWS).
QUEUES = {
    "ipn_queue_url": "ipn",
    "notifications_queue_url": "merchant-notifications",
    "notifications_dlq_url": "merchant-notifications-dlq",
}


class SqsQueue:
    """One queue, sent to by URL."""

    def __init__(self, url: str) -> None:
        self.url = url

    def send(self, body: dict[str, Any], delay_s: int = 0) -> None:
        self.send_raw(jsonutil.dumps(body), delay_s)

    def send_raw(self, text: str, delay_s: int = 0) -> None:
        if not self.url:
            raise RuntimeError("queue URL not configured")
        client("sqs").send_message(QueueUrl=self.url, MessageBody=text, DelaySeconds=max(0, min(delay_s, MAX_DELAY_S)))


def create_queues(settings: Settings) -> Settings:
    """Create the Console's queues (moto, local stack) and return settings that name their URLs."""
    sqs = client("sqs")
    urls = {setting: sqs.create_queue(QueueName=name)["QueueUrl"] for setting, name in QUEUES.items()}
    return replace(settings, **urls)


def receive(url: str, max_messages: int = 10, wait_s: int = 0, visibility_s: int = 30) -> list[dict[str, Any]]:
    found = client("sqs").receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=max_messages,
        WaitTimeSeconds=wait_s,
        VisibilityTimeout=visibility_s,
        MessageSystemAttributeNames=["All"],
        MessageAttributeNames=["All"],
    )
    messages: list[dict[str, Any]] = found.get("Messages", [])
    return messages


def delete(url: str, receipt_handle: str) -> None:
    client("sqs").delete_message(QueueUrl=url, ReceiptHandle=receipt_handle)


def retry_later(url: str, receipt_handle: str, after_s: int) -> None:
    """Make a message that failed visible again after ``after_s`` (what Lambda's retry waits for)."""
    client("sqs").change_message_visibility(QueueUrl=url, ReceiptHandle=receipt_handle, VisibilityTimeout=after_s)


def queue_arn(url: str) -> str:
    attributes = client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])
