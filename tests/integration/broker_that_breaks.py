"""``python -m tests.integration.broker_that_breaks``: the broker's process, with a routing table
that fails on any message published under ``break/``, to see a broker crash from the parent's side."""

from __future__ import annotations

import sys

from local import broker

_upstream_matches = broker.IsolatingBroker._matches


def _matches(self: broker.IsolatingBroker, topic: str, a_filter: str) -> bool:
    if topic.startswith("break/"):
        raise RuntimeError("routing table corrupted")
    return bool(_upstream_matches(self, topic, a_filter))


broker.IsolatingBroker._matches = _matches  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(broker.main())
