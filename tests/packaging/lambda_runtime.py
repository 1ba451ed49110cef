"""The Lambda deployment package, built as `chalice package` builds it, unpacked into a clean
directory with only boto3 beside it (what Lambda's Python runtime provides), and its handlers run
there in a fresh, isolated interpreter against an AWS endpoint (moto in server mode).

Used by tests/packaging (does the package work?) and bench/lambda_sizing.py (how much memory and
CPU does it need?). The dependencies Chalice downloads for an architecture are cached per
requirements.txt under ``build/lambda-deps/`` (ignored by git): pip reaches the package index once,
later runs are offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPS_CACHE = REPO_ROOT / "build" / "lambda-deps"
RUNNER = Path(__file__).with_name("runner.py")
EVENTS = Path(__file__).with_name("events")
PYTHON_VERSION = "python3.11"
# What Lambda's python3.11 runtime has besides the standard library.
RUNTIME_MODULES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")
# ELF e_machine values.
EM_X86_64, EM_AARCH64 = 62, 183
REGION = "eu-west-3"
STAGE = "pkg"
# Each function's handler as `chalice package` writes it (tests/infra checks the template agrees).
HANDLERS = {
    "api_handler": "app.app",
    "terminal_events": "app.terminal_events_handler",
    "terminal_status": "app.terminal_status_handler",
    "order_notifications": "app.order_notifications_handler",
    "ipn_ingest": "app.ipn_ingest_handler",
    "merchant_notifier": "app.merchant_notifier_handler",
    "finance_export": "app.finance_export_handler",
}


def _dependency_builder(architecture: str) -> Any:
    from chalice.deploy.packager import DependencyBuilder
    from chalice.utils import OSUtils

    class CachedDependencyBuilder(DependencyBuilder):  # type: ignore[misc]
        """Chalice's own builder; what it builds for a requirements file is kept per architecture."""

        def build_site_packages(self, abi: str, requirements_filepath: str, target_directory: str) -> None:
            digest = hashlib.sha256(Path(requirements_filepath).read_bytes() + abi.encode()).hexdigest()[:16]
            cached = DEPS_CACHE / f"{digest}-{abi}-{architecture}"
            if not cached.is_dir():
                partial = cached.with_name(cached.name + f".partial-{os.getpid()}")
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
                super().build_site_packages(abi, requirements_filepath, str(partial))
                partial.rename(cached)
            shutil.copytree(cached, target_directory, dirs_exist_ok=True)

    return CachedDependencyBuilder(OSUtils(), architecture=architecture)


def build_package(architecture: str, out_dir: Path) -> Path:
    """The deployment zip of the repository's app for ``architecture`` (``arm64`` or ``x86_64``)."""
    from chalice.deploy.packager import LambdaDeploymentPackager
    from chalice.utils import UI, OSUtils

    packager = LambdaDeploymentPackager(
        OSUtils(), _dependency_builder(architecture), UI(out=io.StringIO(), err=io.StringIO()), architecture
    )
    # Chalice names the zip by a hash of requirements and app files, under the project's
    # .chalice/deployments (ignored by git), and reuses it while neither changes.
    built = Path(packager.create_deployment_package(str(REPO_ROOT), PYTHON_VERSION))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"deployment-{architecture}.zip"
    shutil.copyfile(built, target)
    return target


def elf_machines(package: Path) -> dict[str, int]:
    """Every ELF file of a zip (shared libraries) and the machine it is built for."""
    found = {}
    with zipfile.ZipFile(package) as z:
        for info in z.infolist():
            with z.open(info) as f:
                head = f.read(20)
            if head[:4] == b"\x7fELF":
                found[info.filename] = int.from_bytes(head[18:20], "little")
    return found


def unpack(package: Path, task_dir: Path) -> Path:
    shutil.rmtree(task_dir, ignore_errors=True)
    with zipfile.ZipFile(package) as z:
        z.extractall(task_dir)
    return task_dir


def runtime_dir(target: Path) -> Path:
    """boto3 and its dependencies, and nothing else, linked from this environment."""
    target.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"{name} is not installed")
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        link = target / source.name
        if not link.exists():
            link.symlink_to(source, target_is_directory=source.is_dir())
    return target


@dataclass
class Endpoint:
    url: str
    environment: dict[str, str]
    scenario: dict[str, Any]


@contextlib.contextmanager
def aws_endpoint() -> Iterator[Endpoint]:
    """moto in server mode with the deployment's tables, queues and bucket, one merchant and one
    enrolled terminal; the environment a function gets on AWS (names from infra/), pointed at it."""
    from moto.server import ThreadedMotoServer

    # One line per request otherwise, on every test failure.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        # moto's backends live as long as the process: start from empty ones, and leave them so.
        _reset(url)
        yield _seed(url)
    finally:
        _reset(url)
        server.stop()


def _reset(url: str) -> None:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10):
        pass


