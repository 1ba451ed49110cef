"""The parent relays a channel's notifications to the Console side's process at most once a spell:
the first at once, the ones that come during the spell as one more when it ends, never none."""

from __future__ import annotations

import threading
import time

from local.console_process import SpellNotifier

# A liveness bound, not a speed one.
PATIENCE_S = 30.0


class Relayed:
    def __init__(self) -> None:
        self.channels: list[str] = []
        self.changed = threading.Condition()

    def __call__(self, channel: str) -> None:
        with self.changed:
            self.channels.append(channel)
            self.changed.notify_all()

    def wait_for(self, count: int) -> list[str]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.channels) >= count, PATIENCE_S), self.channels
            return list(self.channels)


def test_the_first_notification_of_a_spell_is_relayed_at_once_and_the_others_wait_for_its_end() -> None:
    relayed = Relayed()
    notifier = SpellNotifier(relayed, spell_s=3600)
    try:
        for _ in range(100):
            notifier.notify("ipn")
        assert relayed.channels == ["ipn"]
    finally:
        notifier.close()


def test_what_came_during_a_spell_is_relayed_once_when_it_ends() -> None:
    relayed = Relayed()
    notifier = SpellNotifier(relayed, spell_s=0.05)
    try:
        for _ in range(100):
            notifier.notify("ipn")
        assert relayed.wait_for(2) == ["ipn", "ipn"]
        time.sleep(0.3)  # several spells with nothing new: nothing more to relay
        assert relayed.channels == ["ipn", "ipn"]
    finally:
        notifier.close()


def test_each_channel_has_its_own_spell() -> None:
    relayed = Relayed()
    notifier = SpellNotifier(relayed, spell_s=3600)
    try:
        notifier.notify("ipn")
        notifier.notify("nepting-payments")
        notifier.notify("ipn")
        assert relayed.channels == ["ipn", "nepting-payments"]
    finally:
        notifier.close()


def test_a_notification_after_a_quiet_spell_is_relayed_at_once() -> None:
    relayed = Relayed()
    notifier = SpellNotifier(relayed, spell_s=0.01)
    try:
        notifier.notify("ipn")
        time.sleep(0.05)
        notifier.notify("ipn")
        assert relayed.channels == ["ipn", "ipn"]
    finally:
        notifier.close()
