"""The local stack's embedded store, for the admin commands given ``--data-dir``."""

from __future__ import annotations

import argparse
from pathlib import Path

from chalicelib.adapters.sqlite.db import FILE_NAME
from chalicelib.adapters.sqlite.store import SqliteStore


class NoLocalDataError(ValueError):
    pass


def open_local_store(data_dir: Path) -> SqliteStore:
    """The store in ``data_dir``; an error rather than a new empty store when there is none."""
    if not (Path(data_dir) / FILE_NAME).exists():
        raise NoLocalDataError(f"{data_dir}: no local stack data here (start `make run` with DATA_DIR={data_dir})")
    return SqliteStore.open(data_dir)


def data_dir_of(args: argparse.Namespace) -> Path | None:
    """The ``--data-dir`` given before the command, if any (commands run from tests may not have one)."""
    value = getattr(args, "data_dir", None)
    return Path(value) if value else None
