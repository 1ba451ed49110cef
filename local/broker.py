"""The embedded MQTT 3.1.1 broker of the local stack and the tests (docs/seed.md), on amqtt 0.12.1.

Two ways to run it, with the same surface (``host``, ``port``, ``url``, ``stop()``, ``restart()``,
``raise_if_crashed()``, a context manager):

- ``start_broker()``: in this process, in its own thread with its own asyncio loop, so synchronous
  code (paho clients, pytest) can start one, talk to it and stop it. Tests that patch the broker
  use this one.
- ``start_broker_process()``: in a child process (``python -m local.broker``), which the local
  stack uses. amqtt's loop (routing, packet encoding) is pure Python: in the stack's process it took
  about half of the GIL under load, so every API thread, handler and poller waited for it. In its
  own process it has its own GIL and a core of its own, as IoT Core is a service of its own on
  AWS. The child relays its presence events to the parent over a pipe, its logs go to the parent's
  stderr, and it exits by itself when its parent dies; ``pid`` names it.

    >>> with start_broker() as broker:                     # port 0: a free port is picked
    ...     client.connect(broker.host, broker.port)       # doctest: +SKIP

amqtt is wrapped, not patched in place: ``IsolatingBroker`` fixes the one routing bug that matters
to the terminal protocol (see ``_publish_retained_messages_for_subscription``), turns Nagle off on
every connection, and reports a failed broadcast instead of letting amqtt drop it.

Presence: like IoT Core's lifecycle events (``$aws/events/presence/…``), the broker reports each
client's connect and disconnect from its own connection tracking, with a session id and its own
timestamp, to ``on_presence`` (the local stack hands them to the same presence handler). Only the
broker produces them, so a terminal cannot forge or replay them. ``stop()`` returns once the
disconnects of the shutdown have been reported too.

``restart()`` stops and starts the broker on the same port, as a broker outage would: clients
(terminals, the cloud) reconnect on their own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import BrokerError
from amqtt.events import BrokerEvents
from amqtt.mqtt.constants import QOS_1, QOS_2
from amqtt.session import OutgoingApplicationMessage, Session

# Named, not __name__: run as ``python -m local.broker`` the module is ``__main__``.
log = logging.getLogger("local.broker")

_STARTUP_TIMEOUT_S = 10.0
_SHUTDOWN_TIMEOUT_S = 10.0
# The broker's process starts a fresh interpreter and imports amqtt before it listens.
_PROCESS_STARTUP_TIMEOUT_S = 30.0
# How much of what the broker's process printed last a crash report quotes.
_STDERR_TAIL_LINES = 30
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
# amqtt logs every connection and packet at INFO and expected client drops at WARNING.
_CHATTY_LOGGERS = ("amqtt", "transitions")


PresenceHook = Callable[[dict[str, Any]], None]


class BrokerStartError(RuntimeError):
    """The broker could not start listening."""


class BrokerPortInUseError(BrokerStartError):
    """Another process already listens on the requested port."""


class BrokerCrashedError(RuntimeError):
    """The broker's loop failed while running; ``__cause__`` is the original exception."""


