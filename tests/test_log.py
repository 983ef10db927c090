"""gossip.observe.log: a run's events go to the run's file, and the previous destination comes back after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gossip.observe.log import configure, get_logger, run_logging

log = get_logger("tests.test_log")


def _events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_runs_nest_and_restore_the_outer_sink(tmp_path: Path) -> None:
    outer, inner = tmp_path / "experiment.jsonl", tmp_path / "arm" / "launch.jsonl"
    try:
        with run_logging(outer):
            log.info("plan")
            with run_logging(inner, peer_id=3):
                log.info("arm_event")
            log.info("arm_done")
        log.info("after_every_run")  # back to nowhere, as before the first run
    finally:
        configure()
    assert [e["event"] for e in _events(outer)] == ["plan", "arm_done"]
    assert "peer_id" not in _events(outer)[1]  # the inner run's peer_id left with it
    [event] = _events(inner)
    assert event["event"] == "arm_event" and event["peer_id"] == 3 and event["level"] == "info"


def test_an_error_in_the_run_restores_the_sink_too(tmp_path: Path) -> None:
    outer, inner = tmp_path / "outer.jsonl", tmp_path / "inner.jsonl"
    configure(outer, peer_id=1)
    try:
        with pytest.raises(RuntimeError), run_logging(inner, level="warning"):
            log.info("filtered_out")  # the run's level applies inside it
            log.warning("update_rejected", reason="test")
            raise RuntimeError("boom")
        log.info("still_here")
    finally:
        configure()
    assert [e["event"] for e in _events(inner)] == ["update_rejected"]
    [event] = _events(outer)
    assert event["event"] == "still_here" and event["peer_id"] == 1
