"""SQS queues and their dead-letter queues.

Nothing that failed is dropped: every asynchronous path ends in one of the dead-letter queues
below, each watched by an alarm (observability.py) and replayable with
``python -m admin replay-dlq``.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from .functions import FUNCTIONS_BY_NAME
from .settings import DeploymentSettings

# AWS's advice for a queue that feeds Lambda: visibility timeout at least six times the
# function's timeout, so a message is not handed out again while a retried batch still runs.
VISIBILITY_FACTOR = 6
DLQ_RETENTION = Duration.days(14)


class Queues(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploymentSettings) -> None:
        super().__init__(scope, construct_id)
        self._settings = settings

        self.ipn_dlq = self._queue("IpnDlq", "ipn-dlq", retention=DLQ_RETENTION)
        self.ipn = self._queue(
            "Ipn",
            "ipn",
            visibility=self._visibility_for("ipn_ingest"),
            dead_letter=sqs.DeadLetterQueue(queue=self.ipn_dlq, max_receive_count=5),
        )
        # merchant_notifier parks a delivery here itself after 24 h of retries; the redrive
        # policy only catches messages the handler could not even process (a crash, a poison body).
        self.notifications_dlq = self._queue(
            "MerchantNotificationsDlq", "merchant-notifications-dlq", retention=DLQ_RETENTION
        )
        self.notifications = self._queue(
            "MerchantNotifications",
            "merchant-notifications",
            visibility=self._visibility_for("merchant_notifier"),
            retention=Duration.days(4),
            dead_letter=sqs.DeadLetterQueue(queue=self.notifications_dlq, max_receive_count=10),
        )
        # On-failure destination of the payments-stream event source mapping.
        self.order_notifications_dlq = self._queue(
            "OrderNotificationsDlq", "order-notifications-dlq", retention=DLQ_RETENTION
        )
        # Terminal messages an IoT rule could not deliver, and events whose handler failed all
        # of Lambda's asynchronous retries.
        self.terminal_messages_dlq = self._queue(
            "TerminalMessagesDlq", "terminal-messages-dlq", retention=DLQ_RETENTION
        )
        # Daily export runs that EventBridge or Lambda could not complete.
        self.finance_export_dlq = self._queue("FinanceExportDlq", "finance-export-dlq", retention=DLQ_RETENTION)

        self.by_key: dict[str, sqs.Queue] = {
            "ipn": self.ipn,
            "notifications": self.notifications,
            "notifications_dlq": self.notifications_dlq,
        }
        self.dead_letter_queues: dict[str, sqs.Queue] = {
            "ipn-dlq": self.ipn_dlq,
            "merchant-notifications-dlq": self.notifications_dlq,
            "order-notifications-dlq": self.order_notifications_dlq,
            "terminal-messages-dlq": self.terminal_messages_dlq,
            "finance-export-dlq": self.finance_export_dlq,
        }

    def _visibility_for(self, function_name: str) -> Duration:
        return Duration.seconds(FUNCTIONS_BY_NAME[function_name].timeout_s * VISIBILITY_FACTOR)

    def _queue(
        self,
        construct_id: str,
        suffix: str,
        *,
        visibility: Duration | None = None,
        retention: Duration | None = None,
        dead_letter: sqs.DeadLetterQueue | None = None,
    ) -> sqs.Queue:
        return sqs.Queue(
            self,
            construct_id,
            queue_name=self._settings.resource_name(suffix),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            visibility_timeout=visibility,
            retention_period=retention,
            dead_letter_queue=dead_letter,
        )