class IsolatingBroker(Broker):
    """amqtt's ``Broker`` where each client receives only what its own subscriptions match.

    ``on_fatal`` is called (from the broker's loop) with any exception that would otherwise be
    logged and forgotten by amqtt, so the thread owning the broker can stop and report it.
    """

    def __init__(
        self,
        config: dict[str, Any],
        on_fatal: Callable[[BaseException], None],
        tcp_nodelay: bool = True,
        on_presence: PresenceHook | None = None,
    ) -> None:
        super().__init__(config)
        self._on_fatal = on_fatal
        self._tcp_nodelay = tcp_nodelay
        self._on_presence = on_presence
        # Connection tracking: session object id → lifecycle session id, and client id → live session.
        self._session_ids: dict[int, str] = {}
        self._live: dict[str, str] = {}
        if on_presence is not None:
            fire_event = self.plugins_manager.fire_event

            async def observed(event_name: Any, *, wait: bool = False, **kwargs: Any) -> None:
                if event_name in (BrokerEvents.CLIENT_CONNECTED, BrokerEvents.CLIENT_DISCONNECTED):
                    self._track(event_name == BrokerEvents.CLIENT_CONNECTED, kwargs.get("client_session"))
                await fire_event(event_name, wait=wait, **kwargs)

            self.plugins_manager.fire_event = observed

    def _track(self, connected: bool, session: Session | None) -> None:
        if session is None or session.client_id is None:
            return
        if connected:
            session_id = self._session_ids[id(session)] = uuid.uuid4().hex
            self._live[session.client_id] = session_id
        else:
            found = self._session_ids.pop(id(session), None)
            if found is None:
                return
            session_id = found
            if self._live.get(session.client_id) == session_id:
                del self._live[session.client_id]
        self._report(session.client_id, connected, session_id)

    def _report(self, client_id: str, connected: bool, session_id: str) -> None:
        if self._on_presence is None:
            return
        event = {
            "clientId": client_id,
            "timestamp": time.time_ns() // 1_000_000,
            "eventType": "connected" if connected else "disconnected",
            "sessionIdentifier": session_id,
            "versionNumber": 0,
        }
        try:
            self._on_presence(event)
        except Exception:  # the hook's failure must not take the broker down; it is logged loudly
            log.exception("presence_hook_failed", extra={"client_id": client_id})

    def report_all_disconnected(self) -> None:
        """At shutdown every live connection ends, whether amqtt reported it or not."""
        for client_id, session_id in list(self._live.items()):
            self._report(client_id, False, session_id)
        self._live.clear()
        self._session_ids.clear()

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        # Every MQTT exchange here is a small packet followed by a wait for the peer (PUBLISH, then
        # PUBACK); with Nagle on, a second small write behind an unacknowledged one waits for the
        # peer's delayed ACK, ~40 ms on Linux. asyncio already disables Nagle on selector
        # transports; doing it here makes the guarantee ours, and lets the benchmark turn it back on.
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(self._tcp_nodelay))
        await super().stream_connected(reader, writer, listener_name)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        # amqtt 0.12.1 calls this from two places. After SUBSCRIBE it is right. But when a client
        # connects, ``_handle_client_session`` loops over ``self._subscriptions`` -- the filters of
        # *every* client -- and calls it for each one with the new session, at QoS 0. So once the
        # cloud holds ``nepting/v1/terminals/+/status``, every terminal that connects is sent
        # every other terminal's retained status, on topics it never subscribed to. The fix keeps
        # the upstream code and only lets a filter through if this session holds it, at the QoS it
        # was granted (which also corrects the QoS 0 of the connect path).
        topic_filter, _requested_qos = subscription
        granted_qos = self._granted_qos(session, topic_filter)
        if granted_qos is None:
            return
        await super()._publish_retained_messages_for_subscription((topic_filter, granted_qos), session)

    def _granted_qos(self, session: Session, topic_filter: str) -> int | None:
        for subscriber, qos in self._subscriptions.get(topic_filter, []):
            if subscriber.client_id == session.client_id:
                return qos
        return None

    async def _run_broadcast(self, running_tasks: deque[asyncio.Task[OutgoingApplicationMessage]]) -> None:
        # amqtt's broadcast loop never reads this task's result: a routing failure would vanish
        # with the message it was routing. Report it, so the broker stops loudly instead.
        try:
            await self._route_one(running_tasks)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._on_fatal(exc)
            raise

    async def _route_one(self, running_tasks: deque[asyncio.Task[OutgoingApplicationMessage]]) -> None:
        """amqtt 0.12.1's ``Broker._run_broadcast``, delivering to the same sessions in the same
        order, without its per-filter cost: amqtt formats a debug line for every subscription a
        message does not match (one per connected terminal, whatever the log level) and runs the
        wildcard matcher on filters that have no wildcard. Here an exact filter is compared as a
        string, only wildcard filters go through ``_matches``, and debug lines are built only when
        debug logging is on."""
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        debug = self.logger.isEnabledFor(logging.DEBUG)
        if debug:
            self.logger.debug(f"Processing broadcast message: {broadcast}")
        for k_filter, subscriptions in self._subscriptions.items():
            if k_filter != topic and not (("+" in k_filter or "#" in k_filter) and self._matches(topic, k_filter)):
                continue
            for target_session, sub_qos in subscriptions:
                qos = broadcast.get("qos", sub_qos)
                if not await self._topic_filtering(target_session, topic=topic, action=Action.RECEIVE):
                    self.logger.info(f"{target_session.client_id} not allowed to receive messages from TOPIC {topic}.")
                    continue
                connected = target_session.transitions.state == "connected"
                if (
                    not connected
                    and not target_session.clean_session
                    and qos in (QOS_1, QOS_2)
                    and not target_session.is_anonymous
                ):
                    await self._retain_broadcast_message(broadcast, qos, target_session)
                    continue
                if not connected:
                    continue
                if debug:
                    self.logger.debug(f"Broadcasting on topic '{topic}' to {target_session.client_id}")
                handler = self._get_handler(target_session)
                if handler:
                    task = asyncio.ensure_future(handler.mqtt_publish(topic, broadcast["data"], qos, retain=False))
                    running_tasks.append(task)


