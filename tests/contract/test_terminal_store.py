"""TerminalRepository: enrolment, the busy claim, presence; the same answers from every store."""

from __future__ import annotations

import pytest

from chalicelib.exceptions import ConditionFailed
from chalicelib.payments.domain import Terminal
from chalicelib.payments.ports import TerminalRepository
from tests.conftest import PASSPHRASE, TERMINAL_ID
from tests.contract.builders import NOW, race
from tests.contract.stores import Stores


@pytest.fixture
def terminals(stores: Stores) -> TerminalRepository:
    stores.terminals.put(Terminal(TERMINAL_ID, "M1", PASSPHRASE, online=True))
    return stores.terminals


def test_terminal_round_trips_through_the_store(terminals: TerminalRepository) -> None:
    terminal = Terminal("ING-42", "M2", "pass", online=False, last_seen_at="2026-11-28T03:12:00.123Z", status_at_ms=7)
    terminals.put(terminal)
    assert terminals.get("ING-42") == terminal
    assert terminals.get(TERMINAL_ID) == Terminal(TERMINAL_ID, "M1", PASSPHRASE, online=True)
    assert terminals.get("PAX-404") is None


def test_a_read_terminal_is_a_copy_the_store_does_not_follow(terminals: TerminalRepository) -> None:
    read = terminals.get(TERMINAL_ID)
    assert read is not None
    read.busy_request_id, read.passphrase = "r-sneaky", "changed"
    assert terminals.get(TERMINAL_ID) == Terminal(TERMINAL_ID, "M1", PASSPHRASE, online=True)


def test_enrolling_a_free_terminal_id_creates_it(terminals: TerminalRepository) -> None:
    terminals.create(Terminal("ING-7", "M2", "p"))
    assert terminals.get("ING-7") == Terminal("ING-7", "M2", "p")


def test_enrolling_a_taken_terminal_id_fails_and_keeps_the_first(terminals: TerminalRepository) -> None:
    with pytest.raises(ConditionFailed):
        terminals.create(Terminal(TERMINAL_ID, "M2", "hijack"))
    found = terminals.get(TERMINAL_ID)
    assert found is not None and (found.merchant_id, found.passphrase) == ("M1", PASSPHRASE)


def test_passphrase_is_rotated_or_removed_only_by_its_merchant(terminals: TerminalRepository) -> None:
    with pytest.raises(ConditionFailed):
        terminals.set_passphrase(TERMINAL_ID, "M2", "stolen")
    terminals.set_passphrase(TERMINAL_ID, "M1", "rotated")
    assert terminals.get(TERMINAL_ID).passphrase == "rotated"  # type: ignore[union-attr]
    terminals.set_passphrase(TERMINAL_ID, "M1", None)
    assert terminals.get(TERMINAL_ID).passphrase is None  # type: ignore[union-attr]
    with pytest.raises(ConditionFailed):
        terminals.set_passphrase("PAX-404", "M1", "x")
    assert terminals.get("PAX-404") is None


def test_claim_marks_a_free_terminal_busy(terminals: TerminalRepository) -> None:
    assert terminals.claim(TERMINAL_ID, "r-1", NOW, NOW + 120_000, "M1#O-1")
    terminal = terminals.get(TERMINAL_ID)
    assert terminal is not None
    assert (terminal.busy_request_id, terminal.busy_until_ms, terminal.busy_order) == ("r-1", NOW + 120_000, "M1#O-1")
    assert terminal.is_busy(NOW) and not terminal.is_busy(NOW + 120_000)


def test_an_unexpired_claim_holds_and_is_left_untouched(terminals: TerminalRepository) -> None:
    terminals.claim(TERMINAL_ID, "r-1", NOW, NOW + 120_000)
    assert not terminals.claim(TERMINAL_ID, "r-2", NOW + 119_999, NOW + 240_000)
    terminal = terminals.get(TERMINAL_ID)
    assert terminal is not None and (terminal.busy_request_id, terminal.busy_until_ms) == ("r-1", NOW + 120_000)


@pytest.mark.parametrize("later_ms", [120_000, 500_000])
def test_an_expired_claim_is_taken_over(terminals: TerminalRepository, later_ms: int) -> None:
    terminals.claim(TERMINAL_ID, "crashed", NOW, NOW + 120_000)
    assert terminals.claim(TERMINAL_ID, "r-2", NOW + later_ms, NOW + later_ms + 120_000)
    assert terminals.get(TERMINAL_ID).busy_request_id == "r-2"  # type: ignore[union-attr]
    assert not terminals.release(TERMINAL_ID, "crashed"), "the old holder can no longer free it"


