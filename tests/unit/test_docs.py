"""The documentation in docs/ says what the code does.

The worked signature examples are checked twice: with the project's own signers, and with nothing
but json/hmac/hashlib over the documented text, so neither side can drift alone. The lists the docs
give (error codes, fields, states, settings, seed fields, export columns) are compared with the code
they describe; most comparisons go both ways, and the ones that go one way say why.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
import re
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from admin.export import COLUMNS, SUMMARY_COLUMNS
from chalicelib import openapi
from chalicelib import protocol as env
from chalicelib.config import Settings
from chalicelib.console.domain import (
    STATUS_LABELS,
    OrderDetails,
    Transaction,
    apply_details,
    apply_ipn,
    status_for,
)
from chalicelib.console.ipn import IpnDeps, ipn_signature, verify
from chalicelib.console.notifications import (
    NotifierDeps,
    allopass_signature,
    deliver,
    encode_form,
    notification_fields,
    retry_delay_s,
)
from chalicelib.console.schemas import IpnBody, TransactionView, parse_ipn
from chalicelib.errors import ApiError
from chalicelib.payments.domain import RESULT_FIELDS, DispatchState, Reason, clean_result
from chalicelib.payments.schemas import (
    BasketLine,
    OrderRequest,
    OrderStatus,
    PaymentResponse,
    TerminalView,
    parse_order_request,
)
from chalicelib.payments.service import request_payment
from local.seed import Seed, SeedMerchant, SeedTerminal, SimulatorSpec
from local.simulated_payment import check_request
from local.simulator import BEHAVIORS
from tests.conftest import MERCHANT, World, example
from tests.fakes import FakeClock

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# Where error codes, settings and refusal reasons are defined, wherever the modules move to.
SOURCE_ROOTS = ("app.py", "chalicelib", "local", "admin", "infra/nepting_infra")


# -- reading the markdown ---------------------------------------------------------------------------


def doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def checked_block(text: str, name: str) -> str:
    """The fenced block right after ``<!-- check: name -->``, without its final newline."""
    match = re.search(rf"<!-- check: {re.escape(name)} -->\s*```[a-z]*\n(.*?)\n```", text, re.DOTALL)
    assert match, f"no checked block {name!r}"
    return match.group(1)


def section(text: str, title: str) -> str:
    """From the heading ``title`` to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(title)}\s*$", text, re.MULTILINE)
    assert match, f"no section {title!r}"
    level = len(match.group(1))
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def _cells(line: str) -> list[str]:
    # A `|` inside backticks (e.g. "`|`-separated") is text, not a column separator.
    cells, current, in_code = [], "", False
    for char in line.strip().strip("|"):
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code:
            cells.append(current.strip())
            current = ""
        else:
            current += char
    cells.append(current.strip())
    return cells


def tables(text: str) -> Iterator[tuple[list[str], list[list[str]]]]:
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].startswith("|") and index + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[index + 1]):
            header = [cell.lower() for cell in _cells(lines[index])]
            rows = []
            index += 2
            while index < len(lines) and lines[index].startswith("|"):
                rows.append(_cells(lines[index]))
                index += 1
            yield header, rows
        else:
            index += 1


def rows_of(text: str, *header: str) -> list[list[str]]:
    """Rows of every table whose header starts with ``header``."""
    found = [rows for head, rows in tables(text) if head[: len(header)] == list(header)]
    assert found, f"no table with header {header}"
    return [row for rows in found for row in rows]


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def first_column(text: str, *header: str) -> list[str]:
    return [name for row in rows_of(text, *header) for name in ticked(row[0])]


# -- reading the code ---------------------------------------------------------------------------------


def source_files(*roots: str) -> Iterator[Path]:
    for name in roots:
        path = ROOT / name
        yield from [path] if path.is_file() else sorted(path.rglob("*.py"))