class RunningBroker:
    """A started broker: ``host``, ``port``, ``url``; ``stop()`` or use it as a context manager."""

    def __init__(
        self, host: str, requested_port: int, tcp_nodelay: bool, on_presence: PresenceHook | None = None
    ) -> None:
        self.host = host
        self.port = requested_port
        self._tcp_nodelay = tcp_nodelay
        self._on_presence = on_presence
        self._reset()

    def _reset(self) -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"mqtt-broker-{self.port}", daemon=True)

    def restart(self) -> None:
        """Stop, then start again on the same port: every client is disconnected and must reconnect."""
        self.stop()
        self._reset()
        self._start()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def crashed(self) -> bool:
        return self._failure is not None

    def raise_if_crashed(self) -> None:
        if self._failure is not None:
            raise BrokerCrashedError(f"MQTT broker on port {self.port} crashed: {self._failure!r}") from (self._failure)

    def stop(self) -> None:
        """Disconnect every client, stop listening; raises ``BrokerCrashedError`` if the loop failed."""
        self._request_stop()
        self._thread.join(_SHUTDOWN_TIMEOUT_S)
        if self._thread.is_alive():
            raise BrokerCrashedError(f"MQTT broker on port {self.port} still running after {_SHUTDOWN_TIMEOUT_S}s")
        self.raise_if_crashed()

    def _request_stop(self) -> None:
        loop, stop_requested = self._loop, self._stop_requested
        if loop is not None and stop_requested is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: it is stopping anyway
                loop.call_soon_threadsafe(stop_requested.set)

    def __enter__(self) -> RunningBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        self._thread.start()
        if not self._ready.wait(_STARTUP_TIMEOUT_S):
            raise BrokerStartError(f"MQTT broker on port {self.port} did not start in {_STARTUP_TIMEOUT_S}s")
        if self._start_error is not None:
            self._thread.join(_SHUTDOWN_TIMEOUT_S)
            raise self._start_error
        self.raise_if_crashed()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # recorded, then re-raised by stop() in the owning thread
            self._record_failure(exc)
        finally:
            self._ready.set()

    def _record_failure(self, exc: BaseException) -> None:
        if self._failure is None and self._start_error is None:
            log.error("mqtt_broker_crashed", exc_info=exc, extra={"port": self.port})
            self._failure = exc

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_requested = asyncio.Event()
        fatal: asyncio.Future[None] = loop.create_future()

        def on_fatal(exc: BaseException) -> None:
            if not fatal.done():
                fatal.set_exception(exc)

        def on_loop_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            # An exception no task awaited (asyncio's "never retrieved"): amqtt lost track of it.
            exc = context.get("exception") or RuntimeError(str(context.get("message")))
            on_fatal(exc)

        loop.set_exception_handler(on_loop_error)
        broker = IsolatingBroker(self._config(), on_fatal, self._tcp_nodelay, self._on_presence)
        try:
            await broker.start()
        except BrokerError as exc:
            self._start_error = self._explain_start_failure(exc)
            return
        self.port = self._bound_port(broker)
        log.info("mqtt_broker_started", extra={"host": self.host, "port": self.port})
        self._ready.set()

        stop_waiter: asyncio.Future[Any] = asyncio.ensure_future(self._stop_requested.wait())
        await asyncio.wait([stop_waiter, fatal], return_when=asyncio.FIRST_COMPLETED)
        stop_waiter.cancel()
        await broker.shutdown()
        broker.report_all_disconnected()
        log.info("mqtt_broker_stopped", extra={"port": self.port})
        if fatal.done():
            fatal.result()

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            # Only anonymous auth: the default set also loads $SYS and packet-logging plugins.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    def _explain_start_failure(self, exc: BrokerError) -> BaseException:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            error: BrokerStartError = BrokerPortInUseError(
                f"cannot start the MQTT broker: port {self.port} on {self.host} is already in use"
            )
        else:
            where = f"{self.host}:{self.port}"
            error = BrokerStartError(f"cannot start the MQTT broker on {where}: {cause or exc}")
        error.__cause__ = exc
        return error

    @staticmethod
    def _bound_port(broker: Broker) -> int:
        server = broker._servers["default"].instance
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1])


