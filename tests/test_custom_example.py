"""The README's bring-your-own example, run as a user runs it: one command, real peer processes.

``examples/custom/swarm.yaml`` names a user model and a user data set by import path; the swarm
trains, the run is exported as CSV and TensorBoard event files, and both read back.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from ports import free_port_block
from test_export import read_tensorboard

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_custom_model_and_data_example_trains_and_exports(tmp_path: Path):
    run = tmp_path / "custom"
    port = free_port_block(16)
    proc = subprocess.run(
        [sys.executable, "-m", "gossip.launch", "examples/custom/swarm.yaml", "--run-dir", str(run),
         "--no-dashboard", f"topology.base_port={port}", f"dashboard.telemetry_port={port + 8}"],
        cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert result["finished_peers"] == 3
    accs = [json.loads((run / f"peer-{p}.result.json").read_text())["test_accuracy"] for p in range(3)]
    assert min(accs) > 0.8, accs  # four shapes: chance is 0.25

    out = subprocess.run([sys.executable, "-m", "gossip.analyze", str(run), "--csv", str(tmp_path / "s.csv"),
                          "--tensorboard", str(tmp_path / "tb")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    with (tmp_path / "s.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 3 and {r["run"] for r in rows} == {"peer-0", "peer-1", "peer-2"}
    scalars = read_tensorboard(tmp_path / "tb" / "custom" / "peer-2")
    assert [step for step, _ in scalars["test_accuracy"]] == [1, 2, 3]
    assert scalars["test_accuracy"][-1][1] == pytest.approx(accs[2], abs=1e-6)
    assert scalars["mb_sent"][-1][1] > 0


def test_a_broken_import_path_stops_the_launch_with_one_line(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "gossip.launch", "examples/custom/swarm.yaml", "--run-dir", str(tmp_path / "r"),
         "--no-dashboard", "model.name=examples.custom.nets:no_such_net"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "model.name: module 'examples.custom.nets' has no attribute 'no_such_net'" in proc.stderr
    assert "Traceback" not in proc.stderr
