"""The merchant's view of its terminals (``GET /v1/terminals``)."""

from __future__ import annotations

from chalicelib.payments.ports import TerminalRepository
from chalicelib.payments.schemas import TerminalList, TerminalView


def list_terminals(repository: TerminalRepository, merchant_id: str, now_ms: int) -> TerminalList:
    return TerminalList(
        terminals=[
            TerminalView(
                terminal_id=terminal.terminal_id,
                online=terminal.online,
                last_seen_at=terminal.last_seen_at,
                busy=terminal.is_busy(now_ms),
                cloud_api_enabled=bool(terminal.passphrase),
            )
            for terminal in sorted(repository.list_for_merchant(merchant_id), key=lambda t: t.terminal_id)
        ]
    )