def test_claiming_an_unknown_terminal_fails_without_creating_it(terminals: TerminalRepository) -> None:
    assert not terminals.claim("PAX-404", "r-1", NOW, NOW + 1)
    assert terminals.get("PAX-404") is None


def test_release_frees_only_for_the_holder(terminals: TerminalRepository) -> None:
    terminals.claim(TERMINAL_ID, "r-1", NOW, NOW + 120_000)
    assert not terminals.release(TERMINAL_ID, "r-other")
    assert terminals.get(TERMINAL_ID).busy_request_id == "r-1"  # type: ignore[union-attr]
    assert terminals.release(TERMINAL_ID, "r-1")
    terminal = terminals.get(TERMINAL_ID)
    assert terminal is not None and (terminal.busy_request_id, terminal.busy_until_ms) == (None, 0)
    assert not terminals.release(TERMINAL_ID, "r-1"), "releasing twice is a no-op"
    assert terminals.claim(TERMINAL_ID, "r-2", NOW, NOW + 1)


def test_releasing_an_unknown_terminal_is_refused_without_creating_it(terminals: TerminalRepository) -> None:
    assert not terminals.release("PAX-404", "r-1")
    assert terminals.get("PAX-404") is None


def test_of_concurrent_claims_exactly_one_wins(terminals: TerminalRepository) -> None:
    for round_ in range(5):
        ids = [f"r-{round_}-{n}" for n in range(6)]
        outcomes = race(*[lambda rid=rid: terminals.claim(TERMINAL_ID, rid, NOW, NOW + 60_000) for rid in ids])
        assert outcomes.count(True) == 1 and outcomes.count(False) == 5, outcomes
        winner = ids[outcomes.index(True)]
        assert terminals.get(TERMINAL_ID).busy_request_id == winner  # type: ignore[union-attr]
        assert terminals.release(TERMINAL_ID, winner)


def test_status_newer_wins_and_older_is_ignored(terminals: TerminalRepository) -> None:
    assert terminals.record_status(TERMINAL_ID, False, NOW, "t1")
    assert not terminals.record_status(TERMINAL_ID, True, NOW - 1, "t0")
    terminal = terminals.get(TERMINAL_ID)
    assert terminal is not None and (terminal.online, terminal.status_at_ms, terminal.last_seen_at) == (
        False,
        NOW,
        "t1",
    )
    assert terminals.record_status(TERMINAL_ID, True, NOW, "t1-again"), "same instant: the later arrival wins"
    assert terminals.record_status(TERMINAL_ID, False, NOW + 5, "t2")
    terminal = terminals.get(TERMINAL_ID)
    assert terminal is not None and (terminal.online, terminal.last_seen_at) == (False, "t2")


def test_status_of_an_unknown_terminal_creates_nothing(terminals: TerminalRepository) -> None:
    assert not terminals.record_status("PAX-404", True, NOW, "t")
    assert terminals.get("PAX-404") is None


def test_status_keeps_the_claim(terminals: TerminalRepository) -> None:
    terminals.claim(TERMINAL_ID, "r-1", NOW, NOW + 60_000)
    terminals.record_status(TERMINAL_ID, False, NOW, "t")
    assert terminals.get(TERMINAL_ID).busy_request_id == "r-1"  # type: ignore[union-attr]


def test_list_for_merchant_sees_only_that_merchant(terminals: TerminalRepository) -> None:
    for terminal_id, merchant in (("ING-1", "M1"), ("ABC-9", "M1"), ("PAX-2", "M2")):
        terminals.put(Terminal(terminal_id, merchant, "p"))
    assert sorted(t.terminal_id for t in terminals.list_for_merchant("M1")) == ["ABC-9", "ING-1", TERMINAL_ID]
    assert [t.terminal_id for t in terminals.list_for_merchant("M2")] == ["PAX-2"]
    assert terminals.list_for_merchant("M3") == []
    found = {t.terminal_id: t for t in terminals.list_for_merchant("M1")}
    assert found[TERMINAL_ID] == Terminal(TERMINAL_ID, "M1", PASSPHRASE, online=True)
