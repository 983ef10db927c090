"""Peers started by cluster launchers form the swarm from the environment alone.

* Slurm: ``srun`` gives each task ``SLURM_PROCID``, ``SLURM_JOB_NODELIST`` and
  ``SLURM_TASKS_PER_NODE``; with ``topology.hosts: slurm`` every peer finds its own node and its
  neighbours' from them. The "nodes" here are three loopback addresses (127.0.0.1-3), so each peer
  binds a different address, as on three machines.
* torchrun: the real ``torchrun --nproc-per-node 3 -m gossip.peer``; the peers take
  their id from ``RANK`` and their host from ``MASTER_ADDR`` (``topology.hosts: env``).

No ``--id`` and no host list is given to any peer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ports import free_port_block

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, hosts: str, peers: int = 3) -> Path:
    base = free_port_block(40)
    cfg = {
        "peers": peers, "model": {"name": "mnist_tiny"},
        "data": {"limit_train": 1500, "limit_test": 500},
        "train": {"epochs": 1, "batch_size": 32, "threads": 1},
        "topology": {"hosts": hosts, "base_port": base},
        "dashboard": {"telemetry_port": base + 20, "enabled": False},
        "timeouts": {"startup_s": 90, "silence_s": 10},
        "checkpoint": {"every_epochs": 0},
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def clean_env(**extra: str) -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in drop}
    return {**env, **extra}


def assert_swarm_formed(run_dir: Path, peers: int, hosts: list[str]) -> None:
    for p in range(peers):
        result = json.loads((run_dir / f"peer-{p}.result.json").read_text())
        assert result["test_accuracy"] > 0.5
        assert result["updates_applied"] > 0, f"peer {p} applied nothing: the swarm did not form"
        events = [json.loads(line) for line in (run_dir / f"peer-{p}.jsonl").read_text().splitlines()]
        resolved = next(e for e in events if e["event"] == "config_resolved")
        assert resolved["config"]["topology"]["hosts"] == hosts
        assert any(e["event"] == "neighbours_met" for e in events)


def test_srun_environment_alone_forms_the_swarm(data_root: Path, tmp_path: Path):
    cfg = write_config(tmp_path, "slurm")
    slurm = {"SLURM_JOB_NODELIST": "127.0.0.[1-3]", "SLURM_TASKS_PER_NODE": "1(x3)", "SLURM_NTASKS": "3",
             "SLURM_JOB_ID": "4242"}
    procs = [subprocess.Popen([sys.executable, "-m", "gossip.peer", "--config", str(cfg), "--run-dir",
                               str(tmp_path / "run"), "--quiet"], cwd=ROOT,
                              env=clean_env(**slurm, SLURM_PROCID=str(i), SLURM_NODEID=str(i), SLURM_LOCALID="0"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    assert_swarm_formed(tmp_path / "run", 3, ["127.0.0.1", "127.0.0.2", "127.0.0.3"])


def test_torchrun_starts_a_swarm(data_root: Path, tmp_path: Path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    cfg = write_config(tmp_path, "env")
    rdzv = free_port_block(1)
    # the rendezvous on loopback, and this "node" known by its loopback address (as --local-addr
    # names a machine's address on a cluster), so MASTER_ADDR is 127.0.0.1
    proc = subprocess.run([str(torchrun), "--nnodes", "1", "--nproc-per-node", "3", "--rdzv-backend", "c10d",
                           "--rdzv-endpoint", f"127.0.0.1:{rdzv}", "--local-addr", "127.0.0.1", "-m", "gossip.peer",
                           "--config", str(cfg), "--run-dir", str(tmp_path / "run"), "--quiet"],
                          cwd=ROOT, env=clean_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_swarm_formed(tmp_path / "run", 3, ["127.0.0.1"])
