"""``python -m tests.integration.broker_that_breaks``: the broker's process, with a routing table
that fails on any message published under ``break/``, to see a broker crash from the parent's side."""

from __future__ import annotations

import sys

from local import broker

_upstream_matching = broker.Subscriptions.matching


def _matching(self: broker.Subscriptions, topic: str) -> list[tuple[broker.Session, int]]:
    if topic.startswith("break/"):
        raise RuntimeError("routing table corrupted")
    return _upstream_matching(self, topic)


broker.Subscriptions.matching = _matching  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(broker.main())