def _seed(url: str) -> Endpoint:
    import boto3

    from chalicelib.adapters import aws as aws_adapter
    from chalicelib.adapters.dynamodb.merchants import DynamoMerchantRepository
    from chalicelib.adapters.dynamodb.payments import DynamoTerminalRepository
    from chalicelib.adapters.dynamodb.tables import create_tables
    from chalicelib.config import Settings
    from chalicelib.merchants import enrollment

    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}
    names = {
        "MERCHANTS_TABLE": f"nepting-cloud-api-{STAGE}-merchants",
        "TERMINALS_TABLE": f"nepting-cloud-api-{STAGE}-terminals",
        "PAYMENTS_TABLE": f"nepting-cloud-api-{STAGE}-payments",
        "TRANSACTIONS_TABLE": f"nepting-cloud-api-{STAGE}-transactions",
        "ORDER_DETAILS_TABLE": f"nepting-cloud-api-{STAGE}-order-details",
        "IPN_TABLE": f"nepting-cloud-api-{STAGE}-ipn",
        "EXPORT_BUCKET": f"nepting-cloud-api-{STAGE}-exports",
    }
    session = boto3.session.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    sqs = session.client("sqs", endpoint_url=url)
    queues = {
        env: sqs.create_queue(QueueName=f"nepting-cloud-api-{STAGE}-{name}")["QueueUrl"]
        for env, name in (
            ("IPN_QUEUE_URL", "ipn"),
            ("NOTIFICATIONS_QUEUE_URL", "merchant-notifications"),
            ("NOTIFICATIONS_DLQ_URL", "merchant-notifications-dlq"),
        )
    }
    session.client("s3", endpoint_url=url).create_bucket(
        Bucket=names["EXPORT_BUCKET"], CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    settings = Settings.from_env(names)
    password, ipn_secret = secrets.token_urlsafe(18), secrets.token_urlsafe(24)
    # The repository's own schema and enrollment, as `python -m admin` does it on AWS.
    saved = {key: os.environ.get(key) for key in (*credentials, "AWS_ENDPOINT_URL")}
    os.environ.update({**credentials, "AWS_ENDPOINT_URL": url})
    aws_adapter.reset_clients()
    try:
        create_tables(settings)
        # As infra/ deploys it: the finance export reads the table at a point in time.
        aws_adapter.client("dynamodb").update_continuous_backups(
            TableName=settings.transactions_table,
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
        )
        merchants = DynamoMerchantRepository(settings.merchants_table)
        terminals = DynamoTerminalRepository(settings.terminals_table)
        enrollment.create_merchant(merchants, "M1", "shop-m1", password)
        terminal_id, passphrase = enrollment.enroll_terminal(terminals, merchants, "M1", "PAX", "1850320198")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        aws_adapter.reset_clients()
    environment = {
        **credentials,
        "AWS_ENDPOINT_URL": url,
        **names,
        **queues,
        "STAGE": STAGE,
        "POWERTOOLS_SERVICE_NAME": "nepting-cloud-api",
        "POWERTOOLS_METRICS_NAMESPACE": "NeptingCloudApi",
        "TERMINAL_CHANNEL": "iot",
        "IOT_DATA_ENDPOINT": "",
        "ACK_TIMEOUT_MS": "10000",
        "PAYMENT_DEADLINE_MS": "27000",
        "ASYNC_PAYMENT_DEADLINE_MS": "120000",
        "IPN_SECRET": ipn_secret,
    }
    scenario = {
        "merchant_id": "M1",
        "login": "shop-m1",
        "password": password,
        "terminal_id": terminal_id,
        "manufacturer": "PAX",
        "serial_number": "1850320198",
        "passphrase": passphrase,
        "ipn_secret": ipn_secret,
        "payments_table": names["PAYMENTS_TABLE"],
        "ipn_queue_url": queues["IPN_QUEUE_URL"],
        "notifications_queue_url": queues["NOTIFICATIONS_QUEUE_URL"],
        "events_dir": str(EVENTS),
        "handlers": HANDLERS,
    }
    return Endpoint(url, environment, scenario)


def run_handlers(task: Path, runtime: Path, endpoint: Endpoint, work: Path, timeout_s: int = 180) -> dict[str, Any]:
    """Run tests/packaging/runner.py in an isolated interpreter that sees the standard library, the
    unpacked package and boto3, nothing else; returns what it reports."""
    scenario_path, report_path = work / "scenario.json", work / "report.json"
    scenario_path.write_text(json.dumps(endpoint.scenario))
    report_path.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(RUNNER), str(task), str(runtime), str(scenario_path), str(report_path)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **endpoint.environment},
        cwd=task,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0 or not report_path.exists():
        raise RuntimeError(f"runner exited {done.returncode}:\n{done.stderr[-6000:]}")
    report: dict[str, Any] = json.loads(report_path.read_text())
    return report
