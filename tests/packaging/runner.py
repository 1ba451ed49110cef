"""Drive every Lambda handler of an unpacked deployment package once, in the order a payment drives
them, with events shaped as AWS delivers them (tests/packaging/events/).

Run as ``python -I -S runner.py TASK_DIR RUNTIME_DIR SCENARIO REPORT``: the interpreter sees the
standard library, the package (as Lambda's /var/task) and boto3 (as the runtime provides it), and
nothing of this repository. Signatures are computed here from the wire contracts, with the standard
library only. Reports, for the import and each call, its CPU time (this thread), wall time, the
process's peak memory and what the handler answered.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import resource
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

TASK, RUNTIME, SCENARIO, REPORT = sys.argv[1:5]
sys.path[:0] = [TASK, RUNTIME]
scenario: dict[str, Any] = json.loads(Path(SCENARIO).read_text())
EVENTS = Path(scenario["events_dir"])
report: dict[str, Any] = {"sys_path": sys.path[:2], "steps": []}


def peak_rss_kb() -> int:
    """The peak resident memory of this process image (getrusage's maxrss would include the
    parent's, which it keeps across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Context:
    """The attributes of Lambda's context object that handlers may read."""

    def __init__(self, name: str, memory_mb: int = 128) -> None:
        self.function_name = f"nepting-cloud-api-pkg-{name}"
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:eu-west-3:123456789012:function:{self.function_name}"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "2026/11/28/[$LATEST]0123456789abcdef"
        self._deadline = time.monotonic() + 30

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def event(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return copy.deepcopy(loaded)


def call(step: str, handler_name: str, payload: dict[str, Any]) -> Any:
    module_name, _, attribute = HANDLERS[handler_name].partition(".")
    handler = getattr(sys.modules[module_name], attribute)
    cpu, wall = time.thread_time(), time.perf_counter()
    answer = handler(payload, Context(handler_name))
    report["steps"].append(
        {
            "step": step,
            "handler": handler_name,
            "cpu_ms": round((time.thread_time() - cpu) * 1000, 2),
            "wall_ms": round((time.perf_counter() - wall) * 1000, 2),
            "peak_rss_kb": peak_rss_kb(),
            "answer": answer,
        }
    )
    return answer


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def rfc3339(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


# -- API Gateway ---------------------------------------------------------------------------------


def http(method: str, path: str, resource_path: str, *, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    request = event("apigw_rest_proxy.json")
    all_headers = {**request["headers"], **(headers or {})}
    if body is not None:
        all_headers["Content-Type"] = "application/json"
    request.update(
        resource=resource_path,
        path=path,
        httpMethod=method,
        headers=all_headers,
        multiValueHeaders={k: [v] for k, v in all_headers.items()},
        body=None if body is None else (body if isinstance(body, str) else json.dumps(body)),
    )
    request["requestContext"].update(
        resourcePath=resource_path,
        httpMethod=method,
        path=f"/api{path}",
        requestTimeEpoch=now_ms(),
        requestId=str(uuid.uuid4()),
    )
    if "{order_id}" in resource_path:
        request["pathParameters"] = {"order_id": path.rsplit("/", 1)[1]}
    return request


def basic() -> dict[str, str]:
    token = base64.b64encode(f"{scenario['login']}:{scenario['password']}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def order_body(order_id: str) -> dict[str, Any]:
    return {
        "order": {"order_id": order_id, "transaction_type": "Debit", "price": {"amount": 1250, "currency": "EUR"}},
        "pos_technical_info": {
            "device_information": {
                "serial_number": scenario["serial_number"],
                "manufacturer": scenario["manufacturer"],
            },
            "terminal_transaction_display": {"protocol": "AppNepting"},
        },
    }


# -- terminal messages (docs/terminal-protocol.md) through the IoT topic rule ----------------------------------


def envelope(kind: str, request_id: str, body: dict[str, Any]) -> bytes:
    unsigned = {
        "v": 1,
        "type": kind,
        "request_id": request_id,
        "terminal_id": scenario["terminal_id"],
        "sent_at": rfc3339(now_ms()),
        "body": body,
    }
    canonical = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    sig = hmac.new(scenario["passphrase"].encode(), canonical, hashlib.sha256).hexdigest()
    return json.dumps({**unsigned, "sig": sig}).encode()


def iot_message(suffix: str, payload: bytes) -> dict[str, Any]:
    message = event("iot_topic_rule.json")
    message.update(
        payload=base64.b64encode(payload).decode(),
        topic=f"nepting/v1/terminals/{scenario['terminal_id']}/{suffix}",
        received_at=now_ms(),
    )
    return message


# -- what the runtime's boto3 sees of the AWS side ------------------------------------------------


def aws(service: str) -> Any:
    import boto3

    return boto3.session.Session().client(service)


def payment_items(order_id: str) -> tuple[dict[str, Any], str]:
    """The order's head as DynamoDB streams it, and its attempt's request id."""
    key = {"pk": {"S": f"ORDER#{scenario['merchant_id']}#{order_id}"}}
    head = aws("dynamodb").get_item(TableName=scenario["payments_table"], Key=key, ConsistentRead=True)["Item"]
    return head, head["request_id"]["S"]


def sqs_event(queue_url: str) -> dict[str, Any] | None:
    found = aws("sqs").receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1)
    messages = found.get("Messages", [])
    if not messages:
        return None
    batch = event("sqs.json")
    record = batch["Records"][0]
    record.update(
        messageId=messages[0]["MessageId"],
        receiptHandle=messages[0]["ReceiptHandle"],
        body=messages[0]["Body"],
        md5OfBody=messages[0]["MD5OfBody"],
    )
    return batch


# -- the run ----------------------------------------------------------------------------------------

HANDLERS = scenario["handlers"]

cpu, wall = time.process_time(), time.perf_counter()
for module in {target.partition(".")[0] for target in HANDLERS.values()}:
    __import__(module)
report["import"] = {
    "cpu_ms": round((time.process_time() - cpu) * 1000, 2),
    "wall_ms": round((time.perf_counter() - wall) * 1000, 2),
    "peak_rss_kb": peak_rss_kb(),
    "app_file": sys.modules["app"].__file__,
    "pydantic_core_file": sys.modules["pydantic_core"].__file__,
}

call("healthcheck", "api_handler", http("GET", "/v1/connector/healthcheck", "/v1/connector/healthcheck"))
online = envelope("status", str(uuid.uuid4()), {"state": "online"})
call("terminal online", "terminal_status", iot_message("status", online))

# An asynchronous payment, its terminal's answers, and what follows on the Console side.
order_id = f"PKG-{uuid.uuid4().hex[:12]}"
call(
    "payment (async)",
    "api_handler",
    http(
        "POST",
        "/v1/connector/order",
        "/v1/connector/order",
        body=order_body(order_id),
        headers={**basic(), "Prefer": "respond-async"},
    ),
)
head, request_id = payment_items(order_id)
call("ack", "terminal_events", iot_message("events", envelope("ack", request_id, {})))
result = {
    "payment_status": "Success",
    "authorization_code": "A1B2C3",
    "card_brand": "VISA",
    "masked_pan": "497010XXXXXX0014",
}
call("result", "terminal_events", iot_message("events", envelope("result", request_id, result)))
call(
    "order status",
    "api_handler",
    http("GET", f"/v1/connector/order/{order_id}", "/v1/connector/order/{order_id}", headers=basic()),
)
stream = event("dynamodb_stream.json")
stream["Records"][0]["dynamodb"].update(Keys={"pk": head["pk"]}, NewImage=head)
call("order head streamed", "order_notifications", stream)

ipn = {
    "transaction_reference": f"TR-{uuid.uuid4().hex[:16]}",
    "merchant_id": scenario["merchant_id"],
    "order_id": order_id,
    "terminal_id": scenario["terminal_id"],
    "operation": "Debit",
    "status": "approved",
    "amount": 1250,
    "currency": "EUR",
    "authorization_code": "A1B2C3",
    "authorized_online": True,
    "card": {"brand": "VISA", "masked_pan": "497010XXXXXX0014", "entry_mode": "contactless"},
    "processed_at": rfc3339(now_ms()),
}
raw = json.dumps(ipn)
timestamp = str(now_ms() // 1000)
signature = hmac.new(scenario["ipn_secret"].encode(), (timestamp + "." + raw).encode(), hashlib.sha256).hexdigest()
call(
    "ipn",
    "api_handler",
    http(
        "POST",
        "/v1/ipn/nepting",
        "/v1/ipn/nepting",
        body=raw,
        headers={"X-Nepting-Timestamp": timestamp, "X-Nepting-Signature": signature},
    ),
)
queued = sqs_event(scenario["ipn_queue_url"])
report["ipn_queued"] = queued is not None
if queued is not None:
    call("ipn merged", "ipn_ingest", queued)
notification = sqs_event(scenario["notifications_queue_url"])
report["notification_queued"] = notification is not None
if notification is not None:
    call("merchant notified", "merchant_notifier", notification)
call("finance export", "finance_export", event("eventbridge_schedule.json"))

# A synchronous payment: the API waits (polls) while the terminal answers from another thread,
# as the terminal-event function would on AWS.
sync_order = f"PKG-{uuid.uuid4().hex[:12]}"


def terminal(answer_after_s: float) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            _, sync_request = payment_items(sync_order)
            break
        except KeyError:
            time.sleep(0.02)
    else:
        return
    time.sleep(0.2)
    call("ack (sync)", "terminal_events", iot_message("events", envelope("ack", sync_request, {})))
    time.sleep(answer_after_s)
    call("result (sync)", "terminal_events", iot_message("events", envelope("result", sync_request, result)))


answering = threading.Thread(target=terminal, args=(scenario.get("customer_s", 1.0),))
answering.start()
call(
    "payment (sync)",
    "api_handler",
    http("POST", "/v1/connector/order", "/v1/connector/order", body=order_body(sync_order), headers=basic()),
)
answering.join()

# A warm payment start (credential cached, clients made), and what one poll of the wait costs this
# process: a strongly consistent GetItem of a dispatch, as the wait makes it.
call(
    "payment (async, warm)",
    "api_handler",
    http(
        "POST",
        "/v1/connector/order",
        "/v1/connector/order",
        body=order_body(f"PKG-{uuid.uuid4().hex[:12]}"),
        headers={**basic(), "Prefer": "respond-async"},
    ),
)
dynamodb = aws("dynamodb")
key = {"pk": {"S": f"DISPATCH#{request_id}"}}
dynamodb.get_item(TableName=scenario["payments_table"], Key=key, ConsistentRead=True)
cpu, wall, polls = time.thread_time(), time.perf_counter(), 50
for _ in range(polls):
    dynamodb.get_item(TableName=scenario["payments_table"], Key=key, ConsistentRead=True)
report["poll_read"] = {
    "cpu_ms": round((time.thread_time() - cpu) * 1000 / polls, 3),
    "wall_ms": round((time.perf_counter() - wall) * 1000 / polls, 3),
}
report["peak_rss_kb"] = peak_rss_kb()
Path(REPORT).write_text(json.dumps(report, default=str))
