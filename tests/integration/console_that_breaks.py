"""``python -m tests.integration.console_that_breaks``: the Console side's process, with an
order-notification handler that fails on every batch, to see a poller crash from the parent's side."""

from __future__ import annotations

import sys
from typing import Any

import app
from local import console_process


def _broken(event: dict[str, Any], context: Any) -> Any:
    raise RuntimeError("order notification handler broken on purpose")


app.order_notifications_handler = _broken  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(console_process.main())
