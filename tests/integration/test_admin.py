"""The operator commands (``python -m admin``) in-process, against moto: merchants, terminal
enrollment with its passphrase shown once, the IoT thing and certificate, passphrase rotation."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from admin.__main__ import main
from chalicelib.adapters.aws import client
from chalicelib.adapters.dynamodb.merchants import DynamoMerchantRepository
from chalicelib.adapters.dynamodb.payments import DynamoTerminalRepository
from chalicelib.config import Settings, get_settings
from chalicelib.merchants.auth import Authenticator

PASSWORD = "a-long-enough-password"
POLICY = "nepting-cloud-api-dev-terminal"  # what infra/ deploys for the dev stage
THING_TYPE = "nepting-cloud-api-dev-terminal"


@pytest.fixture
def admin_env(aws: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings come from the environment, read once per process: start each test from a clean read."""
    monkeypatch.setenv("TERMINAL_CHANNEL", "mqtt")
    get_settings.cache_clear()
    yield aws
    get_settings.cache_clear()


@pytest.fixture
def iot(admin_env: Settings, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TERMINAL_CHANNEL", "iot")
    get_settings.cache_clear()
    iot_client = client("iot")
    iot_client.create_thing_type(thingTypeName=THING_TYPE)
    iot_client.create_policy(
        policyName=POLICY,
        policyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}
        ),
    )
    return iot_client


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    output = json.loads(captured.out) if captured.out.strip() else None
    return code, output, captured.err


def terminals(settings: Settings) -> DynamoTerminalRepository:
    return DynamoTerminalRepository(settings.terminals_table)


def merchants(settings: Settings) -> DynamoMerchantRepository:
    return DynamoMerchantRepository(settings.merchants_table)


def create_merchant(capsys: pytest.CaptureFixture[str], merchant_id: str = "M1", *extra: str) -> dict[str, Any]:
    code, output, _ = run(
        capsys,
        "create-merchant",
        "--merchant-id",
        merchant_id,
        "--login",
        f"login-{merchant_id}",
        "--password",
        PASSWORD,
        *extra,
    )
    assert code == 0
    return dict(output)


def enroll(capsys: pytest.CaptureFixture[str], *extra: str, serial: str = "1850320198") -> tuple[int, Any, str]:
    return run(capsys, "enroll-terminal", "--merchant-id", "M1", "--manufacturer", "pax", "--serial", serial, *extra)


# -- merchants ----------------------------------------------------------------------------------------


