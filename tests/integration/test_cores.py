"""Which cores the local stack's processes run on: the stack's own process keeps to one (its threads
take turns on one interpreter lock), its children take back every core it was given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

KEEPER = """
import json, os, subprocess, sys, threading
from pathlib import Path
from local.children import CPUS_ENV, keep_to_one_core

if os.environ.get("KEEPER_GIVEN"):  # as if started with fewer CPUs (taskset -c …)
    os.sched_setaffinity(0, {int(cpu) for cpu in os.environ["KEEPER_GIVEN"].split(",")})
stop = threading.Event()
started_before = threading.Thread(target=stop.wait)
started_before.start()
given = sorted(os.sched_getaffinity(0))
cpu = keep_to_one_core()
started_after = threading.Thread(target=stop.wait)
started_after.start()
masks = sorted({tuple(sorted(os.sched_getaffinity(int(task.name)))) for task in Path("/proc/self/task").iterdir()})
child = subprocess.run(
    [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True
)
stop.set()
print(json.dumps({"given": given, "cpu": cpu, "masks": masks, "env": os.environ.get(CPUS_ENV),
                  "child": json.loads(child.stdout)}))
"""

CHILD = """
import json, os
from local.children import take_every_core
inherited = sorted(os.sched_getaffinity(0))
take_every_core()
print(json.dumps({"inherited": inherited, "now": sorted(os.sched_getaffinity(0))}))
"""


def run_keeper(cpus: str | None = None) -> dict[str, object]:
    command = [sys.executable, "-c", f"CHILD = {CHILD!r}\n{KEEPER}"]
    env = {key: value for key, value in os.environ.items() if key != "LOCAL_STACK_CPUS"}
    if cpus is not None:
        env["KEEPER_GIVEN"] = cpus
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    return dict(json.loads(done.stdout))


needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")


@needs_affinity
def test_the_stacks_process_keeps_every_thread_to_one_core_and_its_children_take_back_the_others() -> None:
    given = sorted(os.sched_getaffinity(0))
    found = run_keeper()
    assert found["given"] == given
    if len(given) < 2:  # one CPU: nothing to keep to, nothing changed
        assert found["cpu"] is None and found["masks"] == [given] and found["env"] is None
        return
    cpu = found["cpu"]
    assert cpu in given
    # Threads started before and after, and the main thread: all on that one CPU.
    assert found["masks"] == [[cpu]]
    assert found["env"] == ",".join(str(c) for c in given)
    # A child started afterwards inherits the one core, and takes back every core the stack had.
    assert found["child"] == {"inherited": [cpu], "now": given}


@needs_affinity
def test_a_stack_given_one_cpu_changes_nothing() -> None:
    first = sorted(os.sched_getaffinity(0))[0]
    found = run_keeper(str(first))
    assert found["cpu"] is None
    assert found["masks"] == [[first]]
    assert found["env"] is None
    assert found["child"] == {"inherited": [first], "now": [first]}
