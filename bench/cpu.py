"""CPU time of the bench's process tree, by part: the stack (the bench's own process, where the local
stack runs, and every child process it starts, such as a broker) apart from the load (the simulated
terminals' processes and the ECRs' process).

Read from ``/proc/<pid>/stat`` (utime + stime of the whole thread group, in clock ticks), so it sees
child processes the stack starts without knowing about them: every live descendant of the bench's
process that is not a load process, nor a descendant of one, is the stack's.
"""

from __future__ import annotations

import contextlib
import os
import resource
from pathlib import Path

PROC = Path("/proc")
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
STACK = "stack process"
# The bench's main thread, in the stack's process but the harness's: told apart by its own clock.
HARNESS = "bench main thread"
# The simulated payment gateway (local/gateway.py): threads of the stack's process that stand in
# for an outside party, told apart by their thread group (bench/probes.py ``ThreadCpu.group``).
GATEWAY = "simulated gateway"
GATEWAY_THREADS = "gateway-ipn"


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds so far) of a live process; None once it has gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count fields after its ")".
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime field 14, stime field 15.
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def label_of(pid: int) -> str:
    """What a stack child process runs, from its command line: ``python -m local.broker`` reads
    ``local.broker``; a multiprocessing child reads ``multiprocessing child <pid>``."""
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"child {pid}"
    words = [a.decode(errors="replace") for a in argv if a]
    if "-m" in words[:-1]:
        return words[words.index("-m") + 1]
    joined = " ".join(words)
    if "resource_tracker" in joined:
        return "multiprocessing resource tracker"
    if "multiprocessing" in joined:
        return f"multiprocessing child {pid}"
    return Path(words[0]).name if words else f"child {pid}"


class ProcessCpu:
    """``snapshot(load)``: CPU seconds so far of each live process of the tree, labelled by part.

    ``load`` maps the load's process ids to their part (``"simulated terminals"``, ``"ECRs"``); their
    descendants take their part. The difference of two snapshots (``spent``) is what each part used
    in between; a process that started in between counts whole, one that ended in between is lost
    (the load's short-lived ECR process reports its own CPU instead).
    """

    def __init__(self, root: int | None = None) -> None:
        self.root = root if root is not None else os.getpid()
        self._labels: dict[int, str] = {}

    def snapshot(self, load: dict[int, str]) -> dict[int, tuple[str, float]]:
        if not PROC.is_dir():
            # Without /proc (not Linux) only this process is seen: the stack's part, its children and
            # the terminals' processes unaccounted (the report shows them as missing).
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return {self.root: (STACK, usage.ru_utime + usage.ru_stime)}
        parents: dict[int, int] = {}
        spent: dict[int, float] = {}
        for entry in PROC.iterdir():
            if not entry.name.isdigit():
                continue
            found = _stat(int(entry.name))
            if found is not None:
                parents[int(entry.name)], spent[int(entry.name)] = found
        parts: dict[int, tuple[str, float]] = {}
        for pid, seconds in spent.items():
            part = self._part(pid, parents, load)
            if part is not None:
                parts[pid] = (part, seconds)
        return parts

    def _part(self, pid: int, parents: dict[int, int], load: dict[int, str]) -> str | None:
        if pid == self.root:
            return STACK
        chain = []
        current = pid
        while current in parents and current != self.root:
            chain.append(current)
            current = parents[current]
            if current <= 1:
                return None  # not ours
        if current != self.root:
            return None
        for ancestor in chain:  # the process itself first, then its parents up to the bench's children
            if ancestor in load:
                return load[ancestor]
        top = chain[-1]  # the bench's child this process descends from
        if top not in self._labels:
            self._labels[top] = f"stack child: {label_of(top)}"
        return self._labels[top]

    @staticmethod
    def spent(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
        """CPU seconds by part between two snapshots."""
        parts: dict[str, float] = {}
        for pid, (part, seconds) in after.items():
            earlier = before.get(pid)
            used = seconds - earlier[1] if earlier is not None and earlier[0] == part else seconds
            parts[part] = parts.get(part, 0.0) + max(used, 0.0)
        return parts


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit (children inherit it): the
    stack's process holds a socket per ECR (and, while the broker runs in it, one per terminal).
    Returns (soft, hard) as they stand after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        # Kept as it was if refused: the run reports the limit it had.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def set_apart(cpu_s: dict[str, float], part: str, seconds: float) -> None:
    """Move ``seconds`` of the stack's process to ``part``: threads of that process that are not the
    stack's (the bench's main thread, the simulated gateway), measured by their own clocks."""
    cpu_s[STACK] = max(cpu_s.get(STACK, 0.0) - seconds, 0.0)
    cpu_s[part] = cpu_s.get(part, 0.0) + seconds
