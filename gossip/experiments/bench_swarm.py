"""``python -m gossip.bench swarm``: a swarm against the centralized baseline, in one run.

Runs, one after the other on this machine and with the same config (model, epochs, seed,
batch size, learning rate):

1. the centralized baseline: ``python -m gossip.baseline`` on all the data;
2. the swarm: ``python -m gossip.launch`` with ``peers`` processes, no dashboard;
3. optionally (``--ring8``) a ring of 8 peers.

Both arms are timed as whole processes (start-up, data loading and evaluation included), so
the wall-time ratio is what a user waits for. Prints a table and checks the targets:
mean peer accuracy ≥ baseline − 0.3 points, max − min across peers ≤ 0.3 points, compression
ratio ≥ 100, swarm wall time ≤ 1.3 × baseline; ``--json`` prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TARGETS = {"accuracy_gap_pts": 0.3, "spread_pts": 0.3, "compression_ratio": 100.0, "wall_ratio": 1.3,
           "ring8_accuracy": 0.985}


def _timed(args: list[str], log_path: Path) -> float:
    t0 = time.monotonic()
    with log_path.open("wb") as out:
        proc = subprocess.run([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"error: {' '.join(args[:2])} failed ({proc.returncode}): {' | '.join(tail)}")
    return time.monotonic() - t0


def run(config: str, out: Path, overrides: list[str], ring8: bool) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    base_dir, swarm_dir = out / "baseline", out / "swarm"
    base_wall = _timed(["-m", "gossip.baseline", "--config", config, "--run-dir", str(base_dir), *overrides],
                       out / "baseline.log")
    swarm_wall = _timed(["-m", "gossip.launch", config, "--run-dir", str(swarm_dir), "--no-dashboard",
                         *overrides], out / "swarm.log")
    base = json.loads((base_dir / "result.json").read_text())
    swarm = json.loads((swarm_dir / "result.json").read_text())
    acc = swarm["accuracy"]
    figures: dict[str, Any] = {
        "baseline_accuracy": base["test_accuracy"], "baseline_wall_s": round(base_wall, 1),
        "swarm_accuracy_mean": acc["mean"], "swarm_accuracy_std": acc["std"],
        "swarm_accuracy_min": acc["min"], "swarm_accuracy_max": acc["max"],
        "swarm_wall_s": round(swarm_wall, 1), "wall_ratio": round(swarm_wall / base_wall, 3),
        "accuracy_gap_pts": round(100 * (base["test_accuracy"] - acc["mean"]), 3),
        "spread_pts": round(100 * (acc["max"] - acc["min"]), 3),
        "compression_ratio": swarm["comm"]["compression_ratio"],
        "mb_per_epoch": swarm["comm"]["mb_per_epoch"], "peers": swarm["n_peers"],
        "model": swarm["model"], "params": swarm["params"], "epochs": swarm["epochs"],
    }
    checks = {
        "accuracy_gap_pts": figures["accuracy_gap_pts"] <= TARGETS["accuracy_gap_pts"],
        "spread_pts": figures["spread_pts"] <= TARGETS["spread_pts"],
        "compression_ratio": (figures["compression_ratio"] or 0) >= TARGETS["compression_ratio"],
        "wall_ratio": figures["wall_ratio"] <= TARGETS["wall_ratio"],
    }
    if ring8:
        ring_dir = out / "ring8"
        ring_wall = _timed(["-m", "gossip.launch", config, "--run-dir", str(ring_dir), "--no-dashboard",
                            "peers=8", "topology.kind=ring", *overrides], out / "ring8.log")
        ring = json.loads((ring_dir / "result.json").read_text())
        figures.update(ring8_accuracy_mean=ring["accuracy"]["mean"], ring8_accuracy_min=ring["accuracy"]["min"],
                       ring8_wall_s=round(ring_wall, 1), ring8_mb_per_epoch=ring["comm"]["mb_per_epoch"],
                       ring8_compression_ratio=ring["comm"]["compression_ratio"])
        checks["ring8_accuracy"] = ring["accuracy"]["mean"] >= TARGETS["ring8_accuracy"]
    figures["checks"] = checks
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gossip.bench swarm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/mnist_4peers.yaml")
    ap.add_argument("--out", default="runs/bench-swarm", help="folder for both runs' logs and results")
    ap.add_argument("--ring8", action="store_true", help="also run a ring of 8 peers")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every arm")
    args = ap.parse_intermixed_args(argv)
    figures = run(args.config, Path(args.out), args.overrides, args.ring8)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            if key != "checks":
                print(f"{key:28} {value}")
        for key, ok in figures["checks"].items():
            print(f"target {key:21} {'PASS' if ok else 'FAIL'} (target {TARGETS[key]})")
    return 0 if all(figures["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
