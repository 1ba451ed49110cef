"""`make run`: the whole system on one machine (docs/seed.md).

The embedded store (SQLite in ``DATA_DIR``, default ``.data/``; or ``STORE=moto``: moto in server
mode for DynamoDB, SQS, S3, IoT), the MQTT broker (in a child process: ``local/broker.py``), the
Chalice routes on a threaded HTTP server, the topic-rule bridge and the event-source pollers feeding
the very same handlers, and simulated terminals. With the embedded store a restart, even after
``kill -9``, carries on where it stopped.
Ctrl-C stops everything; a crashed component stops the stack with its traceback instead of leaving
a half-working system.

    stack = start_stack(StackConfig(api_port=0, mqtt_port=0))   # free ports, for tests
    ...
    stack.stop()
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from chalicelib.adapters import aws
from chalicelib.adapters.dynamodb.merchants import DynamoMerchantRepository
from chalicelib.adapters.dynamodb.payments import DynamoTerminalRepository
from chalicelib.adapters.dynamodb.tables import create_tables
from chalicelib.config import Settings, get_settings
from chalicelib.exceptions import ConditionFailed, ConfigurationError
from chalicelib.merchants import enrollment
from chalicelib.merchants.ports import MerchantRepository
from chalicelib.payments.ports import TerminalRepository
from local.children import keep_to_one_core
from local.seed import DEFAULT_SEED, Seed, SeedError, load_seed
from local.store import StoreChoiceError, data_dir_from_env, store_from_env

HOST = "127.0.0.1"
# The event handler runs in this process and wakes the waiting request at once (ThreadWaker, which
# loses no wake) after each committed transition, so the poll schedule is only a safety net here:
# a read every 5 s, not from 5 ms. A 2-5 s customer's payment reads its record about 3 times (once
# per wake, and once at 5 s for the slowest), not 12. Starting at 1 s, growing to 5 s, it read about
# 5 times, and each timed wake of 200 waiting requests cost CPU the other payments waited for (the
# request threads' wait went from 1.4-1.6 to 0.8-0.9 ms of CPU per payment at 200 in flight).
LOCAL_POLL_INITIAL_MS = "5000"
LOCAL_POLL_MAX_MS = "5000"
# Queues and bucket the local stack creates; on AWS infra/ creates them.
QUEUES = {
    "IPN_QUEUE_URL": "nepting-ipn",
    "NOTIFICATIONS_QUEUE_URL": "nepting-merchant-notifications",
    "NOTIFICATIONS_DLQ_URL": "nepting-merchant-notifications-dlq",
}
# Where `make run` writes the environment the operator commands need (`make admin` reads it).
ADMIN_ENV_FILE = Path(os.environ.get("LOCAL_STACK_ENV_FILE") or "build/local-stack.env")
USAGE = """Start the whole system on this machine: the embedded store (SQLite, kept in DATA_DIR), the
MQTT broker, the API with the Console (/console) and API docs (/docs), and simulated terminals.
Ctrl-C stops it; starting again on the same DATA_DIR carries on where it stopped.

Settings (environment variables):
  API_PORT        HTTP port of the API, Console and docs (default 8000)
  MQTT_PORT       port of the MQTT broker terminals connect to (default 1883)
  DATA_DIR        where the embedded store keeps its file (default .data); remove it to start afresh
  STORE           sqlite (default) or moto: the AWS adapters against moto, in memory
  MOTO_PORT       with STORE=moto, port of moto for outside AWS tools (default: a free one)
  SEED_FILE       merchants and terminals to create (default local/seed.json)
  LOCAL_STACK_ENV_FILE  where the operator commands' environment is written (build/local-stack.env)
  and every handler setting, e.g. PAYMENT_DEADLINE_MS, ACK_TIMEOUT_MS (README, Configuration).
"""


class StackError(RuntimeError):
    pass


class HeldUntilAttached:
    """The broker's hooks (lifecycle events, topic rules' messages): what it hands over before the
    topic-rule bridge is there to take it is held, then given to the bridge in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[Any, ...]] = []
        self._target: Any = None

    def __call__(self, *args: Any) -> None:
        with self._lock:
            if self._target is None:
                self._pending.append(args)
                return
            target = self._target
        target(*args)

    def attach(self, target: Any) -> None:
        with self._lock:
            self._target, pending, self._pending = target, self._pending, []
        for args in pending:
            target(*args)


