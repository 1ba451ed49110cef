"""IoT Core side of enrollment: the thing, its certificate, the policy attachment (AWS only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chalicelib.adapters.aws import client

CSR_MARKER = "-----BEGIN CERTIFICATE REQUEST-----"


def terminal_resource_name(stage: str) -> str:
    """The thing type and the IoT policy infra/ deploys for a stage (both carry the stage's name)."""
    return f"nepting-cloud-api-{stage}-terminal"


def read_csr(path: Path) -> str:
    """A PEM certificate signing request made on the terminal; refused before anything is enrolled."""
    text = path.read_text()
    if CSR_MARKER not in text:
        raise ValueError(f"{path} is not a PEM certificate signing request ({CSR_MARKER})")
    return text


def provision_thing(
    terminal_id: str,
    merchant_id: str,
    policy_name: str,
    thing_type: str,
    cert_dir: Path,
    csr_pem: str | None = None,
) -> dict[str, Any]:
    """Create the thing named after the terminal and an active certificate bound to it.

    With ``csr_pem`` (production) IoT Core signs the terminal's own request: its private key never
    leaves the terminal, and only the certificate is written here. Without it (development) IoT
    Core makes the key pair too and the private key is written here: hand the files to the
    terminal, then delete them.
    """
    iot = client("iot")
    iot.create_thing(
        thingName=terminal_id,
        thingTypeName=thing_type,
        attributePayload={"attributes": {"merchant_id": merchant_id}},
    )
    if csr_pem is not None:
        cert = iot.create_certificate_from_csr(certificateSigningRequest=csr_pem, setAsActive=True)
    else:
        cert = iot.create_keys_and_certificate(setAsActive=True)
    iot.attach_policy(policyName=policy_name, target=cert["certificateArn"])
    iot.attach_thing_principal(thingName=terminal_id, principal=cert["certificateArn"])
    cert_dir.mkdir(parents=True, exist_ok=True)
    (cert_dir / f"{terminal_id}.cert.pem").write_text(cert["certificatePem"])
    provisioned: dict[str, Any] = {"certificate_arn": cert["certificateArn"], "cert_dir": str(cert_dir)}
    if csr_pem is None:
        key_path = cert_dir / f"{terminal_id}.private.key"
        key_path.touch(mode=0o600)
        key_path.write_text(cert["keyPair"]["PrivateKey"])
    else:
        provisioned["private_key"] = "stays on the terminal (signed from its certificate signing request)"
    provisioned["endpoint"] = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    return provisioned
