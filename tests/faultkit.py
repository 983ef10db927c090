"""Helpers for the fault and hostile-input tests: real peer processes on loopback, tiny settings.

One swarm size for all of them (``BASE``), so every test can compare against the same clean
runs (:func:`clean_runs`, computed once per test session and shared). ``BASE`` trains 4
epochs over a small shard at a moderate learning rate so that the swarm ends near its plateau
(~98 %), where run-to-run noise is a few tenths of a point rather than the 1-2 points of a
swarm stopped halfway up the learning curve.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from ports import free_port_block

from gossip import config
from gossip.runtime import curve

PEERS = 4
BASE = {
    "peers": PEERS, "model.name": "mnist_tiny", "data.limit_train": 16000, "data.limit_test": 2000,
    "train.epochs": 4, "train.batch_size": 16, "train.lr": 0.05, "train.threads": 1,
    "timeouts.startup_s": 30, "timeouts.silence_s": 3, "timeouts.finish_s": 10,
    "checkpoint.every_epochs": 1, "dashboard.enabled": False,
}
RUN_TIMEOUT_S = 240


def make_cfg(**extra: Any) -> config.Config:
    base = free_port_block(40)
    items = {**BASE, "topology.base_port": base, "dashboard.telemetry_port": base + 20, **extra}
    return config.load(None, [f"{k}={v}" for k, v in items.items()])


def with_keys(run_dir: Path, cfg: config.Config) -> config.Config:
    """``cfg`` with a CURVE key pair per peer in ``run_dir/keys`` (what gossip.launch does). Without
    keys, peers started by hand on loopback run insecure (one ``security_off`` warning)."""
    folder = run_dir / "keys"
    curve.create(folder, cfg.peers)
    return dataclasses.replace(cfg, security=dataclasses.replace(cfg.security, curve_keys=str(folder)))


def write_cfg(run_dir: Path, cfg: config.Config) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "cfg.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(cfg)))
    return path


def start_peer(run_dir: Path, cfg_path: Path, peer_id: int, *args: str) -> subprocess.Popen[str]:
    log = (run_dir / f"peer-{peer_id}.stderr").open("a")
    return subprocess.Popen(
        [sys.executable, "-m", "gossip.peer", "--id", str(peer_id), "--config", str(cfg_path),
         "--run-dir", str(run_dir), "--quiet", *args],
        stdout=subprocess.DEVNULL, stderr=log, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))


STANDBY = """
import pathlib, sys, time
import gossip.runtime.node, gossip.peer  # the slow imports happen now, not at the restart
go = pathlib.Path(sys.argv[1])
go.with_suffix(".ready").touch()
while not go.exists():
    time.sleep(0.05)
sys.exit(gossip.peer.main(sys.argv[2:]))
"""


def standby_peer(run_dir: Path, cfg_path: Path, peer_id: int, *args: str) -> tuple[subprocess.Popen[str], Path]:
    """A peer process that has imported everything and starts when the returned path is created.

    On a loaded CI machine importing torch can take longer than a whole epoch of these tiny
    runs; the faults under test are about the swarm, not about Python's start-up time.
    """
    go = run_dir / f"go-{peer_id}"
    log = (run_dir / f"peer-{peer_id}.stderr").open("a")
    proc = subprocess.Popen(
        [sys.executable, "-c", STANDBY, str(go), "--id", str(peer_id), "--config", str(cfg_path),
         "--run-dir", str(run_dir), "--quiet", *args],
        stdout=subprocess.DEVNULL, stderr=log, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return proc, go


def wait_ready(go: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not go.with_suffix(".ready").exists():
        assert time.monotonic() < deadline, "standby peer never finished importing"
        time.sleep(0.1)


def start_swarm(run_dir: Path, cfg: config.Config, ids: range | list[int] | None = None) -> tuple[Path, dict[int, Any]]:
    path = write_cfg(run_dir, cfg)
    ids = range(cfg.peers) if ids is None else ids
    return path, {p: start_peer(run_dir, path, p) for p in ids}


def wait_all(procs: dict[int, subprocess.Popen[str]], timeout: float = RUN_TIMEOUT_S) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    codes = {}
    try:
        for p, proc in procs.items():
            codes[p] = proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        kill_all(procs)
    return codes


def kill_all(procs: dict[int, subprocess.Popen[str]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def events(run_dir: Path, peer_id: int) -> list[dict[str, Any]]:
    path = run_dir / f"peer-{peer_id}.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # the line being written right now
            out.append(json.loads(line))
    return out


def wait_event(run_dir: Path, peer_id: int, name: str, timeout: float = 120, **fields: Any) -> dict[str, Any]:
    """The first event ``name`` of peer ``peer_id`` whose fields match, waiting for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in events(run_dir, peer_id):
            if e.get("event") == name and all(e.get(k) == v for k, v in fields.items()):
                return e
        time.sleep(0.1)
    raise AssertionError(f"peer {peer_id} never logged {name} {fields} within {timeout}s")


def wait_step(run_dir: Path, peer_id: int, epoch: int, timeout: float = 120) -> None:
    """Wait until ``peer_id`` is training in ``epoch`` (its first epoch_end of the previous one)."""
    if epoch > 0:
        wait_event(run_dir, peer_id, "epoch_end", timeout, epoch=epoch - 1)


def result(run_dir: Path, peer_id: int) -> dict[str, Any]:
    return json.loads((run_dir / f"peer-{peer_id}.result.json").read_text())


def sigstop(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGSTOP)


def sigcont(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGCONT)


CLEAN_RUNS = 3
_CLEAN: list[dict[int, dict[str, Any]]] = []


def clean_runs(run_dir: Path) -> list[dict[int, dict[str, Any]]]:
    """Per-peer results of ``CLEAN_RUNS`` fault-free swarms with ``BASE`` settings (run once per session).

    Why more than one: an asynchronous swarm is not deterministic (when an update arrives
    relative to a peer's steps depends on the machine's load), and at these tiny sizes two
    clean runs of the same seed differ by up to about 0.4 accuracy points (measured: 97.60 to
    98.00 over four runs; 96.80 to 97.50 over eleven with half the data). A fault's effect is judged against the lowest clean run, so a test fails on a real
    loss, not on that noise.
    """
    while len(_CLEAN) < CLEAN_RUNS:
        d = run_dir / f"clean-{len(_CLEAN)}"
        _, procs = start_swarm(d, make_cfg())
        assert wait_all(procs) == dict.fromkeys(range(PEERS), 0)
        _CLEAN.append({p: result(d, p) for p in range(PEERS)})
    return _CLEAN


def clean_floor(run_dir: Path) -> float:
    """The lowest mean peer accuracy of the clean runs."""
    return min(mean_accuracy(r) for r in clean_runs(run_dir))


def clean_spread(run_dir: Path) -> float:
    accs = [mean_accuracy(r) for r in clean_runs(run_dir)]
    return max(accs) - min(accs)


def mean_accuracy(results: dict[int, dict[str, Any]], ids: list[int] | None = None) -> float:
    ids = list(results) if ids is None else ids
    return sum(results[p]["test_accuracy"] for p in ids) / len(ids)
