"""Benchmark harness: added latency, concurrency and cost per payment against the physical floor.

``make bench`` (``python -m bench.run``); see bench/README.md.
"""