@dataclass
class StackConfig:
    api_port: int = 8000
    mqtt_port: int = 1883
    moto_port: int = 0
    seed_path: Path = DEFAULT_SEED
    # Extra environment for the handlers (e.g. shorter ACK_TIMEOUT_MS in tests).
    environment: dict[str, str] = field(default_factory=dict)
    simulate: bool = True
    # "sqlite" (the embedded store) or "moto" (the AWS adapters against moto).
    store: str = "sqlite"
    # Where the embedded store keeps its file; None: a temporary directory removed on stop (tests).
    data_dir: Path | None = None

    @classmethod
    def from_env(cls) -> StackConfig:
        def port(name: str, default: int) -> int:
            raw = os.environ.get(name, str(default))
            if not raw.isdigit() or int(raw) > 65535:
                raise StackError(f"{name} must be a port number, got {raw!r}")
            return int(raw)

        seed = os.environ.get("SEED_FILE")
        try:
            store = store_from_env()
        except StoreChoiceError as exc:
            raise StackError(str(exc)) from None
        return cls(
            api_port=port("API_PORT", 8000),
            mqtt_port=port("MQTT_PORT", 1883),
            moto_port=port("MOTO_PORT", 0),
            seed_path=Path(seed) if seed else DEFAULT_SEED,
            store=store,
            data_dir=data_dir_from_env(),
        )


@dataclass
class RunningStack:
    config: StackConfig
    seed: Seed
    settings: Settings
    api_url: str
    mqtt_port: int
    moto_url: str
    _parts: list[Any] = field(default_factory=list)
    _saved_env: dict[str, str | None] = field(default_factory=dict)
    fleet: Any = None
    # The embedded store (STORE=sqlite) and its directory.
    store: Any = None
    data_dir: Path | None = None
    bridge: Any = None
    broker: Any = None
    pollers: list[Any] = field(default_factory=list)
    # The Console side's pollers in a process of their own (STORE=sqlite): local/console_process.py.
    console: Any = None
    presence: HeldUntilAttached = field(default_factory=HeldUntilAttached)
    rules: HeldUntilAttached = field(default_factory=HeldUntilAttached)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def crash_report(self) -> str | None:
        """The traceback of the first crashed component, if any."""
        if self.broker is not None and self.broker.crashed:
            try:
                self.broker.raise_if_crashed()
            except BaseException as exc:
                return f"MQTT broker crashed:\n{exc}"
        if self.bridge is not None and self.bridge.crash:
            return f"terminal event handler crashed:\n{self.bridge.crash}"
        for poller in self.pollers:
            crash = getattr(poller, "crash", None)
            if crash:
                return f"poller {getattr(poller, 'name', poller)} crashed:\n{crash}"
        if self.console is not None and self.console.crash:
            return f"Console side crashed:\n{self.console.crash}"
        return None

    def poller_names(self) -> list[str]:
        """The event sources feeding the Console side's handlers, wherever they run."""
        if self.console is not None:
            return list(self.console.pollers)
        return [str(poller.name) for poller in self.pollers]

    def stop(self) -> None:
        self.stop_event.set()
        for part in reversed(self._parts):
            try:
                part()
            except Exception as exc:
                print(f"while stopping: {exc!r}", file=sys.stderr)
        self._parts.clear()
        _restore_env(self._saved_env)


def _set_env(stack_env: dict[str, str | None], saved: dict[str, str | None]) -> None:
    for name, value in stack_env.items():
        saved.setdefault(name, os.environ.get(name))
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _restore_env(saved: dict[str, str | None]) -> None:
    _set_env(saved, {})
    get_settings.cache_clear()
    aws.reset_clients()


