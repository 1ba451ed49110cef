"""The ECRs' process: ``python -m bench.ecr`` runs one job of the load (the floors, sequential or
concurrent payments) outside the stack's process, so that the load's threads neither take the
stack's GIL nor count in its CPU.

The bench's process talks to it in JSON lines: it writes the job on stdin; the ECR process prepares
(interpreter start, connections, a warm-up payment) and answers ``{"ready": true}``; the bench takes
its CPU snapshots and writes ``go``; the ECR process runs the job and answers the result: the
payments (``bench.load.Payment``: ``perf_counter`` readings, comparable across processes on one
machine), the wall time, and its own CPU time from ``go`` to the end (the load's CPU). Nothing else
may go to stdout, so the process sends whatever a library prints to stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from bench import load
from local.children import take_every_core

ROOT = Path(__file__).resolve().parents[1]


def run_job(job: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    kind = job["kind"]
    if kind == "http_floor":
        ready()
        return {"values": load.http_floor(job["host"], job["port"], job["samples"])}
    if kind == "mqtt_floor":
        ready()
        return {"values": load.mqtt_floor(job["host"], job["mqtt_port"], job["samples"])}
    credentials = (job["login"], job["password"])
    if kind == "sequential":
        terminal = load.Terminal(**job["terminal"])
        payments, wall_s = load.sequential(
            job["host"], job["port"], credentials, job["scenario"], terminal, job["count"], ready
        )
    elif kind == "concurrent":
        payments, wall_s = load.concurrent(
            job["host"],
            job["port"],
            credentials,
            job["scenario"],
            [load.Terminal(**t) for t in job["terminals"]],
            job["per_terminal"],
            job.get("offsets_s"),
            ready,
        )
    else:
        raise ValueError(f"unknown job {kind!r}")
    return {"payments": [p.as_dict() for p in payments], "wall_s": wall_s}


def _send(stream: IO[str], message: dict[str, Any]) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def main() -> int:
    take_every_core()  # not only the core the stack's process keeps to
    protocol, sys.stdout = sys.stdout, sys.stderr
    job = json.loads(sys.stdin.readline())
    cpu_started = [time.process_time()]

    def ready() -> None:
        _send(protocol, {"ready": True})
        if sys.stdin.readline().strip() != "go":
            raise RuntimeError("the bench went away before the load started")
        cpu_started[0] = time.process_time()

    try:
        result = run_job(job, ready)
    except Exception:
        _send(protocol, {"error": traceback.format_exc()})
        return 1
    result["cpu_s"] = time.process_time() - cpu_started[0]
    _send(protocol, result)
    return 0


# -- the bench's side ------------------------------------------------------------------------------


class EcrProcessError(RuntimeError):
    pass


class EcrProcess:
    """One job in its own process: ``wait_ready()``, then ``go()`` as the measurement starts.

    A watchdog kills the process after ``timeout_s`` (every job is bounded: a hung one would hang the
    bench); leaving the ``with`` block kills it if it is still there.
    """

    def __init__(self, job: dict[str, Any], timeout_s: float) -> None:
        self.job = job
        self._process = subprocess.Popen(  # this interpreter, a module of this repository
            [sys.executable, "-m", "bench.ecr"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self._watchdog = threading.Timer(timeout_s, self._process.kill)
        self._watchdog.daemon = True
        self._watchdog.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            code = self._process.wait()
            raise EcrProcessError(f"the ECR process ({self.job['kind']}) ended with code {code} and no answer")
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            raise EcrProcessError(f"the ECR process ({self.job['kind']}) failed:\n{message['error']}")
        return message

    def _write(self, line: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()

    def wait_ready(self) -> None:
        self._write(json.dumps(self.job))
        if not self._read().get("ready"):
            raise EcrProcessError("the ECR process answered something other than ready")

    def go(self) -> dict[str, Any]:
        self._write("go")
        result = self._read()
        self._process.wait()
        return result

    def close(self) -> None:
        self._watchdog.cancel()
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> EcrProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def run(job: dict[str, Any], timeout_s: float, before_go: Callable[[int], None] = lambda _pid: None) -> dict[str, Any]:
    """Run one job in an ECR process; ``before_go(pid)`` is called once it is ready, just before it starts."""
    with EcrProcess(job, timeout_s) as ecr:
        ecr.wait_ready()
        before_go(ecr.pid)
        return ecr.go()


if __name__ == "__main__":
    sys.exit(main())