def _call_name(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _const(node: ast.AST) -> Any:
    return node.value if isinstance(node, ast.Constant) else None


def error_codes_in_code() -> set[tuple[int, str]]:
    """Every (status, code) the code can answer with: ``ApiError(404, "x.y")``, ``(504, "x.y", …)``
    tables, pydantic custom errors (400 ``validation.<type>``), and helpers that build a code from a
    prefix and their argument (``validation_error("basket_total")``)."""
    code_pattern = re.compile(r"^[a-z_]+\.[a-z_]+$")
    trees = [ast.parse(path.read_text(encoding="utf-8")) for path in source_files(*SOURCE_ROOTS)]
    found: set[tuple[int, str]] = set()
    builders: dict[str, tuple[int, str, int]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Tuple) and len(node.elts) >= 2:
                status, code = _const(node.elts[0]), _const(node.elts[1])
                if (
                    isinstance(status, int)
                    and 400 <= status < 600
                    and isinstance(code, str)
                    and code_pattern.match(code)
                ):
                    found.add((status, code))
            elif isinstance(node, ast.Call) and _call_name(node) == "ApiError" and len(node.args) >= 2:
                status, code = _const(node.args[0]), _const(node.args[1])
                if isinstance(status, int) and isinstance(code, str):
                    found.add((status, code))
            elif isinstance(node, ast.Call) and _call_name(node) == "PydanticCustomError" and node.args:
                found.add((400, f"validation.{_const(node.args[0])}"))
            elif isinstance(node, ast.FunctionDef):
                params = [arg.arg for arg in node.args.args]
                for call in ast.walk(node):
                    if not (isinstance(call, ast.Call) and _call_name(call) == "ApiError" and len(call.args) >= 2):
                        continue
                    status, code = _const(call.args[0]), call.args[1]
                    if isinstance(status, int) and isinstance(code, ast.JoinedStr) and len(code.values) == 2:
                        prefix, hole = code.values
                        if (
                            isinstance(hole, ast.FormattedValue)
                            and isinstance(hole.value, ast.Name)
                            and hole.value.id in params
                        ):
                            builders[node.name] = (status, str(_const(prefix)), params.index(hole.value.id))
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node) in builders:
                status, prefix, position = builders[str(_call_name(node))]
                if len(node.args) > position and isinstance(_const(node.args[position]), str):
                    found.add((status, prefix + _const(node.args[position])))
    assert len(found) > 20, "the scan found too few codes to be looking at the right files"
    return found


def documented_error_codes() -> set[tuple[int, str]]:
    documented = set()
    for name in ("payment-api.md", "ipn.md"):
        for row in rows_of(doc(name), "status", "code"):
            documented |= {(int(row[0]), code) for code in ticked(row[1]) if "<" not in code}
    return documented


def model_paths(model: type[BaseModel], prefix: str = "", required: bool = True) -> dict[str, bool]:
    """Leaf field paths of a nested model -> whether a request must carry them."""
    paths: dict[str, bool] = {}
    for name, field in model.model_fields.items():
        path, needed = f"{prefix}{name}", required and field.is_required()
        nested = [arg for arg in typing.get_args(field.annotation) or (field.annotation,) if _is_model(arg)]
        if nested:
            paths |= model_paths(nested[0], f"{path}.", needed)
        else:
            paths[path] = needed
    return paths


def wire_names(model: type[BaseModel]) -> list[str]:
    """A response model's keys as the wire spells them (``paymentStatus``, not ``payment_status``)."""
    return [field.alias or name for name, field in model.model_fields.items()]


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


# -- terminal protocol: the worked examples -----------------------------------------------------------

EXAMPLES = ("request", "result")


def terminal_example(kind: str) -> tuple[str, dict[str, Any], str, str]:
    text = doc("terminal-protocol.md")
    return (
        checked_block(text, "terminal-passphrase"),
        json.loads(checked_block(text, f"terminal-{kind}-envelope")),
        checked_block(text, f"terminal-{kind}-canonical"),
        checked_block(text, f"terminal-{kind}-sig"),
    )


@pytest.mark.parametrize("kind", EXAMPLES)
def test_terminal_worked_example_is_what_the_project_signer_computes(kind: str) -> None:
    passphrase, envelope, canonical, sig = terminal_example(kind)
    unsigned = {key: value for key, value in envelope.items() if key != "sig"}
    assert env.canonical_json(unsigned) == canonical.encode("utf-8")
    assert env.signature(envelope, passphrase) == sig == envelope["sig"]
    assert env.verify_signature(env.decode(json.dumps(envelope, indent=2)), passphrase)
    assert not env.verify_signature({**envelope, "terminal_id": "PAX-OTHER01"}, passphrase)


