"""Enrolling merchants and terminals: the records, the credentials, the passphrase shown once.

>>> passphrase = new_passphrase()
>>> len(passphrase) >= 32
True
"""

from __future__ import annotations

import re
import secrets

from chalicelib.exceptions import EnrollmentError
from chalicelib.merchants.auth import hash_password
from chalicelib.merchants.ports import MerchantRepository
from chalicelib.notify_urls import refusal_when_given
from chalicelib.payments.ports import Terminal, TerminalRepository
from chalicelib.protocol import terminal_id_for

_MANUFACTURER = re.compile(r"^[A-Za-z0-9]{1,32}$")
_SERIAL = re.compile(r"^[A-Za-z0-9]{1,64}$")
_MERCHANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MIN_PASSWORD_LENGTH = 12
# lenient (default): a basket whose arithmetic is off is accepted and flagged basket_mismatch, as
# HiPay's own examples need; strict: it is a 400.
BASKET_POLICIES = ("lenient", "strict")


def new_passphrase() -> str:
    return secrets.token_urlsafe(32)


def enroll_terminal(
    terminals: TerminalRepository,
    merchants: MerchantRepository,
    merchant_id: str,
    manufacturer: str,
    serial_number: str,
    passphrase: str | None = None,
    with_passphrase: bool = True,
) -> tuple[str, str | None]:
    """Create the terminal record; returns (terminal_id, passphrase). The passphrase is not retrievable later."""
    if not _MANUFACTURER.match(manufacturer) or not _SERIAL.match(serial_number):
        raise EnrollmentError("manufacturer must be [A-Za-z0-9]{1,32} and serial number [A-Za-z0-9]{1,64}")
    if merchants.get_merchant(merchant_id) is None:
        raise EnrollmentError(f"no merchant {merchant_id!r}: create it first")
    terminal_id = terminal_id_for(manufacturer, serial_number)
    secret = (passphrase or new_passphrase()) if with_passphrase else None
    terminals.create(Terminal(terminal_id=terminal_id, merchant_id=merchant_id, passphrase=secret))
    return terminal_id, secret


def rotate_passphrase(terminals: TerminalRepository, merchant_id: str, terminal_id: str) -> str:
    passphrase = new_passphrase()
    terminals.set_passphrase(terminal_id, merchant_id, passphrase)
    return passphrase


def create_merchant(
    merchants: MerchantRepository,
    merchant_id: str,
    login: str,
    password: str,
    notify_url: str | None = None,
    notify_passphrase: str | None = None,
    basket_policy: str = "lenient",
    allow_loopback_http: bool = False,
) -> str:
    """Create (or update) a merchant and its Basic credentials; returns the notification passphrase."""
    if not _MERCHANT.match(merchant_id):
        raise EnrollmentError("merchant id must be [A-Za-z0-9_-]{1,64}")
    if not login or ":" in login:
        raise EnrollmentError("login must be non-empty and contain no ':'")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise EnrollmentError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    refusal = refusal_when_given(notify_url, allow_loopback_http) if notify_url is not None else None
    if refusal:
        raise EnrollmentError(f"notify_url is refused ({refusal}): an https URL of a public address")
    if basket_policy not in BASKET_POLICIES:
        raise EnrollmentError(f"basket_policy must be one of {', '.join(BASKET_POLICIES)}")
    notify_passphrase = notify_passphrase or new_passphrase()
    merchants.put_merchant(merchant_id, notify_url, notify_passphrase, basket_policy)
    merchants.put_login(login, merchant_id, hash_password(password))
    return notify_passphrase
