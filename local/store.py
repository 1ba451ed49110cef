"""The local stack's storage, chosen by ``STORE``: the embedded SQLite store (default) or moto.

``sqlite`` keeps every table, queue and stream in ``DATA_DIR`` (default ``.data/``), so a restart
(Ctrl-C or ``kill -9``) finds every order, attempt, transaction, queued message and terminal claim
where it was. ``moto`` runs today's AWS adapters against in-memory moto: what the AWS column of the
architecture runs, end to end, and nothing survives a restart.

    components = build_sqlite(settings, SqliteStore.open(".data"), channel)
"""

from __future__ import annotations

import os
from pathlib import Path

from chalicelib.adapters.sqlite.store import SqliteStore
from chalicelib.bootstrap import Components, authenticator
from chalicelib.config import Settings
from chalicelib.payments.ports import TerminalChannel
from chalicelib.ports import SystemClock
from local.waker import ThreadWaker

STORES = ("sqlite", "moto")
DEFAULT_DATA_DIR = Path(".data")


class StoreChoiceError(ValueError):
    pass


def store_from_env() -> str:
    store = os.environ.get("STORE", "sqlite").strip().lower() or "sqlite"
    if store not in STORES:
        raise StoreChoiceError(f"STORE must be one of {', '.join(STORES)}, got {store!r}")
    return store


def data_dir_from_env() -> Path:
    return Path(os.environ.get("DATA_DIR") or DEFAULT_DATA_DIR)


def open_store(data_dir: Path, settings: Settings) -> SqliteStore:
    return SqliteStore.open(data_dir, retention_s=settings.payment_retention_days * 86_400)


def build_sqlite(settings: Settings, store: SqliteStore, channel: TerminalChannel) -> Components:
    """The same components as ``bootstrap.build()``, with every table and queue in the SQLite store,
    and ``channel`` to the terminals (the local stack's broker)."""
    from chalicelib.adapters.http_notifier import UrllibFormPoster

    secret = settings.ipn_secret
    return Components(
        settings=settings,
        clock=SystemClock(),
        waker=ThreadWaker(),
        merchants=store.merchants,
        authenticator=authenticator(settings, store.merchants, store.limits),
        terminals=store.terminals,
        payments=store.payments,
        channel=channel,
        transactions=store.transactions,
        order_details=store.order_details,
        ipn_inbox=store.ipn_inbox,
        ipn_queue=store.ipn_queue,
        notifications=store.notifications,
        dead_letters=store.dead_letters,
        poster=UrllibFormPoster(settings.notify_timeout_s, bool(settings.notify_allow_loopback_http)),
        ipn_secret=lambda: secret,
        limits=store.limits,
    )