@pytest.mark.parametrize("kind", EXAMPLES)
def test_terminal_worked_example_holds_by_an_independent_computation(kind: str) -> None:
    passphrase, envelope, canonical, sig = terminal_example(kind)
    unsigned = {key: value for key, value in envelope.items() if key != "sig"}
    assert json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False) == canonical
    assert hmac.new(passphrase.encode("utf-8"), canonical.encode("utf-8"), hashlib.sha256).hexdigest() == sig


def test_terminal_worked_example_states_the_canonical_length_in_bytes() -> None:
    _, _, canonical, _ = terminal_example("request")
    stated = re.search(r"\((\d+) bytes", doc("terminal-protocol.md"))
    assert stated and int(stated.group(1)) == len(canonical.encode("utf-8"))


def test_terminal_worked_examples_are_well_formed_messages() -> None:
    _, request, _, _ = terminal_example("request")
    check_request(request["type"], request["body"])  # the reference terminal would act on it
    _, result, _, _ = terminal_example("result")
    assert clean_result(result["body"]) == result["body"]  # the cloud keeps every field of it


# -- terminal protocol: messages ------------------------------------------------------------------------


def test_envelope_fields_are_the_ones_the_signer_writes() -> None:
    documented = first_column(section(doc("terminal-protocol.md"), "Envelope"), "field", "type")
    made = env.make_envelope("ack", "r-1", "PAX-1", {}, "p", sent_at="2026-11-28T03:12:00.123Z")
    assert documented == list(made)


def test_topics_are_the_ones_the_code_uses() -> None:
    documented = first_column(section(doc("terminal-protocol.md"), "Topics"), "topic", "direction")
    assert documented == [env.topic_for("{terminal_id}", kind) for kind in ("requests", "events", "status")]


def test_request_bodies_are_the_ones_the_cloud_publishes(world: World) -> None:
    text = doc("terminal-protocol.md")
    body = example()
    with pytest.raises(ApiError) as caught:  # nobody acknowledges: the payment request, then its cancel
        request_payment(world.payment_deps, MERCHANT, parse_order_request(body), body)
    assert caught.value.code == "terminal.ack_timeout"
    for kind in ("payment_request", "cancel_request"):
        documented = first_column(section(text, f"`{kind}` (cloud → terminal)"), "field", "type")
        assert sorted(documented) == sorted(world.last_request(kind)["body"]), kind


def test_result_fields_are_the_ones_the_cloud_keeps() -> None:
    documented = first_column(section(doc("terminal-protocol.md"), "`result` (terminal → cloud)"), "field", "type")
    assert sorted(documented) == sorted(RESULT_FIELDS)


