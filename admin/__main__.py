"""Operator commands, against AWS (or moto endpoints) and the local stack's data directory alike.
Against the local stack: make admin ARGS='create-merchant …' (the environment make run printed).

python -m admin create-merchant --merchant-id M1 --login shop --password '…' [--notify-url URL]
python -m admin enroll-terminal --merchant-id M1 --manufacturer PAX --serial 1850320198 [--csr terminal.csr]
python -m admin rotate-passphrase --merchant-id M1 --terminal PAX-1850320198
python -m admin revoke-login --login shop
python -m admin --data-dir .data enroll-terminal ...   # the local stack's embedded store (make run)

With ``--data-dir`` every command works on the SQLite store the local stack keeps there, also while
the stack runs; without it, on the AWS resources the settings name.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
)

from admin import dlq, export
from admin.local import NoLocalDataError, data_dir_of, open_local_store
from chalicelib.config import get_settings
from chalicelib.exceptions import ConditionFailed, ConfigurationError
from chalicelib.merchants import enrollment
from chalicelib.merchants.ports import MerchantRepository
from chalicelib.payments.ports import TerminalRepository


def _repositories(args: argparse.Namespace) -> tuple[TerminalRepository, MerchantRepository]:
    data_dir = data_dir_of(args)
    if data_dir is not None:
        store = open_local_store(data_dir)
        return store.terminals, store.merchants
    from chalicelib.adapters.dynamodb.merchants import DynamoMerchantRepository
    from chalicelib.adapters.dynamodb.payments import DynamoTerminalRepository

    settings = get_settings()
    return DynamoTerminalRepository(settings.terminals_table), DynamoMerchantRepository(settings.merchants_table)


def create_merchant(args: argparse.Namespace) -> int:
    _, merchants = _repositories(args)
    password = args.password or _prompt_password()
    notify_passphrase = enrollment.create_merchant(
        merchants,
        args.merchant_id,
        args.login,
        password,
        args.notify_url,
        args.notify_passphrase,
        args.basket_policy,
        allow_loopback_http=bool(get_settings().notify_allow_loopback_http),
    )
    print(
        json.dumps(
            {
                "merchant_id": args.merchant_id,
                "login": args.login,
                "notify_passphrase": notify_passphrase if not args.notify_passphrase else "(as given)",
            }
        )
    )
    return 0


def _prompt_password() -> str:
    try:
        return getpass.getpass("password: ")
    except EOFError:
        raise UsageError("no password given: pass --password, or type one at the prompt") from None


class UsageError(Exception):
    """A mistake in how the command was called: one line, no traceback."""


# The local stack's environment: `make admin ARGS=…` sets it; `make run` prints it.
_LOCAL_HINT = "against the local stack use make admin ARGS='…' (it reads the environment make run wrote)"


def enroll_terminal(args: argparse.Namespace) -> int:
    terminals, merchants = _repositories(args)
    csr_pem = None
    if args.csr:
        from admin.iot import read_csr

        try:
            csr_pem = read_csr(Path(args.csr))
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        terminal_id, passphrase = enrollment.enroll_terminal(
            terminals,
            merchants,
            args.merchant_id,
            args.manufacturer,
            args.serial,
            with_passphrase=not args.without_passphrase,
        )
    except ConditionFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    output: dict[str, object] = {"terminal_id": terminal_id, "merchant_id": args.merchant_id}
    if passphrase:
        output["passphrase"] = passphrase
        output["note"] = "the passphrase is shown once: configure it on the terminal now"
    settings = get_settings()
    exit_code = 0
    # The local stack's terminals connect to its own broker: no IoT thing to provision.
    if settings.terminal_channel == "iot" and not args.no_iot and not data_dir_of(args):
        from admin.iot import provision_thing, terminal_resource_name

        try:
            policy = args.iot_policy or terminal_resource_name(settings.stage)
            thing_type = args.thing_type or terminal_resource_name(settings.stage)
            output["iot"] = provision_thing(
                terminal_id, args.merchant_id, policy, thing_type, Path(args.cert_dir), csr_pem
            )
        except (BotoCoreError, ClientError) as exc:
            # The terminal is enrolled either way: its passphrase must still be shown, once.
            output["iot_error"] = str(exc)
            print(f"error: IoT provisioning of {terminal_id} failed: {exc}", file=sys.stderr)
            exit_code = 1
    print(json.dumps(output, indent=2))
    return exit_code


def rotate_passphrase(args: argparse.Namespace) -> int:
    terminals, _ = _repositories(args)
    try:
        passphrase = enrollment.rotate_passphrase(terminals, args.merchant_id, args.terminal)
    except ConditionFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "terminal_id": args.terminal,
                "passphrase": passphrase,
                "note": "shown once; the old passphrase stops working now",
            },
            indent=2,
        )
    )
    return 0


def revoke_login(args: argparse.Namespace) -> int:
    _, merchants = _repositories(args)
    if not merchants.delete_login(args.login):
        print(f"error: no login {args.login!r}", file=sys.stderr)
        return 1
    print(json.dumps({"login": args.login, "note": "revoked: requests with it are refused from now on"}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m admin", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        # make admin sets it from the environment make run wrote.
        default=os.environ.get("ADMIN_DATA_DIR") or None,
        help="the local stack's data directory (make run: .data): work on its embedded store instead of AWS",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    merchant = commands.add_parser("create-merchant", help="create a merchant and its Basic credentials")
    merchant.add_argument("--merchant-id", required=True)
    merchant.add_argument("--login", required=True)
    merchant.add_argument("--password", help="prompted for when omitted (keeps it out of shell history)")
    merchant.add_argument("--notify-url", help="default URL for merchant notifications")
    merchant.add_argument("--notify-passphrase", help="secret for X-Allopass-Signature (generated when omitted)")
    merchant.add_argument(
        "--basket-policy",
        choices=enrollment.BASKET_POLICIES,
        default="lenient",
        help="lenient (default): accept a basket that does not add up and flag it; strict: answer 400",
    )
    merchant.set_defaults(func=create_merchant)

    terminal = commands.add_parser("enroll-terminal", help="enroll a terminal and print its passphrase once")
    terminal.add_argument("--merchant-id", required=True)
    terminal.add_argument("--manufacturer", required=True)
    terminal.add_argument("--serial", required=True)
    terminal.add_argument(
        "--without-passphrase",
        action="store_true",
        help="enroll with the Cloud API service disabled (payments answer 403)",
    )
    terminal.add_argument("--no-iot", action="store_true", help="skip the IoT thing and certificate")
    terminal.add_argument(
        "--iot-policy", help="IoT policy to attach (default: the one infra/ deploys, nepting-cloud-api-STAGE-terminal)"
    )
    terminal.add_argument(
        "--thing-type", help="IoT thing type (default: the one infra/ deploys, nepting-cloud-api-STAGE-terminal)"
    )
    terminal.add_argument(
        "--csr",
        help="PEM certificate signing request made on the terminal: IoT Core signs it and the private key "
        "never leaves the terminal (production). Without it a key pair is made here (development).",
    )
    terminal.add_argument("--cert-dir", default="certs", help="where the certificate (and key) are written")
    terminal.set_defaults(func=enroll_terminal)

    rotate = commands.add_parser("rotate-passphrase", help="give a terminal a new passphrase (shown once)")
    rotate.add_argument("--merchant-id", required=True)
    rotate.add_argument("--terminal", required=True, help="terminal id, e.g. PAX-1850320198")
    rotate.set_defaults(func=rotate_passphrase)

    revoke = commands.add_parser("revoke-login", help="remove a login: its requests get 401 at once")
    revoke.add_argument("--login", required=True)
    revoke.set_defaults(func=revoke_login)

    dlq.register(commands)
    export.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (enrollment.EnrollmentError, UsageError, ConfigurationError, NoLocalDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NoRegionError:
        print(f"error: no AWS region: set AWS_DEFAULT_REGION; {_LOCAL_HINT}", file=sys.stderr)
        return 2
    except NoCredentialsError:
        print(f"error: no AWS credentials: configure them (aws configure); {_LOCAL_HINT}", file=sys.stderr)
        return 2
    except EndpointConnectionError as exc:
        print(f"error: cannot reach {exc.kwargs.get('endpoint_url')}: is make run still running?", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
