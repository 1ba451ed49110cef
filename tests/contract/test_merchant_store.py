"""MerchantRepository: merchant settings and logins, as the Console and the authenticator read them."""

from __future__ import annotations

import base64

from chalicelib.merchants import enrollment
from chalicelib.merchants.auth import Authenticator
from chalicelib.merchants.ports import MerchantRepository


def test_merchant_and_login_round_trip(merchants: MerchantRepository) -> None:
    merchants.put_merchant("M1", "https://shop.example/notify", "notify-secret")
    merchants.put_login("shop", "M1", "scrypt$hash")
    assert merchants.get_merchant("M1") == {
        "pk": "MERCHANT#M1",
        "merchant_id": "M1",
        "notify_url": "https://shop.example/notify",
        "notify_passphrase": "notify-secret",
    }
    assert merchants.get_login("shop") == {
        "pk": "LOGIN#shop",
        "login": "shop",
        "merchant_id": "M1",
        "password_hash": "scrypt$hash",
    }
    assert merchants.get_login("M1") is None and merchants.get_merchant("shop") is None


def test_a_merchant_without_notify_url_has_none_stored(merchants: MerchantRepository) -> None:
    merchants.put_merchant("M1", None, "notify-secret")
    assert merchants.get_merchant("M1") == {
        "pk": "MERCHANT#M1",
        "merchant_id": "M1",
        "notify_passphrase": "notify-secret",
    }


def test_putting_a_merchant_again_replaces_its_settings(merchants: MerchantRepository) -> None:
    merchants.put_merchant("M1", "https://old.example/notify", "old")
    merchants.put_merchant("M1", "https://new.example/notify", "new")
    merchant = merchants.get_merchant("M1")
    assert merchant is not None
    assert (merchant["notify_url"], merchant["notify_passphrase"]) == ("https://new.example/notify", "new")


def test_merchant_created_by_enrollment_authenticates_through_the_store(merchants: MerchantRepository) -> None:
    enrollment.create_merchant(merchants, "M1", "shop", "a-long-password")
    merchant = merchants.get_merchant("M1")
    assert merchant is not None and "notify_url" not in merchant and len(merchant["notify_passphrase"]) >= 32
    login = merchants.get_login("shop")
    assert login is not None and "a-long-password" not in str(login)
    header = "Basic " + base64.b64encode(b"shop:a-long-password").decode()
    assert Authenticator(merchants, 60).merchant_for(header) == "M1"