def quiet_amqtt_logging(level: int = logging.ERROR) -> None:
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(level)


def start_broker(
    host: str = "127.0.0.1", port: int = 0, *, tcp_nodelay: bool = True, on_presence: PresenceHook | None = None
) -> RunningBroker:
    """Start a broker in a background thread and return once it accepts connections.

    ``port=0`` binds a free port (read it from ``.port``). A port already in use raises
    ``BrokerPortInUseError``. ``on_presence`` gets each lifecycle event (called on the broker's loop:
    it must not block). ``tcp_nodelay=False`` exists only to measure what Nagle costs.
    """
    quiet_amqtt_logging()
    running = RunningBroker(host, port, tcp_nodelay, on_presence)
    running._start()
    return running


class BrokerProcess:
    """A broker in a child process (``python -m local.broker``), with ``RunningBroker``'s surface.

    ``host``, ``port``, ``url``, ``stop()``, ``restart()``, ``crashed``, ``raise_if_crashed()``, a
    context manager; and ``pid``, the child's process id (it changes on ``restart()``).

    The child speaks JSON lines on its stdout: ``{"ready": port}`` or ``{"error": kind, "message": …}``
    once, then ``{"presence": event}`` for each lifecycle event, and last ``{"stopped": true}`` or
    ``{"crashed": traceback}``. One reader thread here hands the presence events to ``on_presence`` in
    the order the broker emitted them. The child's stderr (its JSON-lines logs) is copied to this
    process's stderr, and its last lines are kept for the crash report. The child stops when it reads
    ``stop`` on its stdin, and exits at once when its stdin ends without one: its parent is gone.
    """

    def __init__(
        self,
        host: str,
        requested_port: int,
        tcp_nodelay: bool,
        on_presence: PresenceHook | None = None,
        module: str = "local.broker",
    ) -> None:
        self.host = host
        self.port = requested_port
        self._tcp_nodelay = tcp_nodelay
        self._on_presence = on_presence
        self._module = module
        self._process: subprocess.Popen[bytes] | None = None
        self._readers: list[threading.Thread] = []
        self._stopping = False
        self._failure: str | None = None
        self._ready = threading.Event()
        self._reply: dict[str, Any] | None = None
        self._outcome: dict[str, Any] | None = None
        self._tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BrokerStartError("the MQTT broker's process was never started")
        return self._process.pid

    @property
    def crashed(self) -> bool:
        process = self._process
        if self._failure is None and process is not None and not self._stopping and process.poll() is not None:
            self._failure = self._describe_exit(process)
        return self._failure is not None

    def raise_if_crashed(self) -> None:
        if self.crashed:
            raise BrokerCrashedError(self._failure)

    def restart(self) -> None:
        """Stop, then start again on the same port: every client is disconnected and must reconnect."""
        self.stop()
        self._start()

    def stop(self) -> None:
        """Stop the broker and its process; every presence event it emitted, down to the disconnects
        of the shutdown, has been handed to ``on_presence`` when this returns. Raises
        ``BrokerCrashedError`` if the process failed. Calling it again does nothing more."""
        process = self._process
        if process is not None and not self._stopping:
            self._stopping = True
            assert process.stdin is not None
            with contextlib.suppress(OSError):  # already gone: its exit is reported below
                process.stdin.write(b"stop\n")
                process.stdin.flush()
            with contextlib.suppress(OSError):
                process.stdin.close()
            try:
                process.wait(_SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                self._failure = f"MQTT broker on port {self.port} still running after {_SHUTDOWN_TIMEOUT_S}s"
            if not self._join_readers(_SHUTDOWN_TIMEOUT_S) and self._failure is None:
                self._failure = (
                    f"MQTT broker on port {self.port}: its presence events were still being delivered "
                    f"after {_SHUTDOWN_TIMEOUT_S}s (a blocked presence hook?)"
                )
            if self._failure is None and (process.returncode != 0 or self._outcome != {"stopped": True}):
                self._failure = self._describe_exit(process)
        self.raise_if_crashed()

    def __enter__(self) -> BrokerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        self._stopping = False
        self._failure = None
        self._ready = threading.Event()
        self._reply = None
        self._outcome = None
        self._tail = deque(maxlen=_STDERR_TAIL_LINES)
        command = [sys.executable, "-m", self._module, "--host", self.host, "--port", str(self.port)]
        command += ["--log-level", str(log.getEffectiveLevel())]
        if not self._tcp_nodelay:
            command.append("--no-tcp-nodelay")
        process = subprocess.Popen(  # noqa: S603 -- our own interpreter and module, no shell
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=_PROJECT_ROOT,  # ``-m`` finds this package from the project's directory, wherever we run
        )
        self._process = process
        assert process.stdout is not None and process.stderr is not None
        self._readers = [
            threading.Thread(
                target=self._read_messages, args=(process.stdout,), name="mqtt-broker-events", daemon=True
            ),
            threading.Thread(target=self._relay_stderr, args=(process.stderr,), name="mqtt-broker-stderr", daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        if not self._ready.wait(_PROCESS_STARTUP_TIMEOUT_S):
            self._abandon(process)
            raise BrokerStartError(
                f"MQTT broker on port {self.port} did not start in {_PROCESS_STARTUP_TIMEOUT_S}s{self._tail_text()}"
            )
        reply = self._reply
        if reply is not None and "ready" in reply:
            self.port = int(reply["ready"])
            return
        self._abandon(process)
        if reply is not None and reply.get("error") == "port_in_use":
            raise BrokerPortInUseError(reply["message"])
        if reply is not None:
            raise BrokerStartError(f"{reply['message']}{self._tail_text()}")
        raise BrokerStartError(
            f"the MQTT broker's process ended before listening on port {self.port} "
            f"({_exit_status(process.returncode)}){self._tail_text()}"
        )

    def _abandon(self, process: subprocess.Popen[bytes]) -> None:
        """A start that failed: the process is made to end and its output read to the end."""
        self._stopping = True
        with contextlib.suppress(OSError):
            process.kill()
        process.wait()
        self._join_readers(_SHUTDOWN_TIMEOUT_S)

    def _read_messages(self, stream: Any) -> None:
        for raw in stream:
            try:
                message = json.loads(raw)
            except ValueError:
                log.error("mqtt_broker_unreadable_message", extra={"line": raw[:200]})
                continue
            if "presence" in message:
                self._deliver(message["presence"])
            elif "ready" in message or "error" in message:
                self._reply = message
                self._ready.set()
            else:
                self._outcome = message
        self._ready.set()

    def _deliver(self, event: dict[str, Any]) -> None:
        if self._on_presence is None:
            return
        try:
            self._on_presence(event)
        except Exception:  # as in the broker itself: logged loudly, the next events still flow
            log.exception("presence_hook_failed", extra={"client_id": event.get("clientId")})

    def _relay_stderr(self, stream: Any) -> None:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace")
            self._tail.append(line.rstrip("\n"))
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):  # our stderr is gone or closed: the tail is still kept
                pass

    def _join_readers(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        return not any(reader.is_alive() for reader in self._readers)

    def _describe_exit(self, process: subprocess.Popen[bytes]) -> str:
        self._join_readers(2.0)  # its last words: the crash message and the end of its stderr
        code = process.returncode
        outcome = self._outcome or {}
        why = outcome.get("crashed") or _exit_status(code)
        return f"MQTT broker process {process.pid} on port {self.port} crashed: {why}{self._tail_text()}"

    def _tail_text(self) -> str:
        if not self._tail:
            return ""
        return "\nlast output of the broker's process:\n" + "\n".join(self._tail)


def _exit_status(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def start_broker_process(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tcp_nodelay: bool = True,
    on_presence: PresenceHook | None = None,
    module: str = "local.broker",
) -> BrokerProcess:
    """Start a broker in its own process and return once it accepts connections.

    As ``start_broker``: ``port=0`` binds a free port, a busy port raises ``BrokerPortInUseError``.
    ``on_presence`` is called on one reader thread of this process, in the broker's order. The
    broker gets its own interpreter, so its own GIL and a core of its own. ``module`` is the child's
    entry point (tests run one that breaks the broker on purpose).
    """
    running = BrokerProcess(host, port, tcp_nodelay, on_presence, module)
    running._start()
    return running


def _watch_parent(running: RunningBroker) -> None:
    for line in sys.stdin.buffer:
        if line.strip() == b"stop":
            running._request_stop()
            return
    # Our stdin ended without a stop: the parent is gone (kill -9). Nobody is left to take the
    # presence events, and the port must be free for the next start.
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    """``python -m local.broker``: the broker of ``start_broker_process``, driven by its parent."""
    parser = argparse.ArgumentParser(prog="python -m local.broker", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log-level", type=int, default=logging.WARNING, help="a number: 20 INFO, 30 WARNING")
    parser.add_argument("--no-tcp-nodelay", action="store_true", help="leave Nagle on (to measure it)")
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group; the parent stops the broker itself, after which the
    # shutdown's presence events still have somewhere to go.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # stdout is the channel to the parent; anything else printing there goes to stderr instead.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    from local.jsonlog import log_json_lines

    log_json_lines(args.log_level)
    sending = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        line = json.dumps(message, separators=(",", ":")) + "\n"
        with sending:
            channel.write(line)
            channel.flush()

    try:
        running = start_broker(
            args.host,
            args.port,
            tcp_nodelay=not args.no_tcp_nodelay,
            on_presence=lambda event: send({"presence": event}),
        )
    except BrokerPortInUseError as exc:
        send({"error": "port_in_use", "message": str(exc)})
        return 3
    except BrokerStartError as exc:
        send({"error": "start", "message": str(exc)})
        return 3
    send({"ready": running.port})
    threading.Thread(target=_watch_parent, args=(running,), name="parent-watch", daemon=True).start()
    running._thread.join()
    if running._failure is not None:
        send({"crashed": "".join(traceback.format_exception(running._failure)).rstrip()})
        return 1
    send({"stopped": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
