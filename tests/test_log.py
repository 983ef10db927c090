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


def test_every_event_name_is_logged_at_one_level():
    """An event means one thing, so it has one level: filtering on ``level`` never splits an event."""
    import ast
    from collections import defaultdict
    from pathlib import Path

    levels: dict[str, set[str]] = defaultdict(set)
    for path in (Path(__file__).resolve().parents[1] / "gossip").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("debug", "info", "warning", "error", "critical")
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "log"
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                levels[node.args[0].value].add(node.func.attr)
    assert len(levels) > 50  # the scan sees the package's events
    mixed = {name: sorted(lv) for name, lv in levels.items() if len(lv) > 1}
    assert not mixed, f"events logged at more than one level: {mixed}"


def test_every_event_is_documented_in_docs_logs_md():
    """A user reading the logs finds every event name the package can write in docs/logs.md."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    names: dict[str, str] = {}
    for path in (root / "gossip").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("info", "warning", "error", "critical")
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "log"
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                names.setdefault(node.args[0].value, str(path.relative_to(root)))
    documented = set(re.findall(r"`([a-z][a-z0-9_]+)`", (root / "docs" / "logs.md").read_text()))
    missing = {n: where for n, where in names.items() if n not in documented}
    assert not missing, f"events not in docs/logs.md: {missing}"
