"""Which Lambda function may touch what: the single access matrix of the deployment.

Each function's IAM role and its environment variables are both derived from its row here, so a
function is told the name of a table exactly when it is allowed to use it. A function that
``app.py`` registers but this table does not know fails the synthesis: its privileges must be
decided, not inherited.
"""

from __future__ import annotations

from dataclasses import dataclass

# DynamoDB tables: key used in this module -> environment variable the application reads.
TABLE_ENV = {
    "merchants": "MERCHANTS_TABLE",
    "terminals": "TERMINALS_TABLE",
    "payments": "PAYMENTS_TABLE",
    "transactions": "TRANSACTIONS_TABLE",
    "order_details": "ORDER_DETAILS_TABLE",
    "ipn": "IPN_TABLE",
}

# SQS queues a function sends to -> environment variable carrying the queue URL.
QUEUE_ENV = {
    "ipn": "IPN_QUEUE_URL",
    "notifications": "NOTIFICATIONS_QUEUE_URL",
    "notifications_dlq": "NOTIFICATIONS_DLQ_URL",
}


@dataclass(frozen=True)
class FunctionSpec:
    """One Chalice function (``@app.lambda_function(name=...)``, or the REST API handler)."""

    name: str
    # CloudFormation logical id that ``chalice package`` gives the function.
    logical_id: str
    timeout_s: int
    # Chosen from measured import and handler times (bench/lambda_sizing.py, infra/README.md).
    memory_mb: int = 256
    # DeploymentSettings attribute holding this function's reserved concurrency; None: it draws
    # on the account's unreserved pool.
    concurrency: str | None = None
    reads: tuple[str, ...] = ()
    read_writes: tuple[str, ...] = ()
    sends_to: tuple[str, ...] = ()
    publishes_to_terminals: bool = False
    reads_ipn_secret: bool = False
    exports_transactions: bool = False

    @property
    def tables(self) -> tuple[str, ...]:
        return self.reads + self.read_writes

    @property
    def slug(self) -> str:
        return self.name.replace("_", "-")


API_HANDLER = "api_handler"

# The API handler's timeout depends on the integration timeout; see settings.py.
API_TIMEOUT_FROM_SETTINGS = 0

FUNCTIONS: tuple[FunctionSpec, ...] = (
    FunctionSpec(
        name=API_HANDLER,
        logical_id="APIHandler",
        timeout_s=API_TIMEOUT_FROM_SETTINGS,
        # It waits for the customer most of its life, billed by memory x time: the smallest size
        # whose memory holds its measured peak with 25 % headroom (bench/lambda_sizing.py);
        # -c api_memory_mb trades cost for a faster first request per container.
        memory_mb=128,
        concurrency="api_concurrency",
        reads=("merchants", "transactions"),
        read_writes=("terminals", "payments", "ipn"),
        sends_to=("ipn",),
        publishes_to_terminals=True,
        reads_ipn_secret=True,
    ),
    FunctionSpec(
        name="terminal_events",
        logical_id="TerminalEvents",
        timeout_s=10,
        # Acks and results: their handling time is added latency, their cost is a few ms each; the
        # smallest size that stretches a warm ack's CPU by at most 20 ms (bench/lambda_sizing.py).
        memory_mb=512,
        concurrency="terminal_events_concurrency",
        read_writes=("terminals", "payments"),
    ),
    FunctionSpec(
        name="terminal_status",
        logical_id="TerminalStatus",
        timeout_s=10,
        memory_mb=512,
        concurrency="terminal_status_concurrency",
        read_writes=("terminals", "payments"),
    ),
    FunctionSpec(
        name="order_notifications",
        logical_id="OrderNotifications",
        timeout_s=30,
        read_writes=("transactions", "order_details"),
        # A transaction gaining its order details is a change the merchant is told about.
        sends_to=("notifications",),
    ),
    FunctionSpec(
        name="ipn_ingest",
        logical_id="IpnIngest",
        timeout_s=30,
        reads=("order_details",),
        read_writes=("ipn", "transactions"),
        sends_to=("notifications",),
    ),
    FunctionSpec(
        name="merchant_notifier",
        logical_id="MerchantNotifier",
        # Up to a batch of merchant servers, each given a few seconds to answer.
        timeout_s=60,
        reads=("merchants",),
        # Records which statuses a merchant server acknowledged on the transaction.
        read_writes=("transactions",),
        # Re-enqueues failed deliveries with growing delays, then parks them itself.
        sends_to=("notifications", "notifications_dlq"),
    ),
    FunctionSpec(
        name="finance_export",
        logical_id="FinanceExport",
        timeout_s=120,
        memory_mb=512,
        exports_transactions=True,
    ),
)

FUNCTIONS_BY_LOGICAL_ID = {spec.logical_id: spec for spec in FUNCTIONS}
FUNCTIONS_BY_NAME = {spec.name: spec for spec in FUNCTIONS}
