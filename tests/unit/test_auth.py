"""HTTP Basic authentication (docs/payment-api.md): parsing, slow salted hashes, the verified cache."""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

import pytest

from chalicelib.errors import ApiError
from chalicelib.merchants import auth
from chalicelib.merchants.auth import Authenticator, hash_password, parse_basic, verify_password

LOGIN, PASSWORD, MERCHANT_ID = "shop-1", "s3cret-passw0rd", "M1"
STORED = hash_password(PASSWORD)  # one slow hash for the whole module


def basic(credentials: str | bytes) -> str:
    raw = credentials.encode() if isinstance(credentials, str) else credentials
    return "Basic " + base64.b64encode(raw).decode()


class CountingLogins:
    def __init__(self, records: dict[str, dict[str, Any]] | None = None) -> None:
        self.records = (
            records if records is not None else {LOGIN: {"merchant_id": MERCHANT_ID, "password_hash": STORED}}
        )
        self.lookups: list[str] = []

    def get_login(self, login: str) -> dict[str, Any] | None:
        self.lookups.append(login)
        return self.records.get(login)


class ManualClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logins() -> CountingLogins:
    return CountingLogins()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def authenticator(logins: CountingLogins, clock: ManualClock) -> Authenticator:
    return Authenticator(logins, ttl_s=60, clock=clock)


def assert_unauthorized(error: ApiError) -> None:
    assert (error.status, error.code) == (401, "auth.unauthorized")
    assert error.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert error.body()["error"]["status"] == 401


# -- parsing ----------------------------------------------------------------------------------------


def test_basic_credentials_are_parsed() -> None:
    assert parse_basic(basic(f"{LOGIN}:{PASSWORD}")) == (LOGIN, PASSWORD)


def test_password_may_contain_colons_and_non_ascii() -> None:
    assert parse_basic(basic("shop:pa:ss:wörd")) == ("shop", "pa:ss:wörd")


def test_scheme_is_case_insensitive_and_surrounding_spaces_are_tolerated() -> None:
    encoded = base64.b64encode(b"shop:pw").decode()
    assert parse_basic(f"basic {encoded}") == ("shop", "pw")
    assert parse_basic(f"  BASIC   {encoded}  ") == ("shop", "pw")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "Basic",
        "Basic ",
        "Bearer " + base64.b64encode(b"shop:pw").decode(),
        "Digest username=shop",
        base64.b64encode(b"shop:pw").decode(),
        "Basic !!!not-base64!!!",
        "Basic c2hvcDpwdw",  # padding missing
        basic("no-colon-here"),
        basic("shop:"),
        basic(":password"),
        basic(":"),
        basic(b"\xff\xfe:\xfd"),
    ],
    ids=[
        "missing",
        "empty",
        "blank",
        "scheme-only",
        "scheme-and-space",
        "bearer",
        "digest",
        "no-scheme",
        "malformed-base64",
        "unpadded-base64",
        "no-colon",
        "empty-password",
        "empty-login",
        "colon-only",
        "not-utf8",
    ],
)
def test_anything_but_well_formed_basic_credentials_is_a_401(header: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        parse_basic(header)
    assert_unauthorized(caught.value)


# -- hashing ----------------------------------------------------------------------------------------


def test_scrypt_hash_verifies_only_its_password() -> None:
    assert verify_password(PASSWORD, STORED)
    assert not verify_password(PASSWORD + "x", STORED)
    assert not verify_password("", STORED)


def test_hash_is_salted_and_names_its_parameters() -> None:
    # Hashed here, not at import: the module's STORED is made before any test runs.
    stored = hash_password(PASSWORD)
    assert verify_password(PASSWORD, stored)
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    assert PASSWORD not in stored
    assert hash_password(PASSWORD, salt=b"0" * 16) == hash_password(PASSWORD, salt=b"0" * 16)
    assert hash_password(PASSWORD, salt=b"0" * 16) != hash_password(PASSWORD, salt=b"1" * 16)


@pytest.mark.parametrize(
    "stored",
    ["", "plaintext", "bcrypt$16384$8$1$AAAA$AAAA", "scrypt$x$8$1$AAAA$AAAA", "scrypt$16384$8$1$***$AAAA"],
    ids=["empty", "plain", "other-scheme", "bad-cost", "bad-base64"],
)
def test_unusable_stored_hashes_never_verify_and_never_raise(stored: str) -> None:
    assert verify_password(PASSWORD, stored) is False


# -- the authenticator and its cache ---------------------------------------------------------------------


def test_right_credentials_resolve_to_the_merchant(authenticator: Authenticator) -> None:
    assert authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}")) == MERCHANT_ID


