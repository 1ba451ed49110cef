"""``python -m local.simulator``: run simulated terminals until SIGTERM or Ctrl-C, logging JSON lines.

Against the local broker, or AWS IoT Core with the device certificate from enrollment:

    python -m local.simulator --port 1883 --terminal PAX-1850320198 --passphrase … --behavior approve
    python -m local.simulator --host <iot-endpoint> --tls --ca root.pem --cert device.pem.crt \\
        --key private.pem.key --terminal PAX-1850320198 --passphrase …
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from local.jsonlog import log_json_lines
from local.simulator import BEHAVIORS, TerminalSpec, TlsFiles, run_terminals

log = logging.getLogger("local.simulator")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m local.simulator", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="default 1883, or 8883 with --tls")
    parser.add_argument("--terminal", default="PAX-1850320198", help="terminal id, MANUFACTURER-serial")
    parser.add_argument("--passphrase", required=True)
    parser.add_argument("--behavior", choices=BEHAVIORS, default="approve")
    parser.add_argument("--delay-ms", type=int, help="delay before the result (default 0; slow: 5000)")
    parser.add_argument("--count", type=int, help="run N terminals PAX-SIM0001… instead of --terminal")
    parser.add_argument("--tls", action="store_true", help="TLS with the device certificate (AWS IoT Core)")
    parser.add_argument("--ca", help="root CA (PEM)")
    parser.add_argument("--cert", help="device certificate (PEM)")
    parser.add_argument("--key", help="device private key (PEM)")
    args = parser.parse_args(argv)
    if args.tls and not (args.ca and args.cert and args.key):
        parser.error("--tls needs --ca, --cert and --key")
    if args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    log_json_lines(logging.INFO)
    tls = TlsFiles(args.ca, args.cert, args.key) if args.tls else None
    ids = [f"PAX-SIM{n:04d}" for n in range(1, args.count + 1)] if args.count else [args.terminal]
    specs = [TerminalSpec(tid, args.passphrase, args.behavior, args.delay_ms) for tid in ids]
    stopping = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    port = args.port or (8883 if args.tls else 1883)
    with run_terminals(specs, args.host, port, tls):
        log.info("simulator_ready", extra={"terminals": len(specs), "behavior": args.behavior})
        while not stopping.wait(0.5):
            pass
    return 0
