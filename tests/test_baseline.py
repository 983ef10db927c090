"""Centralized baseline: a real short MNIST run (result.json + JSONL log), the CLI's error paths, a
--help that does not wait for torch, the default run directory and the progress display."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from gossip import config
from gossip.errors import ConfigError
from gossip.experiments.baseline import TerminalProgress, run

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


def test_help_does_not_import_torch() -> None:
    code = ("import runpy, sys, time\nt0 = time.perf_counter()\nsys.argv = ['gossip.baseline', '--help']\n"
            "try:\n    runpy.run_module('gossip.baseline', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, time.perf_counter() - t0, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    imported, seconds = proc.stderr.split()
    assert imported == "False", "gossip.baseline --help imported torch"
    assert float(seconds) < 1.0
    assert "default: runs/baseline" in proc.stdout and "--fresh" in proc.stdout


def test_run_dir_defaults_to_runs_baseline_and_a_previous_run_is_refused(tmp_path: Path) -> None:
    previous = tmp_path / "runs" / "baseline"
    previous.mkdir(parents=True)
    (previous / "result.json").write_text("{}")
    proc = _cli("--config", str(REPO / "configs" / "mnist_baseline.yaml"), cwd=tmp_path)  # no --run-dir
    assert proc.returncode == 2
    assert proc.stderr == ("error: runs/baseline: holds a previous run; use --fresh to replace it, "
                           "or another --run-dir\n")
    assert (previous / "result.json").read_text() == "{}"
    with pytest.raises(ConfigError, match="holds a previous run"):
        run(config.load(None, []), previous)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_tty_and_one_line_per_epoch_otherwise() -> None:
    stats = SimpleNamespace(loss=0.5)
    record = {"train_loss": 0.5, "test_accuracy": 0.9, "test_loss": 0.3, "epoch_s": 1.0}
    for stream in (io.StringIO(), _Tty()):
        progress = TerminalProgress(2, stream)
        for step in range(10):
            progress(0, step, 10, stats, None)  # type: ignore[arg-type]
        progress(0, -1, 10, None, record)
        out = stream.getvalue()
        assert out.endswith("epoch 1/2  train_loss 0.5000  test_acc 0.9000  test_loss 0.3000  1.0s\n")
        if isinstance(stream, _Tty):
            assert "epoch 1/2:" in out and "/10 [" in out and "batch/s" in out  # tqdm, cleared before the line
        else:
            assert out.count("\n") == 1 and "nan" not in out and "\r" not in out
