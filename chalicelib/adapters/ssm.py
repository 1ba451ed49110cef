"""The IPN secret: from settings (local stack, tests) or an SSM SecureString (AWS), read once per process."""

from __future__ import annotations

import threading

from chalicelib.adapters.aws import client
from chalicelib.config import Settings
from chalicelib.exceptions import ConfigurationError


class IpnSecret:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._value: str | None = settings.ipn_secret or None
        self._lock = threading.Lock()

    def __call__(self) -> str:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._fetch()
        return self._value

    def _fetch(self) -> str:
        name = self._settings.ipn_secret_parameter
        if not name:
            raise ConfigurationError("set IPN_SECRET or IPN_SECRET_PARAMETER")
        found = client("ssm").get_parameter(Name=name, WithDecryption=True)
        value = str(found["Parameter"]["Value"])
        if not value:
            raise ConfigurationError(f"SSM parameter {name} is empty")
        return value