def test_every_refusal_reason_of_terminal_messages_is_documented() -> None:
    # One way: a reason the code gives must be documented; the docs may describe refusals still to come.
    reasons = set()
    for path in source_files("chalicelib"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and _call_name(node) in ("EnvelopeError", "Refused") and node.args:
                if isinstance(_const(node.args[0]), str):
                    reasons.add(_const(node.args[0]))
            elif isinstance(node, ast.Call) and _call_name(node) == "count" and _const(node.args[0]) == "EventsRefused":
                reasons |= {_const(kw.value) for kw in node.keywords if kw.arg == "reason"} - {None}
    documented = set(first_column(doc("terminal-protocol.md"), "refusal reason", "meaning"))
    assert reasons and reasons <= documented, sorted(reasons - documented)


# -- payment API ------------------------------------------------------------------------------------------


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    import app as chalice_app

    served = {(method, path) for path, methods in chalice_app.app.routes.items() for method in methods}
    documented = {(ticked(row[0])[0], ticked(row[1])[0]) for row in rows_of(doc("payment-api.md"), "method", "path")}
    assert documented == served


def test_every_error_code_the_code_answers_with_is_documented_with_its_status() -> None:
    # One way on purpose: the docs also name codes of the interface that the code has yet to answer
    # with; a code the code answers with, or its status, missing from the docs is drift.
    missing = error_codes_in_code() - documented_error_codes()
    assert not missing, f"undocumented (status, code): {sorted(missing)}"


def test_every_status_the_openapi_document_gives_the_order_route_is_documented() -> None:
    declared = set(openapi.document()["paths"]["/v1/connector/order"]["post"]["responses"])
    documented = {row[0].strip("`") for row in rows_of(doc("payment-api.md"), "status", "when", "body")}
    assert declared <= documented, sorted(declared - documented)


def test_request_fields_and_whether_they_are_required_match_the_model() -> None:
    rows = rows_of(section(doc("payment-api.md"), "Request fields"), "field", "required")
    documented = {name: row[1] == "yes" for row in rows for name in ticked(row[0])}
    assert documented == model_paths(OrderRequest)


def test_every_basket_line_field_is_described() -> None:
    described = set(ticked(section(doc("payment-api.md"), "Basket")))
    assert set(BasketLine.model_fields) <= described


def test_payment_response_fields_match_the_model() -> None:
    documented = first_column(section(doc("payment-api.md"), "Responses"), "field", "meaning")
    assert sorted(documented) == sorted(wire_names(PaymentResponse))


def test_platform_error_codes_of_a_failed_payment_are_set_by_the_code() -> None:
    sources = "\n".join(path.read_text(encoding="utf-8") for path in source_files("chalicelib"))
    documented = first_column(section(doc("payment-api.md"), "Responses"), "`errorcode`", "meaning")
    assert documented
    for code in documented:
        assert f'"{code}"' in sources, code


def test_order_resource_fields_states_and_reasons_match_the_code() -> None:
    text = section(doc("payment-api.md"), "The order resource")
    assert sorted(first_column(text, "field", "meaning")) == sorted(wire_names(OrderStatus))
    # One way: `cancelling` is a state of the cancel handshake the docs describe.
    assert {state.value for state in DispatchState} <= set(first_column(text, "`state`", "meaning"))
    assert {reason.value for reason in Reason} == set(first_column(text, "`reason`", "meaning"))


def test_terminal_listing_example_has_the_fields_the_api_returns() -> None:
    block = re.search(r"```json\n(.*?)\n```", section(doc("payment-api.md"), "Terminals"), re.DOTALL)
    assert block
    assert sorted(json.loads(block.group(1))["terminals"][0]) == sorted(wire_names(TerminalView))


def test_transaction_fields_and_query_parameters_match_the_api() -> None:
    text = section(doc("payment-api.md"), "Transactions")
    assert sorted(first_column(text, "field", "meaning")) == sorted(wire_names(TransactionView))
    parameters = [p["name"] for p in openapi.document()["paths"]["/v1/transactions"]["get"]["parameters"]]
    assert sorted(first_column(text, "parameter", "meaning")) == sorted(parameters)


# -- IPN -----------------------------------------------------------------------------------------------------


def ipn_example() -> tuple[str, str, str, str]:
    text = doc("ipn.md")
    secret, timestamp, body, signature = (
        checked_block(text, f"ipn-{n}") for n in ("secret", "timestamp", "body", "signature")
    )
    return secret, timestamp, body, signature


def test_ipn_worked_example_passes_the_services_verifier() -> None:
    secret, timestamp, body, signature = ipn_example()
    assert ipn_signature(secret, timestamp, body.encode("utf-8")) == signature
    # Only the clock and the secret take part in verifying; nothing is stored.
    deps = IpnDeps(
        inbox=None, merchants=None, queue=None, secret=lambda: secret, clock=FakeClock(int(timestamp) * 1000 + 30_000)
    )
    headers = {"x-nepting-timestamp": timestamp, "x-nepting-signature": signature}
    verify(deps, headers, body.encode("utf-8"))
    with pytest.raises(ApiError) as caught:
        verify(deps, headers, body.replace('"amount":899', '"amount":999').encode("utf-8"))
    assert caught.value.code == "ipn.signature_invalid"
    assert parse_ipn(json.loads(body)).transaction_reference == "TX-20261128-0001"


def test_ipn_worked_example_holds_by_an_independent_computation() -> None:
    secret, timestamp, body, signature = ipn_example()
    message = f"{timestamp}.{body}".encode()
    assert hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest() == signature


def test_ipn_body_fields_and_whether_they_are_required_match_the_model() -> None:
    rows = rows_of(section(doc("ipn.md"), "Body"), "field", "required")
    documented = {ticked(row[0])[0]: row[1] == "yes" for row in rows}
    assert documented == {name: field.is_required() for name, field in IpnBody.model_fields.items()}


def test_ipn_status_mapping_is_the_codes_and_covers_every_case() -> None:
    rows = rows_of(doc("ipn.md"), "ipn `status`", "`operation`")
    cases = set()
    for row in rows:
        status, operation, code, label = (ticked(cell)[0] if ticked(cell) else cell for cell in row)
        assert status_for(status, operation) == int(code), row
        assert STATUS_LABELS[int(code)] == label, row
        cases.add((status, operation))
    literals = IpnBody.model_fields
    every = {
        (s, o)
        for s in typing.get_args(literals["status"].annotation)
        for o in typing.get_args(literals["operation"].annotation)
    }
    assert cases == every


# -- merchant notifications ------------------------------------------------------------------------------------


def verification_snippet() -> Callable[[bytes, str, str], bool]:
    namespace: dict[str, Any] = {}
    code = compile(
        checked_block(doc("merchant-notifications.md"), "verify-snippet"), "merchant-notifications.md", "exec"
    )
    exec(code, namespace)  # the documentation's own snippet, run as a reader would
    function: Callable[[bytes, str, str], bool] = namespace["verify_notification"]
    return function


def example_transaction() -> Transaction:
    """The transaction of the IPN worked example, with an order carrying custom data."""
    _, _, body, _ = ipn_example()
    tx = apply_ipn(None, parse_ipn(json.loads(body)), "2026-11-28T03:12:32.000Z")
    details = OrderDetails(
        merchant_id=tx.merchant_id,
        order_id=tx.order_id,
        attempt=1,
        terminal_id=tx.terminal_id,
        transaction_type="Debit",
        amount=899,
        currency="EUR",
        description="POS payment",
        notify_url=None,
        basket_json=None,
        customer_json=None,
        custom_data_json='{"internal_reference":"ORD_987465","customer_first_order":true}',
        created_at_ms=0,
        updated_at_ms=0,
    )
    return apply_details(tx, details)


class _Recorder:
    """Stands in for the merchant's server, the notifier's queues and its stores."""

    def __init__(self, tx: Transaction, passphrase: str) -> None:
        self.tx, self.passphrase = tx, passphrase
        self.posts: list[tuple[bytes, dict[str, str]]] = []

    def get(self, reference: str) -> Transaction | None:
        return self.tx if reference == self.tx.transaction_reference else None

    def record_delivery(self, reference: str, status_code: int) -> None:
        return None

    def get_merchant(self, merchant_id: str) -> dict[str, Any]:
        return {"notify_url": "https://merchant.example/notify", "notify_passphrase": self.passphrase}

    def send(self, body: dict[str, Any], delay_s: int = 0) -> None:
        raise AssertionError("a 2xx needs no retry and no parking")

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        self.posts.append((body, headers))
        return 200


def test_notification_snippet_accepts_what_the_notifier_sends_and_rejects_tampering() -> None:
    passphrase = "merchant's passphrase, é included"
    recorder = _Recorder(example_transaction(), passphrase)
    deps = NotifierDeps(recorder, recorder, recorder, recorder, recorder, FakeClock(), Settings())
    assert deliver(deps, {"transaction_reference": "TX-20261128-0001", "status_code": 118}) == "delivered"
    [(body, headers)] = recorder.posts
    verify_notification = verification_snippet()
    assert verify_notification(body, headers["X-Allopass-Signature"], passphrase)
    assert not verify_notification(body.replace(b"8.99", b"9.99"), headers["X-Allopass-Signature"], passphrase)
    assert not verify_notification(body, headers["X-Allopass-Signature"], "another passphrase")
    assert not verify_notification(body, "0" * 64, passphrase)


def test_notification_example_is_what_the_notifier_builds_and_signs() -> None:
    text = doc("merchant-notifications.md")
    passphrase, body, signature = (checked_block(text, f"notify-{n}") for n in ("passphrase", "body", "signature"))
    assert encode_form(notification_fields(example_transaction(), 118)).decode("ascii") == body
    assert allopass_signature(body.encode("utf-8"), passphrase) == signature
    assert hashlib.sha256((body + passphrase).encode("utf-8")).hexdigest() == signature
    assert verification_snippet()(body.encode("utf-8"), signature, passphrase)


def test_notification_form_fields_are_the_notifiers_in_order() -> None:
    documented = first_column(section(doc("merchant-notifications.md"), "The request"), "field", "value")
    sent = [
        re.sub(r"^custom_data\[.*\]$", "custom_data[KEY]", name)
        for name, _ in notification_fields(example_transaction(), 118)
    ]
    assert documented == list(dict.fromkeys(sent))


def test_notification_retry_delays_are_the_notifiers() -> None:
    text = " ".join(doc("merchant-notifications.md").split())
    stated = re.search(r"tried again after ((?:\d+ s, )+)then every (\d+) s", text)
    assert stated
    delays = [int(n) for n in re.findall(r"\d+", stated.group(1))] + [int(stated.group(2))] * 2
    assert [retry_delay_s(Settings(), failures) for failures in range(1, len(delays) + 1)] == delays


# -- export, seed and settings ---------------------------------------------------------------------------------


def test_export_columns_are_the_exporters_in_order() -> None:
    text = doc("export.md")
    assert first_column(section(text, "Transactions"), "column", "type") == list(COLUMNS)
    assert first_column(section(text, "Daily summary"), "column", "type") == list(SUMMARY_COLUMNS)


@pytest.mark.parametrize(
    ("title", "model"),
    [
        ("Top level", Seed),
        ("`merchants[]`", SeedMerchant),
        ("`terminals[]`", SeedTerminal),
        ("`simulator`", SimulatorSpec),
    ],
)
def test_every_seed_field_the_loader_accepts_is_documented(title: str, model: type[BaseModel]) -> None:
    # One way: the docs may describe a seed field the loader has yet to learn.
    documented = first_column(section(doc("seed.md"), title), "field", "required")
    assert set(model.model_fields) <= set(documented), sorted(set(model.model_fields) - set(documented))


def test_simulator_behaviours_are_the_simulators_and_the_seeds() -> None:
    documented = first_column(doc("seed.md"), "behaviour", "what the terminal does")
    behavior = SimulatorSpec.model_fields["behavior"].annotation
    assert sorted(documented) == sorted(BEHAVIORS) == sorted(typing.get_args(behavior))


def environment_in_code() -> set[str]:
    names = {field.upper() for field in Settings.__dataclass_fields__}
    pattern = re.compile(r"""(?:environ\.get\(|environ\[|\bport\()\s*["']([A-Z][A-Z0-9_]+)["']""")
    for path in source_files("chalicelib", "local", "admin"):
        names |= set(pattern.findall(path.read_text(encoding="utf-8")))
    return names


def test_every_environment_variable_is_documented_and_every_documented_one_is_read() -> None:
    documented = set(first_column(section(doc("seed.md"), "Environment variables"), "variable", "default"))
    read = environment_in_code()
    assert read <= documented, sorted(read - documented)
    sources = "\n".join(path.read_text(encoding="utf-8") for path in source_files("chalicelib", "local", "admin"))
    assert all(name in read or f'"{name}"' in sources for name in documented), sorted(documented - read)


def test_documented_setting_defaults_are_the_codes() -> None:
    rows = rows_of(section(doc("seed.md"), "Service settings"), "variable", "default")
    documented = {ticked(row[0])[0]: (ticked(row[1]) or [""])[0] for row in rows}
    defaults = {name.upper(): str(field.default) for name, field in Settings.__dataclass_fields__.items()}
    assert documented == defaults


# -- no reader needs anything outside the repository ------------------------------------------------------------


@pytest.mark.parametrize(
    "path", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda p: str(p.relative_to(ROOT))
)
def test_documentation_points_only_inside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "CONTRACT" not in text
    for target, anchor in re.findall(r"\]\(([^)#]*)(?:#([^)]*))?\)", text):
        if target.startswith(("http://", "https://")):
            continue
        resolved = (path.parent / target).resolve() if target else path
        assert resolved.is_relative_to(ROOT) and resolved.exists(), target
        if anchor and resolved.suffix == ".md":
            assert anchor in heading_anchors(resolved.read_text(encoding="utf-8")), f"{target}#{anchor}"


def heading_anchors(text: str) -> set[str]:
    """The anchors a Markdown renderer gives headings: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    titles = re.findall(r"^#+ (.+?)\s*$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-") for title in titles}
