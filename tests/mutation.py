"""Mutation score of the payment core and the Console core: `make mutation` (both) or
`python -m tests.mutation --core payment --min 90` (what CI runs).

mutmut (configured under [tool.mutmut] in pyproject.toml) copies the code into mutants/, changes
one thing at a time and runs the unit tests that reach the changed function; a change no test
notices survives. This script runs it, then scores each module from mutants/**/*.py.meta and lists
the survivors, so a weak spot is named by file and mutant (`mutmut show NAME` prints the change).

Scoring: killed, timed out and caught by the type checker count as killed; survived, "no tests"
and suspicious count against the score; skipped mutants are left out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

CORES: dict[str, tuple[str, ...]] = {
    # Takes payments, applies terminal events, signs and verifies envelopes, holds the payment
    # states and authenticates merchants.
    "payment": (
        "chalicelib/protocol.py",
        "chalicelib/merchants/auth.py",
        "chalicelib/payments/domain.py",
        "chalicelib/payments/service.py",
        "chalicelib/payments/terminal_events.py",
        "chalicelib/payments/replies.py",
        "chalicelib/cards.py",
        "chalicelib/money.py",
        "chalicelib/keys.py",
    ),
    # Merges IPNs into the ledger, notifies merchants and exports the finance file.
    "console": (
        "chalicelib/console/domain.py",
        "chalicelib/console/ingest.py",
        "chalicelib/console/notifications.py",
        "admin/export.py",
    ),
}

KILLED = {1, 3, 36, 37, 24, -24, 152, 255}  # failed, pytest internal error, timeouts, type check
SURVIVED = {0}
SKIPPED = {34}
NOT_RUN = {None}  # left unchecked: the run was cut short


@dataclass
class ModuleScore:
    path: str
    killed: int = 0
    counted: int = 0
    survivors: list[str] = field(default_factory=list)
    not_run: int = 0

    @property
    def score(self) -> float:
        return 100.0 * self.killed / self.counted if self.counted else 100.0


def module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def score_module(path: str, root: Path) -> ModuleScore:
    result = ModuleScore(path)
    meta = root / "mutants" / f"{path}.meta"
    if not meta.exists():
        result.not_run = -1
        return result
    exit_codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    for name, code in sorted(exit_codes.items(), key=lambda item: _natural(item[0])):
        if code in SKIPPED:
            continue
        if code in NOT_RUN:
            result.not_run += 1
            continue
        result.counted += 1
        if code in KILLED:
            result.killed += 1
        else:
            result.survivors.append(name)
    return result


def _natural(name: str) -> tuple[str, int]:
    base, _, number = name.rpartition("_")
    return (base, int(number)) if number.isdigit() else (name, 0)


def run_mutmut(modules: tuple[str, ...], workers: int, only: bool) -> int:
    command = [str(Path(sys.executable).with_name("mutmut")), "run", "--max-children", str(workers)]
    if only:
        # Naming the mutants limits the run to these modules (and re-runs them, as CI starts clean).
        command += [f"{module_name(path)}.*" for path in modules]
    # mutmut redraws a progress line per mutant: its output goes to a file, shown only on failure.
    log = Path("mutants") / "run.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        print(log.read_text()[-4000:])
    return code


def report(scores: list[ModuleScore], core: str, show_survivors: bool) -> float:
    killed = sum(score.killed for score in scores)
    counted = sum(score.counted for score in scores)
    total = 100.0 * killed / counted if counted else 100.0
    print(f"\nMutation score, {core} core (killed / counted):")
    for score in scores:
        note = " (not run)" if score.not_run < 0 else (f", {score.not_run} not run" if score.not_run else "")
        print(f"  {score.path:42} {score.score:5.1f} %  {score.killed:4}/{score.counted:<4}{note}")
    print(f"  {'total':42} {total:5.1f} %  {killed:4}/{counted:<4}")
    if show_survivors:
        survivors = [name for score in scores for name in score.survivors]
        print(f"\nSurvivors ({len(survivors)}; `mutmut show NAME` prints the change):")
        for name in survivors:
            print(f"  {name}")
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core", choices=[*CORES, "all"], default="all")
    parser.add_argument("--min", type=float, default=0.0, help="fail when a scored core is below this percentage")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="score the last run without running mutmut")
    parser.add_argument("--quiet", action="store_true", help="scores only, no list of survivors")
    args = parser.parse_args(argv)

    root = Path.cwd()
    configured = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"])
    listed = {path for paths in CORES.values() for path in paths}
    if configured != listed:
        print(f"pyproject.toml [tool.mutmut] only_mutate and CORES differ: {sorted(configured ^ listed)}")
        return 2
    cores = list(CORES) if args.core == "all" else [args.core]
    if not args.report_only:
        modules = tuple(path for core in cores for path in CORES[core])
        started = time.monotonic()
        code = run_mutmut(modules, args.workers, only=args.core != "all")
        print(f"mutmut ran {time.monotonic() - started:.0f} s with {args.workers} workers (exit {code})")
        if code != 0:
            return code

    failed = False
    for core in cores:
        scores = [score_module(path, root) for path in CORES[core]]
        total = report(scores, core, show_survivors=not args.quiet)
        if any(score.not_run for score in scores):
            print(f"FAIL: some {core} core mutants were not run")
            failed = True
        elif total < args.min:
            print(f"FAIL: the {core} core scores {total:.1f} %, under {args.min:.0f} %")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
