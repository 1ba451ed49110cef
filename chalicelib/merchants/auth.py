"""HTTP Basic authentication: slow salted hashes, constant-time checks, a short verified cache.

>>> stored = hash_password("s3cret")
>>> verify_password("s3cret", stored), verify_password("wrong", stored)
(True, False)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable

from chalicelib.errors import unauthorized
from chalicelib.limits import AuthGuard
from chalicelib.merchants.ports import LoginReader

# scrypt cost: ~30-60 ms per check on a Lambda core, which is why verified credentials are cached.
_N, _R, _P = 2**14, 8, 1
_DUMMY_HASH: str | None = None


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(digest, expected)


def parse_basic(header: str | None) -> tuple[str, str]:
    """``Basic base64(login:password)`` -> (login, password); anything else is a 401."""
    if not header:
        raise unauthorized()
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise unauthorized()
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise unauthorized() from None
    login, sep, password = decoded.partition(":")
    if not sep or not login or not password:
        raise unauthorized()
    return login, password


class Authenticator:
    """Resolves Basic credentials to a merchant id.

    A verified (login, password) pair is remembered for ``ttl_s`` as a keyed hash, never in clear,
    with the stored hash it was verified against, so the slow hash runs once per credential per warm
    process instead of on every request. The login's record is read on every request: a rotated
    password or a revoked login (``admin revoke-login``) stops working at once, in every process.

    Past the failed-authentication limits of ``guard`` (per login, per source address), the answer
    is a 429 and no slow hash runs.
    """

    def __init__(
        self,
        logins: LoginReader,
        ttl_s: int,
        clock: Callable[[], float] = time.monotonic,
        guard: AuthGuard | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._logins = logins
        self._ttl_s = ttl_s
        self._clock = clock
        self._guard = guard
        self._wall_clock = wall_clock
        self._key = secrets.token_bytes(32)
        self._cache: dict[str, tuple[bytes, str, float, str]] = {}
        self._in_flight: dict[tuple[bytes, str | None], _Verification] = {}
        self._lock = threading.Lock()

    def _fingerprint(self, login: str, password: str) -> bytes:
        return hmac.new(self._key, f"{login}\0{password}".encode(), hashlib.sha256).digest()

    def merchant_for(self, header: str | None, source: str | None = None) -> str:
        login, password = parse_basic(header)
        fingerprint = self._fingerprint(login, password)
        now = self._clock()
        record = self._logins.get_login(login)
        stored = record.get("password_hash") if record else None
        cached = self._cache.get(login)
        if (
            cached
            and stored
            and cached[2] > now
            and cached[3] == stored
            and hmac.compare_digest(cached[0], fingerprint)
        ):
            return cached[1]
        now_s = int(self._wall_clock())
        if self._guard is not None:
            self._guard.check(login, source, now_s)
        valid = self._verify_once(fingerprint, password, stored)
        if not (record and stored and valid):
            if self._guard is not None:
                self._guard.failed(login, source, now_s)
            raise unauthorized()
        merchant_id = str(record["merchant_id"])
        with self._lock:
            self._cache[login] = (fingerprint, merchant_id, now + self._ttl_s, str(stored))
        return merchant_id

    def _verify_once(self, fingerprint: bytes, password: str, stored: str | None) -> bool:
        """The slow hash, run once for requests that bring the same credentials at the same time:
        the others wait for its answer instead of each running it (200 payments arriving together
        on a cold cache were 200 hashes, seconds of CPU, before the first answer)."""
        key = (fingerprint, stored)
        with self._lock:
            flight = self._in_flight.get(key)
            leading = flight is None
            if flight is None:
                flight = self._in_flight[key] = _Verification()
        if leading:
            try:
                # Unknown logins cost the same hash, so timing does not tell which logins exist.
                flight.valid = verify_password(password, stored or _dummy_hash())
            finally:
                with self._lock:
                    del self._in_flight[key]
                flight.done.set()
            return flight.valid
        flight.done.wait()
        if flight.valid is None:  # the hash it waited for failed: run its own
            return verify_password(password, stored or _dummy_hash())
        return flight.valid


class _Verification:
    """One slow hash in progress, and its answer once known."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.valid: bool | None = None


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password(secrets.token_hex(8))
    return _DUMMY_HASH