def start_stack(config: StackConfig) -> RunningStack:
    seed = load_seed(config.seed_path)  # a bad seed stops before anything starts
    if config.store not in ("sqlite", "moto"):
        raise StackError(f"store must be sqlite or moto, got {config.store!r}")
    # A port in use is named with its setting, before the broker's process starts and fails on it.
    _check_port_free(config.mqtt_port, "MQTT_PORT")
    if config.store == "moto":
        _check_port_free(config.moto_port, "MOTO_PORT")
    from local.bridge import RULES
    from local.broker import start_broker_process

    saved: dict[str, str | None] = {}
    parts: list[Any] = []
    moto_url = ""
    data_dir = config.data_dir
    presence, rules = HeldUntilAttached(), HeldUntilAttached()
    try:
        if config.store == "moto":
            from local.moto_server import LocalAws

            moto = LocalAws(HOST, config.moto_port).start()
            parts.append(moto.stop)
            moto_url = moto.url
        elif data_dir is None:
            temporary = Path(tempfile.mkdtemp(prefix="nepting-data-"))
            parts.append(lambda: shutil.rmtree(temporary, ignore_errors=True))
            data_dir = temporary
        # Its own process, as IoT Core is its own service: the broker's loop gets its own GIL and a
        # core, instead of taking turns with the API threads, the handlers and the pollers.
        broker = start_broker_process(HOST, config.mqtt_port, on_presence=presence, rules=RULES, on_rule=rules)
        parts.append(broker.stop)
        env: dict[str, str | None] = {
            # In-process clients reach moto directly; outside tools use the printed moto URL.
            "AWS_ENDPOINT_URL": None,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "eu-west-3"),
            "AWS_MAX_POOL_CONNECTIONS": "512",
            "TERMINAL_CHANNEL": "mqtt",
            "MQTT_HOST": HOST,
            "MQTT_PORT": str(broker.port),
            "IPN_SECRET": seed.ipn_secret,
            "METRICS_EMF": os.environ.get("METRICS_EMF", "false"),
            "POLL_INITIAL_MS": os.environ.get("POLL_INITIAL_MS", LOCAL_POLL_INITIAL_MS),
            "POLL_MAX_MS": os.environ.get("POLL_MAX_MS", LOCAL_POLL_MAX_MS),
            # The one place http to loopback is allowed for merchant notifications (docs/seed.md).
            "NOTIFY_ALLOW_LOOPBACK_HTTP": "1",
            **{name: _queue_url(queue) for name, queue in QUEUES.items()},
            **config.environment,
        }
        if "POLL_INITIAL_MS" not in os.environ and "POLL_INITIAL_MS" not in config.environment:
            env["POLL_INITIAL_MS"] = str(min(int(LOCAL_POLL_INITIAL_MS), _int_or(env["POLL_MAX_MS"], 1 << 30)))
        _set_env(env, saved)
        get_settings.cache_clear()
        aws.reset_clients()
        settings = get_settings()
        stack = RunningStack(
            config,
            seed,
            settings,
            "",
            broker.port,
            moto_url,
            parts,
            saved,
            broker=broker,
            presence=presence,
            rules=rules,
        )
        if config.store == "moto":
            _create_resources(settings)
            _apply_seed(
                seed,
                DynamoMerchantRepository(settings.merchants_table),
                DynamoTerminalRepository(settings.terminals_table),
            )
        else:
            assert data_dir is not None
            _open_store(stack, data_dir)
            _apply_seed(seed, stack.store.merchants, stack.store.terminals)
        _start_handlers(stack)
        _start_api(stack)
        if config.simulate:
            _start_simulators(stack)
        _wait_ready(stack.api_url)
        return stack
    except BaseException:
        for stop in reversed(parts):
            with contextlib.suppress(Exception):  # the original error matters more
                stop()
        _restore_env(saved)
        raise


def _int_or(value: str | None, default: int) -> int:
    """A setting's integer, or ``default`` when it is not one (the settings then refuse it by name)."""
    try:
        return int(value or "")
    except ValueError:
        return default


def _check_port_free(port: int, setting: str) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            raise StackError(f"port {port} is already in use: set {setting} to another port") from None


def _queue_url(queue: str) -> str:
    region = os.environ.get("AWS_DEFAULT_REGION", "eu-west-3")
    return f"https://sqs.{region}.amazonaws.com/123456789012/{queue}"


def _create_resources(settings: Settings) -> None:
    create_tables(settings)
    sqs = aws.client("sqs")
    for queue in QUEUES.values():
        sqs.create_queue(QueueName=queue)
    aws.client("s3").create_bucket(
        Bucket=settings.export_bucket,
        CreateBucketConfiguration={"LocationConstraint": os.environ["AWS_DEFAULT_REGION"]},
    )


def _open_store(stack: RunningStack, data_dir: Path) -> None:
    from local.store import open_store

    stack.data_dir = data_dir
    stack.store = open_store(data_dir, stack.settings)
    stack._parts.append(stack.store.close)
    # Kept data outlives its retention only until the next start (DynamoDB's TTL on AWS).
    stack.store.payments.purge_expired(int(time.time()))


def _apply_seed(seed: Seed, merchants: MerchantRepository, terminals: TerminalRepository) -> None:
    """Enroll the seed; on a restart over kept data, a terminal already enrolled keeps its record
    (presence, claim and its expiry) and only gets the seed's passphrase back."""
    for merchant in seed.merchants:
        enrollment.create_merchant(
            merchants,
            merchant.merchant_id,
            merchant.login,
            merchant.password,
            merchant.notify_url,
            merchant.notify_passphrase,
            merchant.basket_policy,
            allow_loopback_http=True,
        )
    for terminal in seed.terminals:
        try:
            enrollment.enroll_terminal(
                terminals,
                merchants,
                terminal.merchant_id,
                terminal.manufacturer,
                terminal.serial_number,
                passphrase=terminal.passphrase,
                with_passphrase=terminal.passphrase is not None,
            )
        except ConditionFailed:
            try:
                terminals.set_passphrase(terminal.terminal_id, terminal.merchant_id, terminal.passphrase)
            except ConditionFailed:
                raise StackError(
                    f"terminal {terminal.terminal_id} is enrolled for another merchant in the kept data; "
                    "use another DATA_DIR or remove it"
                ) from None


