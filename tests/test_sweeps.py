"""Tuning as configuration: swarm-only overrides and sweeps over any key, reported as a table and a plot."""

from __future__ import annotations

import json

import pytest
from test_plan import cfg_with
from test_report import arm, row, rows

from gossip.errors import ConfigError
from gossip.experiments import plan, report, sweeps


def density_rows():
    base = rows(0.985)[:3]
    points = []
    for value, acc, mb in ((0.003, 0.982, 0.6), (0.001, 0.97, 0.25)):
        r = row(f"sweep codec.density={value}", "sweep", acc, seeds=(0,), mb=mb)
        r["sweep"] = {"key": "codec.density", "value": value}
        points.append(r)
    lr = row("sweep train.lr=0.2", "sweep", 0.95, seeds=(0,))
    lr["sweep"] = {"key": "train.lr", "value": 0.2}
    return base + points + [lr]


def test_one_table_per_swept_key_with_the_base_arm_first():
    lines = sweeps.tables(density_rows())
    text = "\n".join(lines)
    assert "### Sweep over `codec.density`" in text and "### Sweep over `train.lr`" in text
    density = text.split("### Sweep over `train.lr`")[0]
    body = [line for line in density.splitlines() if line.startswith("| ") and "value" not in line]
    assert [line.split(" | ")[0] for line in body] == ["| base (the swarm arm)", "| 0.003", "| 0.001"]
    assert "| 0.001 | 97.00 ± 0.10 | — | 0.25 |" in density
    assert sweeps.tables(rows(0.98)[:3]) == []  # no sweep, no section


def test_report_embeds_the_sweep_tables_and_plots(tmp_path):
    arms = [arm("swarm", "swarm", "swarm", [0.9, 0.98])]
    out = report.write(tmp_path, {"arms": arms}, {"target_accuracy": None, "rows": density_rows()}, {})
    assert {"sweep_codec_density.png", "sweep_train_lr.png"} <= set(out["plots"])
    for name in ("sweep_codec_density.png", "sweep_train_lr.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    md = (tmp_path / "report.md").read_text()
    assert "## Sweeps" in md and "](sweep_codec_density.png)" in md and "### Sweep over `train.lr`" in md
    assert json.loads((tmp_path / "report.json").read_text())["plots"] == out["plots"]


def test_swarm_overrides_reach_swarm_and_sweep_arms_only():
    cfg = cfg_with({"swarm": {"train.lr": 0.2, "codec.density": 0.003},
                    "sweeps": {"communication.sync_interval": [2]}})
    arms = {a["name"]: a["config"] for a in plan.plan(cfg, plan.settings_from(cfg))}
    assert arms["swarm-seed0"].train.lr == 0.2 and arms["swarm-seed0"].codec.density == 0.003
    sweep = arms["sweep-communication.sync_interval-2-seed0"]
    assert sweep.train.lr == 0.2 and sweep.communication.sync_interval == 2
    assert arms["large-seed0"].train.lr == 0.05 and arms["small-seed0"].codec.density == 0.01


@pytest.mark.parametrize(("swarm", "message"), [
    ({"train.lr": "fast"}, "experiment.swarm.train.lr: train.lr: expected a number, got 'fast'"),
    ({"train.lrr": 0.1}, "experiment.swarm.train.lrr: train.lrr: unknown key"),
    ({"bad key": 1}, "experiment.swarm.bad key: not a config key"),
    ({"codec.density": float("nan")}, "experiment.swarm.codec.density: codec.density: expected a finite number"),
])
def test_bad_swarm_overrides_are_one_line_errors(swarm, message):
    with pytest.raises(ConfigError) as info:
        plan.settings_from(cfg_with({"swarm": swarm}))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