def test_wrong_password_is_a_401(authenticator: Authenticator) -> None:
    with pytest.raises(ApiError) as caught:
        authenticator.merchant_for(basic(f"{LOGIN}:wrong"))
    assert_unauthorized(caught.value)


def test_second_call_skips_the_slow_hash_but_still_reads_the_login(
    authenticator: Authenticator, logins: CountingLogins, monkeypatch: pytest.MonkeyPatch
) -> None:
    authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}"))
    calls = spy_on_verify(monkeypatch)
    assert authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}")) == MERCHANT_ID
    assert logins.lookups == [LOGIN, LOGIN]
    assert calls == []


def test_wrong_password_after_a_cached_success_is_still_a_401(
    authenticator: Authenticator, logins: CountingLogins, monkeypatch: pytest.MonkeyPatch
) -> None:
    authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}"))
    with pytest.raises(ApiError) as caught:
        authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}-nope"))
    assert_unauthorized(caught.value)
    # and the cached success is not disturbed by the failure
    calls = spy_on_verify(monkeypatch)
    assert authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}")) == MERCHANT_ID
    assert calls == []


def test_the_slow_hash_runs_again_once_the_cache_expires(
    authenticator: Authenticator, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}"))
    calls = spy_on_verify(monkeypatch)
    clock.now += 59.9
    authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}"))
    assert len(calls) == 0
    clock.now += 0.1
    authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}"))
    assert len(calls) == 1


def test_a_rotated_password_takes_effect_at_once(authenticator: Authenticator, logins: CountingLogins) -> None:
    authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}"))
    logins.records[LOGIN] = {"merchant_id": MERCHANT_ID, "password_hash": hash_password("the-new-password")}
    with pytest.raises(ApiError) as caught:
        authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}"))
    assert_unauthorized(caught.value)
    assert authenticator.merchant_for(basic(f"{LOGIN}:the-new-password")) == MERCHANT_ID


def test_a_revoked_login_is_refused_at_once(authenticator: Authenticator, logins: CountingLogins) -> None:
    authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}"))
    del logins.records[LOGIN]
    with pytest.raises(ApiError) as caught:
        authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}"))
    assert_unauthorized(caught.value)


def test_cache_never_holds_the_password_in_clear(authenticator: Authenticator) -> None:
    authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}"))
    assert PASSWORD not in repr(vars(authenticator))


def test_caches_of_two_processes_do_not_share_fingerprints(logins: CountingLogins) -> None:
    first, second = Authenticator(logins, 60), Authenticator(logins, 60)
    first.merchant_for(basic(f"{LOGIN}:{PASSWORD}"))
    second.merchant_for(basic(f"{LOGIN}:{PASSWORD}"))
    assert first._fingerprint(LOGIN, PASSWORD) != second._fingerprint(LOGIN, PASSWORD)


