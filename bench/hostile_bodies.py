"""CPU time the payment route's parsing path spends on hostile bodies: what one request can cost.

    python -m bench.hostile_bodies                  # this checkout
    python -m bench.hostile_bodies --root ../other  # another checkout of the project, for comparison

Each body goes through what ``POST /v1/connector/order`` does before anything else: read the JSON,
validate the order, then (when valid) the idempotency hash and the echo written back. Every body is
measured in its own process (CPU time, with a memory cap and a time limit), and reported with its
size and the cost per KiB, beside an ordinary body of the same size as the baseline: the ratio to
it is the figure that matters, as it does not depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LIMIT_KIB = 64


def _order(**order: Any) -> dict[str, Any]:
    body = json.loads((ROOT / "examples" / "order-full.json").read_text())
    body["order"].update(order)
    return body


def bodies() -> dict[str, str]:
    """Name -> body text; the large ones fill the 64 KiB the route reads."""
    full = json.dumps(_order())
    size = LIMIT_KIB * 1024 - 200
    pad = size - len(full)
    return {
        "ordinary-64k (baseline)": '{"padding": "' + "x" * pad + '", ' + full[1:],
        "custom_data 1E+300000": full.replace('"custom_data": {', '"custom_data": {"k": 1E+300000, ', 1),
        "unknown field 1E+300000": '{"x": 1E+300000, ' + full[1:],
        "tax_rate 1E-999999999": full.replace('"tax_rate": 0', '"tax_rate": 1E-999999999', 1),
        "total_amount 1E+30": full.replace('"total_amount": 8.99', '"total_amount": 1E+30', 1),
        "many exponents-64k": '{"x": [' + ",".join(["9e20"] * (pad // 5)) + "], " + full[1:],
        "30-digit integers-64k": '{"x": [' + ",".join(["9" * 30] * (pad // 31)) + "], " + full[1:],
        "deep nesting-64k": '{"x": ' + "[" * (pad // 2) + "]" * (pad // 2) + ", " + full[1:],
        "brackets at depth 32-64k": '{"x": [' + ",".join(["[" * 30 + "]" * 30] * (pad // 61)) + "], " + full[1:],
        "escaped strings-64k": '{"x": "' + "\\u00e9" * (pad // 6) + '", ' + full[1:],
    }


_CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, 3 * 1024**3))
sys.path.insert(0, sys.argv[1])
from chalicelib import jsonutil
from chalicelib.errors import ApiError
from chalicelib.payments import schemas
text = sys.stdin.read().encode()
started = time.process_time()
outcome = "accepted"
try:
    raw = jsonutil.loads(text)
    request = schemas.parse_order_request(raw)
    request.payload_hash()
    parts = ("order", "customer", "pos_technical_info")
    echo = request.echo() if hasattr(request, "echo") else {k: raw[k] for k in parts if k in raw}
    jsonutil.dumps(echo)
except ApiError as error:
    outcome = f"{error.status} {error.code}"
except ValueError as error:  # what the route answers 400 (malformed JSON, or past a parsing limit)
    outcome = f"400 {getattr(error, 'reason', 'malformed_json')}"
except Exception as error:
    outcome = f"raised {type(error).__name__}"
print(json.dumps({"cpu_s": time.process_time() - started, "outcome": outcome}))
"""


def measure(root: Path, text: str, timeout_s: float) -> dict[str, Any]:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(root)],
            input=text,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"cpu_s": None, "outcome": f"over {timeout_s:.0f} s (killed)"}
    if done.returncode != 0:
        return {"cpu_s": None, "outcome": f"crashed: {done.stderr.strip().splitlines()[-1:]}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose chalicelib is measured")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds of wall time per body")
    args = parser.parse_args()
    rows = []
    for name, text in bodies().items():
        result = measure(args.root.resolve(), text, args.timeout)
        rows.append({"body": name, "bytes": len(text.encode()), **result})
    baseline = rows[0]["cpu_s"] or 1e-9
    print(f"{'body':28} {'bytes':>7} {'cpu ms':>9} {'× baseline':>10}  outcome")
    for row in rows:
        cpu = row["cpu_s"]
        shown = f"{cpu * 1000:9.1f} {cpu / baseline:10.1f}" if cpu is not None else f"{'-':>9} {'-':>10}"
        print(f"{row['body']:28} {row['bytes']:7d} {shown}  {row['outcome']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
