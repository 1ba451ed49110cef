"""IoT Core side of enrollment: the thing, its certificate, the policy attachment (AWS only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chalicelib.adapters.aws import client

THING_TYPE = "NeptingTerminal"


def provision_thing(terminal_id: str, merchant_id: str, policy_name: str, cert_dir: Path) -> dict[str, Any]:
    """Create the thing named after the terminal and an active certificate bound to it.

    The private key exists only in the files written here: hand them to the terminal, then delete them.
    """
    iot = client("iot")
    iot.create_thing(
        thingName=terminal_id,
        thingTypeName=THING_TYPE,
        attributePayload={"attributes": {"merchant_id": merchant_id}},
    )
    cert = iot.create_keys_and_certificate(setAsActive=True)
    iot.attach_policy(policyName=policy_name, target=cert["certificateArn"])
    iot.attach_thing_principal(thingName=terminal_id, principal=cert["certificateArn"])
    cert_dir.mkdir(parents=True, exist_ok=True)
    (cert_dir / f"{terminal_id}.cert.pem").write_text(cert["certificatePem"])
    key_path = cert_dir / f"{terminal_id}.private.key"
    key_path.touch(mode=0o600)
    key_path.write_text(cert["keyPair"]["PrivateKey"])
    endpoint = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    return {"certificate_arn": cert["certificateArn"], "cert_dir": str(cert_dir), "endpoint": endpoint}
