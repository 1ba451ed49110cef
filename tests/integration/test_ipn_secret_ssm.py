"""The IPN route's secret on AWS: read from SSM when only a parameter is named."""

from __future__ import annotations

import json
from typing import Any

from chalice.test import Client

from app import app
from chalicelib.adapters.aws import client
from chalicelib.config import Settings
from tests.console_helpers import IPN_SECRET, ipn_body, seed_merchant, signed_headers


def post(raw: bytes, headers: dict[str, str]) -> Any:
    with Client(app) as test_client:
        return test_client.http.post("/v1/ipn/nepting", headers=headers, body=raw)


def test_the_secret_comes_from_ssm_when_only_a_parameter_is_named(console_aws: Settings) -> None:
    import dataclasses

    from chalicelib import bootstrap

    client("ssm").put_parameter(Name="/nepting/ipn", Value="from-ssm", Type="SecureString")
    settings = dataclasses.replace(console_aws, ipn_secret="", ipn_secret_parameter="/nepting/ipn")
    bootstrap.install(bootstrap.build(settings))
    seed_merchant(settings, "M1")
    raw = json.dumps(ipn_body()).encode()
    assert post(raw, signed_headers(raw, secret="from-ssm")).status_code == 200
    assert post(raw, signed_headers(raw, secret=IPN_SECRET)).status_code == 401
