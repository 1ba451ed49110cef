"""Metrics: counted in-process always; written as EMF lines on stdout (what CloudWatch reads on
Lambda) unless ``METRICS_EMF=false``, which the local stack sets after the module is imported."""

from __future__ import annotations

import json

import pytest

from chalicelib.observability import METRIC_COUNTS, count


def test_metrics_are_written_as_emf_lines_unless_turned_off_after_import(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = METRIC_COUNTS["EmfProbe"]
    monkeypatch.setenv("METRICS_EMF", "true")
    count("EmfProbe", reason="on")
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["EmfProbe"] == [1.0] and line["reason"] == "on"

    monkeypatch.setenv("METRICS_EMF", "false")
    count("EmfProbe", reason="off")
    assert capsys.readouterr().out == ""
    assert METRIC_COUNTS["EmfProbe"] == before + 2
    assert METRIC_COUNTS["EmfProbe.reason=off"] >= 1