def test_create_merchant_stores_a_login_that_authenticates_and_prints_no_password(
    admin_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output, _ = run(
        capsys,
        "create-merchant",
        "--merchant-id",
        "M1",
        "--login",
        "shop",
        "--password",
        PASSWORD,
        "--notify-url",
        "https://shop.example/notify",
    )
    assert code == 0
    assert output["merchant_id"] == "M1" and output["login"] == "shop"
    assert PASSWORD not in json.dumps(output)
    stored = merchants(admin_env).get_merchant("M1")
    assert stored is not None and stored["notify_url"] == "https://shop.example/notify"
    assert stored["notify_passphrase"] == output["notify_passphrase"] and len(output["notify_passphrase"]) >= 32
    header = "Basic " + base64.b64encode(f"shop:{PASSWORD}".encode()).decode()
    assert Authenticator(merchants(admin_env), 60).merchant_for(header) == "M1"


def test_a_given_notify_passphrase_is_stored_and_not_echoed(
    admin_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    output = create_merchant(capsys, "M1", "--notify-passphrase", "merchant-chosen-secret")
    assert output["notify_passphrase"] == "(as given)"
    stored = merchants(admin_env).get_merchant("M1")
    assert stored is not None and stored["notify_passphrase"] == "merchant-chosen-secret"


def test_password_is_prompted_for_when_omitted(
    admin_env: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("getpass.getpass", lambda prompt="": PASSWORD)
    code, _, _ = run(capsys, "create-merchant", "--merchant-id", "M1", "--login", "shop")
    assert code == 0
    header = "Basic " + base64.b64encode(f"shop:{PASSWORD}".encode()).decode()
    assert Authenticator(merchants(admin_env), 60).merchant_for(header) == "M1"


def test_a_password_prompt_with_no_input_is_a_one_line_hint(
    admin_env: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_input(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr("getpass.getpass", no_input)
    code, output, err = run(capsys, "create-merchant", "--merchant-id", "M1", "--login", "shop")
    assert (code, output) == (2, None)
    assert err.startswith("error: ") and "--password" in err and err.count("\n") == 1
    assert merchants(admin_env).get_merchant("M1") is None


def test_no_region_is_a_one_line_hint_naming_the_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from chalicelib.adapters import aws as aws_adapter

    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    aws_adapter.reset_clients()
    get_settings.cache_clear()
    try:
        code, _, err = run(capsys, "create-merchant", "--merchant-id", "M1", "--login", "shop", "--password", PASSWORD)
    finally:
        aws_adapter.reset_clients()
        get_settings.cache_clear()
    assert code == 2
    assert "AWS_DEFAULT_REGION" in err and "make admin" in err and err.count("\n") == 1


def test_replay_without_queue_urls_names_the_settings_and_make_admin(
    admin_env: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NOTIFICATIONS_DLQ_URL", "NOTIFICATIONS_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
    code = main(["replay-dlq", "--queue", "merchant-notifications"])
    err = capsys.readouterr().err
    assert code == 2
    assert "NOTIFICATIONS_DLQ_URL" in err and "NOTIFICATIONS_QUEUE_URL" in err and "make admin" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--merchant-id", "M 1", "--login", "shop", "--password", PASSWORD],
        ["--merchant-id", "M1", "--login", "sh:op", "--password", PASSWORD],
        ["--merchant-id", "M1", "--login", "shop", "--password", "short"],
        ["--merchant-id", "M1", "--login", "shop", "--password", PASSWORD, "--notify-url", "ftp://x"],
    ],
    ids=["merchant-id", "login-colon", "short-password", "notify-url"],
)
def test_invalid_merchant_input_exits_2_and_stores_nothing(
    admin_env: Settings, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, output, err = run(capsys, "create-merchant", *argv)
    assert (code, output) == (2, None) and err.startswith("error: ")
    assert merchants(admin_env).get_login("shop") is None and merchants(admin_env).get_merchant("M1") is None


# -- terminals ------------------------------------------------------------------------------------------


def test_enrolled_terminal_gets_a_passphrase_printed_once_and_stored(
    admin_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    create_merchant(capsys)
    code, output, _ = enroll(capsys)
    assert code == 0
    assert output["terminal_id"] == "PAX-1850320198" and output["merchant_id"] == "M1"
    assert len(output["passphrase"]) >= 32 and "once" in output["note"]
    assert "iot" not in output, "no IoT provisioning on the MQTT channel"
    stored = terminals(admin_env).get("PAX-1850320198")
    assert stored is not None and (stored.merchant_id, stored.passphrase) == ("M1", output["passphrase"])
    assert stored.online is False


def test_terminal_enrolled_without_passphrase_has_none(admin_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    create_merchant(capsys)
    code, output, _ = enroll(capsys, "--without-passphrase")
    assert code == 0 and "passphrase" not in output
    stored = terminals(admin_env).get("PAX-1850320198")
    assert stored is not None and stored.passphrase is None


def test_enrolling_the_same_terminal_twice_is_refused_and_keeps_the_first_passphrase(
    admin_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    create_merchant(capsys)
    create_merchant(capsys, "M2")
    _, first, _ = enroll(capsys)
    code, output, err = enroll(capsys)
    assert (code, output) == (1, None) and "already enrolled" in err
    code, _, err = run(
        capsys, "enroll-terminal", "--merchant-id", "M2", "--manufacturer", "PAX", "--serial", "1850320198"
    )
    assert code == 1, "another merchant cannot take an enrolled terminal"
    stored = terminals(admin_env).get("PAX-1850320198")
    assert stored is not None and (stored.merchant_id, stored.passphrase) == ("M1", first["passphrase"])


@pytest.mark.parametrize(
    ("merchant", "manufacturer", "serial"),
    [("M404", "PAX", "1"), ("M1", "PAX-X", "1"), ("M1", "PAX", "18-50")],
    ids=["unknown-merchant", "manufacturer", "serial"],
)
def test_invalid_enrollment_exits_2_and_stores_nothing(
    admin_env: Settings, capsys: pytest.CaptureFixture[str], merchant: str, manufacturer: str, serial: str
) -> None:
    create_merchant(capsys)
    code, output, err = run(
        capsys, "enroll-terminal", "--merchant-id", merchant, "--manufacturer", manufacturer, "--serial", serial
    )
    assert (code, output) == (2, None) and err.startswith("error: ")
    assert terminals(admin_env).list_for_merchant(merchant) == []


def test_rotation_prints_a_new_passphrase_and_the_old_one_stops_working(
    admin_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    create_merchant(capsys)
    _, enrolled, _ = enroll(capsys)
    code, output, _ = run(capsys, "rotate-passphrase", "--merchant-id", "M1", "--terminal", "PAX-1850320198")
    assert code == 0 and output["terminal_id"] == "PAX-1850320198"
    assert output["passphrase"] != enrolled["passphrase"] and len(output["passphrase"]) >= 32
    stored = terminals(admin_env).get("PAX-1850320198")
    assert stored is not None and stored.passphrase == output["passphrase"]


def test_rotation_enables_a_terminal_enrolled_without_passphrase(
    admin_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    create_merchant(capsys)
    enroll(capsys, "--without-passphrase")
    code, output, _ = run(capsys, "rotate-passphrase", "--merchant-id", "M1", "--terminal", "PAX-1850320198")
    assert code == 0
    assert terminals(admin_env).get("PAX-1850320198").passphrase == output["passphrase"]  # type: ignore[union-attr]


@pytest.mark.parametrize(("merchant", "terminal"), [("M2", "PAX-1850320198"), ("M1", "PAX-404")])
def test_rotation_of_another_merchants_or_an_unknown_terminal_exits_1(
    admin_env: Settings, capsys: pytest.CaptureFixture[str], merchant: str, terminal: str
) -> None:
    create_merchant(capsys)
    _, enrolled, _ = enroll(capsys)
    code, output, _ = run(capsys, "rotate-passphrase", "--merchant-id", merchant, "--terminal", terminal)
    assert (code, output) == (1, None)
    assert terminals(admin_env).get("PAX-1850320198").passphrase == enrolled["passphrase"]  # type: ignore[union-attr]
    assert terminals(admin_env).get("PAX-404") is None


def test_unknown_command_is_a_usage_error(admin_env: Settings) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["delete-everything"])
    assert caught.value.code == 2


# -- IoT provisioning --------------------------------------------------------------------------------------


def test_enrollment_on_iot_creates_the_thing_its_certificate_and_the_policy_attachment(
    iot: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    create_merchant(capsys)
    code, output, _ = enroll(capsys, "--cert-dir", str(tmp_path / "certs"))
    assert code == 0
    terminal_id = "PAX-1850320198"
    thing = iot.describe_thing(thingName=terminal_id)
    assert thing["thingTypeName"] == THING_TYPE and thing["attributes"] == {"merchant_id": "M1"}
    certificate_arn = output["iot"]["certificate_arn"]
    assert iot.list_thing_principals(thingName=terminal_id)["principals"] == [certificate_arn]
    assert [p["policyName"] for p in iot.list_attached_policies(target=certificate_arn)["policies"]] == [POLICY]
    certificate_id = certificate_arn.rsplit("/", 1)[1]
    described = iot.describe_certificate(certificateId=certificate_id)["certificateDescription"]
    assert described["status"] == "ACTIVE"
    cert_file = tmp_path / "certs" / f"{terminal_id}.cert.pem"
    key_file = tmp_path / "certs" / f"{terminal_id}.private.key"
    assert cert_file.read_text() == described["certificatePem"]
    assert "PRIVATE KEY" in key_file.read_text()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, "the private key is readable by its owner only"
    assert output["iot"]["endpoint"].endswith("-ats.iot.eu-west-3.amazonaws.com")
    assert output["passphrase"] and "PRIVATE KEY" not in json.dumps(output), "the key goes to the file only"


def test_no_iot_skips_provisioning(iot: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    create_merchant(capsys)
    code, output, _ = enroll(capsys, "--no-iot", "--cert-dir", str(tmp_path))
    assert code == 0 and "iot" not in output
    assert iot.list_things()["things"] == []
    assert list(tmp_path.iterdir()) == []


def test_refused_duplicate_enrollment_provisions_no_second_thing(
    iot: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    create_merchant(capsys)
    enroll(capsys, "--cert-dir", str(tmp_path))
    assert enroll(capsys, "--cert-dir", str(tmp_path))[0] == 1
    assert len(iot.list_certificates()["certificates"]) == 1


def test_failed_iot_provisioning_still_hands_over_the_passphrase(
    admin_env: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERMINAL_CHANNEL", "iot")
    get_settings.cache_clear()
    client("iot").create_thing_type(thingTypeName=THING_TYPE)  # but no policy: the attachment fails
    create_merchant(capsys)
    code, output, err = enroll(capsys, "--cert-dir", str(tmp_path))
    stored = terminals(admin_env).get("PAX-1850320198")
    assert stored is not None and stored.passphrase
    assert code == 1 and "IoT provisioning of PAX-1850320198 failed" in err
    assert output is not None and output["passphrase"] == stored.passphrase
    assert "AttachPolicy" in output["iot_error"] and "iot" not in output


def _csr(path: Path) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "PAX-1850320198")]))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(request.public_bytes(serialization.Encoding.PEM))
    return path


def test_enrollment_from_a_csr_signs_the_terminals_request_and_writes_no_private_key(
    iot: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    create_merchant(capsys)
    csr = _csr(tmp_path / "terminal.csr")
    code, output, _ = enroll(capsys, "--csr", str(csr), "--cert-dir", str(tmp_path / "certs"))
    assert code == 0
    terminal_id = "PAX-1850320198"
    certificate_arn = output["iot"]["certificate_arn"]
    assert iot.list_thing_principals(thingName=terminal_id)["principals"] == [certificate_arn]
    assert [p["policyName"] for p in iot.list_attached_policies(target=certificate_arn)["policies"]] == [POLICY]
    described = iot.describe_certificate(certificateId=certificate_arn.rsplit("/", 1)[1])["certificateDescription"]
    assert described["status"] == "ACTIVE"
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == [f"{terminal_id}.cert.pem"]
    assert "stays on the terminal" in output["iot"]["private_key"]


def test_an_unreadable_csr_is_refused_before_anything_is_enrolled(
    iot: Any, admin_env: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    create_merchant(capsys)
    not_a_csr = tmp_path / "key.pem"
    not_a_csr.write_text("-----BEGIN PRIVATE KEY-----\n")
    code, _, err = enroll(capsys, "--csr", str(not_a_csr), "--cert-dir", str(tmp_path / "certs"))
    assert code == 2 and "not a PEM certificate signing request" in err
    assert terminals(admin_env).get("PAX-1850320198") is None
    assert iot.list_things()["things"] == []