def _start_handlers(stack: RunningStack) -> None:
    import app as chalice_app
    from chalicelib import bootstrap
    from local.bridge import BrokerChannel, TopicRuleBridge
    from local.waker import ThreadWaker

    # The API publishes through the broker's own Publish, as it calls iot-data's on AWS.
    channel = BrokerChannel(stack.broker)
    if stack.store is not None:
        from local.store import build_sqlite

        components = build_sqlite(stack.settings, stack.store, channel)
    else:
        components = bootstrap.build(stack.settings)
        components.channel = channel
    components.waker = ThreadWaker()
    bootstrap.install(components)
    stack._parts.append(lambda: bootstrap.install(None))
    events = chalice_app.terminal_events_handler
    try:
        from local.gateway import observing_results
    except ImportError:  # left out on purpose (the bench's --no-console): the payment path alone
        pass
    else:
        # The simulated payment gateway follows the terminal results the event handler records.
        events = observing_results(stack, events, components.payments)
    bridge = TopicRuleBridge(events, chalice_app.terminal_status_handler)
    stack._parts.append(bridge.stop)
    # Stopping the broker ends every session, and it reports each end as a presence event: the bridge
    # must still be there to record them (terminals are offline after a shutdown, not left online).
    assert stack.broker is not None
    stack._parts.append(stack.broker.stop)
    stack.bridge = bridge
    stack.presence.attach(bridge.presence)
    stack.rules.attach(bridge.rule)
    try:
        from local.pollers import start_pollers
    except ImportError:  # left out on purpose (the bench's --no-console): the payment path alone
        return
    if stack.store is not None:
        # The Console side's handlers are Lambda functions of their own on AWS; here, a process of
        # their own on the same data directory, woken by this process's writes.
        from chalicelib.observability import logger
        from local.console_process import start_console_process

        assert stack.data_dir is not None
        console = start_console_process(stack.data_dir, logger.log_level)
        stack._parts.append(console.stop)
        stack.console = console
        stack.store.db.on_notify = console.notify
        return
    stack.pollers = list(start_pollers(stack.settings, stack.stop_event))

    def stop_pollers() -> None:
        stack.stop_event.set()
        for poller in stack.pollers:
            poller.join(timeout=5)

    stack._parts.append(stop_pollers)


def _start_api(stack: RunningStack) -> None:
    import app as chalice_app
    from local.api_server import ApiServer

    server = ApiServer(chalice_app.app, HOST, stack.config.api_port)
    server.start()
    stack._parts.append(server.stop)
    stack.api_url = f"http://{HOST}:{server.port}"


def _start_simulators(stack: RunningStack) -> None:
    from local.simulator import TerminalSpec, run_terminals

    specs = [
        TerminalSpec(t.terminal_id, t.passphrase or "", t.simulator.behavior, t.simulator.delay_ms)
        for t in stack.seed.terminals
        if t.simulator is not None
    ]
    stack.fleet = run_terminals(specs, HOST, stack.mqtt_port)
    stack._parts.append(stack.fleet.stop)


