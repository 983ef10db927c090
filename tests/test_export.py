"""CSV and TensorBoard export of per-epoch scalars (real runs are exported in test_custom_example.py)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from test_analyze import fake_baseline, fake_experiment, fake_swarm

from gossip.errors import DataError
from gossip.experiments import export

ROOT = Path(__file__).resolve().parents[1]


def read_tensorboard(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_swarm_rows_per_peer_and_epoch(tmp_path: Path):
    fake_swarm(tmp_path)
    records = export.rows(tmp_path)
    assert [(r["run"], r["epoch"]) for r in records] == [("peer-0", 1), ("peer-0", 2), ("peer-1", 1), ("peer-1", 2)]
    # the last epoch is the whole-test-split score; MB are cumulative per peer
    assert [r["test_accuracy"] for r in records] == [0.90, 0.97, 0.80, 0.95]
    assert [r["mb_sent"] for r in records] == [1.0, 3.0, 1.0, 3.0]


def test_csv_has_one_row_per_record_and_every_column(tmp_path: Path):
    fake_experiment(tmp_path / "exp")
    path = export.write_csv(export.rows(tmp_path / "exp"), tmp_path / "out" / "s.csv")
    with path.open() as f:
        table = list(csv.DictReader(f))
    assert {r["arm"] for r in table} == {"swarm-seed0", "swarm-seed1", "large-seed0", "large-seed1",
                                          "sweep-x-seed0"}
    central = [r for r in table if r["run"] == "centralized" and r["arm"] == "large-seed1"]
    assert [float(r["test_accuracy"]) for r in central] == [0.97, 0.99] and central[0]["mb_sent"] == ""


def test_tensorboard_event_files_open_with_tensorboards_reader(tmp_path: Path):
    fake_swarm(tmp_path / "run")
    folders = export.write_tensorboard(export.rows(tmp_path / "run"), tmp_path / "tb")
    assert sorted(f.name for f in folders) == ["peer-0", "peer-1"]
    scalars = read_tensorboard(tmp_path / "tb" / "run" / "peer-1")
    assert scalars["test_accuracy"] == [(1, pytest.approx(0.80)), (2, pytest.approx(0.95))]
    assert scalars["mb_sent"] == [(1, 1.0), (2, 3.0)]
    assert [v for _, v in scalars["train_loss"]] == [pytest.approx(0.5), pytest.approx(0.2)]


def test_a_folder_without_epochs_is_a_one_line_error(tmp_path: Path):
    fake_baseline(tmp_path)
    (tmp_path / "baseline.jsonl").write_text('{"event": "config_resolved", "config": {}}\n')
    with pytest.raises(DataError, match="no epoch_end events"):
        export.rows(tmp_path)


def test_the_cli_writes_both(tmp_path: Path):
    fake_swarm(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "gossip.analyze", str(tmp_path / "run"), "--csv",
                           str(tmp_path / "s.csv"), "--tensorboard", str(tmp_path / "tb")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s.csv").read_text().count("\n") == 5
    assert read_tensorboard(tmp_path / "tb" / "run" / "peer-0")["test_accuracy"][-1][1] == pytest.approx(0.97)