def spy_on_verify(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    real = auth.verify_password

    def spy(password: str, stored: str) -> bool:
        calls.append((password, stored))
        return real(password, stored)

    monkeypatch.setattr(auth, "verify_password", spy)
    return calls


def test_unknown_login_still_costs_a_hash(authenticator: Authenticator, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_on_verify(monkeypatch)
    with pytest.raises(ApiError) as caught:
        authenticator.merchant_for(basic(f"nobody:{PASSWORD}"))
    assert_unauthorized(caught.value)
    assert len(calls) == 1 and calls[0][1].startswith("scrypt$16384$8$1$")


def test_the_hash_an_unknown_login_costs_is_made_once_and_is_a_real_scrypt_hash(
    authenticator: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "_DUMMY_HASH", None)
    for _ in range(2):
        with pytest.raises(ApiError) as caught:
            authenticator.merchant_for(basic(f"nobody:{PASSWORD}"))
        assert_unauthorized(caught.value)
    dummy = auth._DUMMY_HASH
    assert dummy is not None and dummy.startswith("scrypt$16384$8$1$")
    assert auth._dummy_hash() is dummy


def test_credentials_with_characters_outside_base64_are_a_401() -> None:
    # A lenient decoder would skip the stray characters and read valid credentials.
    header = basic(f"{LOGIN}:{PASSWORD}")
    with pytest.raises(ApiError) as caught:
        parse_basic(header[:10] + "!" + header[10:])
    assert_unauthorized(caught.value)


def test_login_record_without_a_hash_still_costs_a_hash_and_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    logins = CountingLogins({LOGIN: {"merchant_id": MERCHANT_ID}})
    calls = spy_on_verify(monkeypatch)
    with pytest.raises(ApiError):
        Authenticator(logins, 60).merchant_for(basic(f"{LOGIN}:{PASSWORD}"))
    assert len(calls) == 1


def test_malformed_header_is_refused_before_any_lookup(
    authenticator: Authenticator, logins: CountingLogins, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_on_verify(monkeypatch)
    with pytest.raises(ApiError):
        authenticator.merchant_for("Basic %%%")
    assert logins.lookups == [] and calls == []


# -- requests arriving together -------------------------------------------------------------------


def _gated_verify(monkeypatch: pytest.MonkeyPatch, outcome: Any = None) -> tuple[list[str], threading.Event]:
    """verify_password held until the gate opens (so requests overlap), recording each call;
    ``outcome``: an exception to raise instead of answering."""
    calls: list[str] = []
    gate = threading.Event()
    real = auth.verify_password

    def gated(password: str, stored: str) -> bool:
        calls.append(password)
        assert gate.wait(10)
        if outcome is not None:
            raise outcome
        return real(password, stored)

    monkeypatch.setattr(auth, "verify_password", gated)
    return calls, gate


def _together(count: int, call: Any) -> tuple[list[Any], list[threading.Thread]]:
    results: list[Any] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            value = call()
        except Exception as exc:  # the outcome under test may be an error
            value = exc
        with lock:
            results.append(value)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    return results, threads


def _when(condition: Any) -> None:
    deadline = time.monotonic() + 5
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_requests_arriving_together_with_the_same_credentials_run_one_slow_hash(
    authenticator: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls, gate = _gated_verify(monkeypatch)
    results, threads = _together(8, lambda: authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}")))
    _when(lambda: calls)
    time.sleep(0.05)  # the others are waiting for the first one's hash by now
    gate.set()
    for thread in threads:
        thread.join(10)
    assert results == [MERCHANT_ID] * 8
    assert calls == [PASSWORD]


def test_each_request_of_a_wrong_password_arriving_together_is_refused_and_counted(
    logins: CountingLogins, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures: list[str] = []

    class Guard:
        def check(self, login: str, _source: str | None, _now_s: int) -> None:
            pass

        def failed(self, login: str, _source: str | None, _now_s: int) -> None:
            failures.append(login)

    authenticator = Authenticator(logins, ttl_s=60, clock=clock, guard=Guard())  # type: ignore[arg-type]
    calls, gate = _gated_verify(monkeypatch)
    results, threads = _together(5, lambda: authenticator.merchant_for(basic(f"{LOGIN}:wrong")))
    _when(lambda: calls)
    time.sleep(0.05)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert [(r.status, r.code) for r in results] == [(401, "auth.unauthorized")] * 5
    assert calls == ["wrong"]
    assert failures == [LOGIN] * 5


def test_different_passwords_arriving_together_are_each_hashed(
    authenticator: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls, gate = _gated_verify(monkeypatch)
    right, right_threads = _together(1, lambda: authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}")))
    wrong, wrong_threads = _together(1, lambda: authenticator.merchant_for(basic(f"{LOGIN}:wrong")))
    _when(lambda: len(calls) == 2)
    gate.set()
    for thread in right_threads + wrong_threads:
        thread.join(10)
    assert sorted(calls) == sorted([PASSWORD, "wrong"])
    assert right == [MERCHANT_ID]
    assert [(e.status, e.code) for e in wrong] == [(401, "auth.unauthorized")]


def test_when_the_hash_waited_for_fails_the_waiting_requests_run_their_own(
    authenticator: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = auth.verify_password
    calls, gate = _gated_verify(monkeypatch, outcome=MemoryError("no room for scrypt"))
    results, threads = _together(3, lambda: authenticator.merchant_for(basic(f"{LOGIN}:{PASSWORD}")))
    _when(lambda: calls)
    time.sleep(0.05)
    own: list[tuple[str, str]] = []

    def own_hash(password: str, stored: str) -> bool:  # what the waiting ones run
        own.append((password, stored))
        return real(password, stored)

    monkeypatch.setattr(auth, "verify_password", own_hash)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert sorted(map(repr, results)) == sorted([repr(MemoryError("no room for scrypt")), "'M1'", "'M1'"])
    assert own == [(PASSWORD, STORED)] * 2
    assert authenticator._in_flight == {}