def _wait_ready(api_url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{api_url}/v1/connector/healthcheck", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise StackError(f"the API at {api_url} did not become ready in {timeout_s:.0f} s") from None
        time.sleep(0.05)


def freeze_startup_heap() -> None:
    """Keep what the start-up built (modules, schemas, the seed: about 120,000 objects, all alive
    for the whole run) out of the garbage collector's full passes: each of those stopped every
    payment in flight for about 50 ms."""
    gc.collect()
    gc.freeze()


def describe(stack: RunningStack) -> str:
    """What is where, the demo credentials, and a payment to paste."""
    lines = [
        "Nepting Cloud API — local stack is ready",
        f"  Console      {stack.api_url}/console   (sign in with a merchant below)",
        f"  API docs     {stack.api_url}/docs   (OpenAPI: {stack.api_url}/openapi.json)",
        f"  API          {stack.api_url}",
        f"  MQTT broker  mqtt://{HOST}:{stack.mqtt_port}",
        (
            f"  AWS (moto)   {stack.moto_url}   (STORE=moto: nothing is kept on restart)"
            if stack.store is None
            else f"  Data         {stack.data_dir}   (SQLite; kept across restarts: rm -r it to start afresh)"
        ),
        "",
        "Merchants (HTTP Basic login:password):",
    ]
    lines += [f"  {m.merchant_id:<4} {m.login}:{m.password}" for m in stack.seed.merchants]
    lines += ["", "Terminals:"]
    for t in stack.seed.terminals:
        if t.simulator is None:
            what = "no passphrase: payments answer 403" if t.passphrase is None else "left to an outside client"
        else:
            delay = f", {t.simulator.delay_ms} ms" if t.simulator.delay_ms is not None else ""
            what = f"simulated: {t.simulator.behavior}{delay}"
        lines.append(f"  {t.terminal_id:<22} merchant {t.merchant_id:<4} {what}")
    merchant = stack.seed.merchants[0]
    terminal = next(
        (
            t
            for t in stack.seed.terminals
            if t.simulator and t.simulator.behavior == "approve" and t.merchant_id == merchant.merchant_id
        ),
        None,
    )
    if terminal is not None:
        body = {
            "order": {"order_id": "DEMO-__ID__", "price": {"amount": 1250, "currency": "EUR"}},
            "pos_technical_info": {
                "device_information": {"serial_number": terminal.serial_number, "manufacturer": terminal.manufacturer},
                "terminal_transaction_display": {"protocol": "AppNepting"},
            },
        }
        payload = json.dumps(body, separators=(",", ":")).replace("__ID__", "'\"$RANDOM$RANDOM\"'")
        lines += [
            "",
            "Make a payment (paste into a shell):",
            f"  curl -s -u {merchant.login}:{merchant.password} -H 'Content-Type: application/json' \\",
            f"    {stack.api_url}/v1/connector/order -d '{payload}'",
        ]
    lines += [
        "",
        "Operator commands against this stack (in another shell):",
        "  make admin ARGS='enroll-terminal --merchant-id M1 --manufacturer PAX --serial 123'",
        f"  or set this environment (also in {ADMIN_ENV_FILE}) and run .venv/bin/python -m admin …",
    ]
    lines += [f"    export {name}={value}" for name, value in admin_environment(stack).items()]
    lines += ["", "Ctrl-C stops everything."]
    return "\n".join(lines)


def admin_environment(stack: RunningStack) -> dict[str, str]:
    """What ``python -m admin`` needs to reach this stack: its data directory (the embedded store),
    or with ``STORE=moto`` moto's URL, a region, dummy keys, the queue URLs; and the MQTT channel
    (no IoT thing to provision locally)."""
    if stack.data_dir is not None:
        return {"ADMIN_DATA_DIR": str(Path(stack.data_dir).resolve()), "TERMINAL_CHANNEL": "mqtt"}
    env = {
        "AWS_ENDPOINT_URL": stack.moto_url,
        "AWS_DEFAULT_REGION": os.environ["AWS_DEFAULT_REGION"],
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "TERMINAL_CHANNEL": "mqtt",
    }
    env.update({name: os.environ[name] for name in QUEUES})
    return env


def _write_admin_env(stack: RunningStack) -> None:
    ADMIN_ENV_FILE.parent.mkdir(parents=True, exist_ok=True)
    where = f"moto at {stack.moto_url}" if stack.store is None else f"data in {stack.data_dir}"
    lines = [f"# written by make run for make admin; valid while that stack runs ({where})"]
    lines += [f"{name}={value}" for name, value in admin_environment(stack).items()]
    ADMIN_ENV_FILE.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.stack", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args(argv)
    started = time.monotonic()
    from local.broker import BrokerStartError
    from local.console_process import ConsoleProcessError

    try:
        config = StackConfig.from_env()
        stack = start_stack(config)
    except (SeedError, StackError, BrokerStartError, ConsoleProcessError, ConfigurationError, OSError) as exc:
        # Start-up problems a user can fix (bad seed or setting, port in use) read as one line that
        # names the setting, not a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        _write_admin_env(stack)
    except OSError as exc:
        print(f"note: could not write {ADMIN_ENV_FILE} for make admin: {exc}", file=sys.stderr)
    freeze_startup_heap()
    keep_to_one_core()
    print(describe(stack))
    print(f"(ready in {time.monotonic() - started:.1f} s)", flush=True)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stack.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    while not stack.stop_event.wait(0.5):
        report = stack.crash_report()
        if report:
            print(f"\nstopping: {report}", file=sys.stderr)
            code = 1
            break
    print("stopping…", flush=True)
    stack.stop()
    ADMIN_ENV_FILE.unlink(missing_ok=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
