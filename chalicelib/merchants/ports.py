"""What the merchants side needs from storage: merchant settings and login credentials."""

from __future__ import annotations

from typing import Any, Protocol


class MerchantReader(Protocol):
    """A merchant's settings (notification URL and passphrase); what the Console side reads."""

    def get_merchant(self, merchant_id: str) -> dict[str, Any] | None: ...


class LoginReader(Protocol):
    def get_login(self, login: str) -> dict[str, Any] | None: ...


class MerchantRepository(MerchantReader, LoginReader, Protocol):
    def put_merchant(
        self, merchant_id: str, notify_url: str | None, notify_passphrase: str, basket_policy: str = "lenient"
    ) -> None: ...

    def put_login(self, login: str, merchant_id: str, password_hash: str) -> None: ...

    def delete_login(self, login: str) -> bool:
        """Remove a login; False when there was none."""
        ...
