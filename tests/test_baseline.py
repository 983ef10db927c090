"""Centralized baseline: a real short MNIST run (result.json + JSONL log) and the CLI's error path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gossip import config
from gossip.experiments.baseline import run

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_short_mnist_run_writes_result_and_log(data_root: Path, tmp_path: Path) -> None:
    cfg = config.load(REPO / "configs" / "mnist_baseline.yaml", [
        f"data.root={data_root}", "data.limit_train=3000", "data.limit_test=1000",
        "model.name=mnist_tiny", "train.epochs=2", "train.batch_size=32", "train.lr=0.05", "train.threads=1",
    ])
    result = run(cfg, tmp_path)

    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert result["kind"] == "centralized"
    assert result["dataset"] == "mnist" and result["model"] == "mnist_tiny"
    assert 10_000 < result["params"] < 60_000
    assert result["epochs"] == 2 and result["train_samples"] == 3000 and result["test_samples"] == 1000
    assert result["wall_s"] > 0
    assert 0.85 <= result["test_accuracy"] <= 1.0  # it learned: chance is 0.1
    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert all(0 <= h["test_accuracy"] <= 1 and h["test_loss"] > 0 for h in history)
    assert result["test_accuracy"] == history[-1]["test_accuracy"]

    events = [json.loads(line) for line in (tmp_path / "baseline.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events]
    assert names.count("config_resolved") == 1 and names[0] == "config_resolved"
    resolved = events[0]
    assert resolved["config_hash"] == config.config_hash(cfg)
    assert resolved["config"]["train"]["epochs"] == 2
    assert names.count("epoch_end") == 2 and names[-1] == "baseline_done"
    assert any(e["event"] == "model_built" and e["params"] == result["params"] for e in events)


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gossip.baseline", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_bad_config_key_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = _cli("--config", "configs/mnist_baseline.yaml", "--run-dir", str(tmp_path), "train.lrr=0.1")
    assert proc.returncode == 2
    assert proc.stderr == "error: train.lrr: unknown key (valid: " + proc.stderr.split("(valid: ", 1)[1]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "result.json").exists()


def test_bad_value_and_help(tmp_path: Path) -> None:
    proc = _cli("--config", "configs/mnist_baseline.yaml", "--run-dir", str(tmp_path), "train.epochs=0")
    assert proc.returncode == 2 and proc.stderr == "error: train.epochs: must be >= 1, got 0\n"
    helped = _cli("--help")
    assert helped.returncode == 0
    assert "--run-dir" in helped.stdout and "key=value" in helped.stdout and "result.json" in helped.stdout
