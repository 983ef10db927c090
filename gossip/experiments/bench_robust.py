"""``python -m gossip.bench robust``: robust aggregation against simulated attackers.

For every attack (``none`` and each of :mod:`gossip.sim.attacks`) and every aggregation policy
(``uniform`` and each robust one of :mod:`gossip.aggregation`), trains a swarm of ``peers`` (default 8) of
which ``--attackers`` (default 2) lie, and reports the honest peers' test accuracy. Targets
(checked, printed): every robust policy keeps honest peers ≥ ``TARGET_ACCURACY`` under every
attack, and without attackers costs ≤ ``TARGET_COST_PTS`` against ``uniform``.

The swarm runs **in one process, in lock step** (:class:`LockstepSwarm`): the real
:class:`gossip.runtime.worker.Worker` per peer (trainer, error feedback, triggers, codec, attacks,
aggregation policy, final flush), every update packed to protobuf bytes and validated by
:func:`gossip.protocol.wire.unpack` at every receiver, on a full mesh; only ZeroMQ and the clock are
replaced: each round every peer folds in what has reached it, then takes one step; an update
reaches each receiver 0..``--jitter`` rounds after it was sent (random, seeded), as in an
asynchronous swarm. So a cell is deterministic: ~1 minute of one core on the full MNIST
training split (the default); ``--jobs 2`` runs two cells at once.
The transport itself is exercised by ``tests/test_faults.py``.

Example: ``python -m gossip.bench robust --jobs 2 --out runs/robust`` (10 cells measured 4.5 min, so all 25 take ~11 min on
2 cores); ``--policies uniform,clip`` for the recommended policy only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import multiprocessing
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gossip import config as config_mod
from gossip.config import Config
from gossip.protocol import wire
from gossip.runtime import factory
from gossip.runtime.bridge import Outgoing
from gossip.runtime.testing import MemoryBridge
from gossip.runtime.trigger import FINAL
from gossip.runtime.worker import Worker
from gossip.training.data import Dataset, load_dataset
from gossip.training.partition import partition
from gossip.training.trainer import set_threads

ATTACKS = ("none", "sign_flip", "gaussian", "inflated_confidence", "stale_replay")
POLICIES = ("uniform", "clip", "trimmed_mean", "median", "centered_clip")
JITTER = 2  # rounds of random delivery delay in the default bench (a real swarm is not in lock step)
TARGET_ACCURACY = 0.97
TARGET_COST_PTS = 0.5
DEFAULTS = [  # ~1 min a cell on one CPU core; every one can be overridden on the command line
    "model.name=mnist_tiny", "peers=8", "train.epochs=1", "train.batch_size=16", "train.lr=0.05",
    "data.limit_train=60000", "data.limit_test=5000", "communication.trim_ratio=0.3",
]


__all__ = ["LockstepSwarm", "MemoryBridge", "build_worker", "main", "run_cell"]


def build_worker(cfg: Config, peer_id: int, dataset: Dataset, shard: torch.Tensor) -> Worker:
    """One peer's worker, built exactly as :class:`gossip.runtime.node.Peer` builds it, on a MemoryBridge."""
    return factory.build_worker(cfg, peer_id, dataset, shard, MemoryBridge())


class LockstepSwarm:
    """``peers`` workers on a full mesh, stepped round by round (see the module docstring)."""

    def __init__(self, cfg: Config, dataset: Dataset, *, jitter: int = 0, jitter_seed: int = 0) -> None:
        self.cfg = cfg
        self.jitter = jitter  # deliver each update 0..jitter rounds late (random): asynchrony, seeded
        self.rng = random.Random(jitter_seed)
        self.round = 0
        self.pending: list[tuple[int, int, Any]] = []  # (due round, receiver index, decoded update)
        shards = partition(dataset.train.labels, cfg.peers, cfg.data, cfg.seed)
        self.workers = [build_worker(cfg, p, dataset, shards[p]) for p in range(cfg.peers)]
        layout = self.workers[0].layout
        self.limits = wire.Limits(numel=layout.numel, schema_hash=layout.schema_hash,
                                  max_bytes=cfg.security.max_message_bytes, peers=cfg.peers)
        self.rejected = 0

    def _route(self) -> None:
        """Every update put on the wire this round reaches every other peer, validated."""
        for w in self.workers:
            bridge: MemoryBridge = w.bridge  # type: ignore[assignment]
            for item in bridge.sent:
                if not isinstance(item, Outgoing):
                    continue
                decoded = wire.unpack(item.data, self.limits)
                for r, other in enumerate(self.workers):
                    if other is not w:
                        late = self.rng.randint(0, self.jitter) if self.jitter else 0
                        self.pending.append((self.round + late, r, decoded))
            bridge.sent.clear()
        due = [p for p in self.pending if p[0] <= self.round]
        self.pending = [p for p in self.pending if p[0] > self.round]
        for _, r, decoded in due:
            self.workers[r].bridge.to_thread(decoded)
        self.round += 1

    def run(self) -> list[dict[str, Any]]:
        for epoch in range(self.cfg.train.epochs):
            batches = [iter(w.trainer.batches(epoch)) for w in self.workers]
            for w in self.workers:
                w.progress.epoch = epoch
            for step in range(min(w.trainer.steps_per_epoch for w in self.workers)):
                for w, it in zip(self.workers, batches, strict=True):
                    w.fold_in(w.bridge.drain())
                    x, y = next(it)
                    w.train_batch(x, y, step)
                self._route()
        # the end, as Worker._finish does it: final flush, fold in everything, evaluate
        for w in self.workers:
            w.trigger.mark_synced(FINAL)
            w.send_update(FINAL, final=True)
        self._route()
        while self.pending:  # whatever is still in flight arrives
            self._route()
        out = []
        scored: dict[bytes, float] = {}  # peers in exact agreement are scored once
        for w in self.workers:
            w.fold_in(w.bridge.drain())
            if hasattr(w.policy, "flush"):
                with torch.no_grad():
                    w.policy.flush(w.trainer.flat, weight=w.mix)
            accuracy = None
            if w.attack is None:  # attackers' own models are not what is measured
                key = hashlib.sha1(w.trainer.flat.numpy().tobytes()).digest()
                if key not in scored:
                    scored[key] = w.trainer.evaluate(w.dataset.test)["accuracy"]
                accuracy = scored[key]
            out.append({"id": w.peer_id, "test_accuracy": accuracy, "attacker": w.attack is not None,
                        "updates_applied": w.progress.updates_applied,
                        "policy_stats": dict(getattr(w.policy, "stats", {}))})
        return out


def run_cell(cfg: Config, dataset: Dataset, jitter: int = 0) -> dict[str, Any]:
    t0 = time.monotonic()
    peers = LockstepSwarm(cfg, dataset, jitter=jitter, jitter_seed=cfg.seed).run()
    honest = [p["test_accuracy"] for p in peers if not p["attacker"]]
    stats: dict[str, int] = {}  # what the honest peers' policies did (summed over them)
    for p in peers:
        if not p["attacker"]:
            for key, value in p["policy_stats"].items():
                stats[key] = stats.get(key, 0) + int(value)
    return {"attack": cfg.security.attack, "policy": cfg.communication.aggregation,
            "honest_mean": statistics.fmean(honest), "honest_min": min(honest),
            "seconds": round(time.monotonic() - t0, 1), "policy_stats": stats}


def table(cells: list[dict[str, Any]], attackers: int, peers: int) -> str:
    by = {(c["attack"], c["policy"]): c for c in cells}
    policies = [p for p in POLICIES if any(k[1] == p for k in by)]
    attacks = [a for a in ATTACKS if any(k[0] == a for k in by)]
    lines = [f"Honest peers' mean test accuracy, % (min in brackets); {peers} peers, "
             f"{attackers} attackers (none in the first row)", "",
             "| attack | " + " | ".join(policies) + " |", "|---|" + "---|" * len(policies)]
    for a in attacks:
        row = []
        for p in policies:
            c = by.get((a, p))
            row.append("-" if c is None else f"{100 * c['honest_mean']:.2f} ({100 * c['honest_min']:.2f})")
        lines.append(f"| {a} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def check(cells: list[dict[str, Any]]) -> list[str]:
    """The targets each robust policy misses (an empty list: all met)."""
    by = {(c["attack"], c["policy"]): c for c in cells}
    misses = []
    for (attack, policy), c in by.items():
        if policy == "uniform":
            continue
        if attack != "none" and c["honest_min"] < TARGET_ACCURACY:
            misses.append(f"{policy} under {attack}: honest min {100 * c['honest_min']:.2f}% < "
                          f"{100 * TARGET_ACCURACY:.0f}%")
        base = by.get(("none", "uniform"))
        if attack == "none" and base is not None:
            cost = 100 * (base["honest_mean"] - c["honest_mean"])
            if cost > TARGET_COST_PTS:
                misses.append(f"{policy} without attackers costs {cost:.2f} points > {TARGET_COST_PTS}")
    return misses


_DATASET: Dataset | None = None  # one copy per worker process of --jobs


def _run_cell_in_worker(cfg: Config, jitter: int) -> dict[str, Any]:
    global _DATASET
    if _DATASET is None:
        set_threads(cfg.train.threads or 1)
        _DATASET = load_dataset(cfg.data)
    return run_cell(cfg, _DATASET, jitter)


def _report(cell: dict[str, Any]) -> None:
    stats = " ".join(f"{k}={v}" for k, v in cell["policy_stats"].items())
    print(f"{cell['attack']:20} {cell['policy']:14} honest mean {100 * cell['honest_mean']:.2f}% "
          f"min {100 * cell['honest_min']:.2f}%  ({cell['seconds']} s) {stats}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gossip.bench robust", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="YAML config (default: the built-in defaults)")
    ap.add_argument("--attackers", type=int, default=2, help="how many peers lie (ids 0..N-1)")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated subset of " + ",".join(ATTACKS))
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated subset of " + ",".join(POLICIES))
    ap.add_argument("--jitter", type=int, default=JITTER,
                    help="deliver each update 0..N rounds late, at random (seeded): asynchrony")
    ap.add_argument("--jobs", type=int, default=1,
                    help="cells run at once, one process and one thread each (at most the core count)")
    ap.add_argument("--out", default=None, help="write robust.json and robust.md into this folder")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (after the defaults)")
    args = ap.parse_intermixed_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    base = config_mod.load(args.config, [*DEFAULTS, *args.overrides])
    grid = []
    for attack in args.attacks.split(","):
        for policy in args.policies.split(","):
            attackers = list(range(args.attackers)) if attack != "none" else []
            grid.append(config_mod.replace(base, {"security": {"attack": attack, "attackers": attackers},
                                                  "communication": {"aggregation": policy}}))
    cells: list[dict[str, Any]] = []
    if args.jobs == 1:
        for cfg in grid:
            cells.append(_run_cell_in_worker(cfg, args.jitter))
            _report(cells[-1])
    else:  # cells are independent and deterministic: the same figures in any order
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = [pool.submit(_run_cell_in_worker, cfg, args.jitter) for cfg in grid]
            for future in concurrent.futures.as_completed(futures):
                _report(future.result())
            cells = [f.result() for f in futures]
    text = table(cells, args.attackers, base.peers)
    misses = check(cells)
    print(text)
    print("\ntargets: " + ("all met" if not misses else "; ".join(misses)))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "robust.json").write_text(json.dumps({"cells": cells, "misses": misses,
                                                     "config": config_mod.to_dict(base)}, indent=2))
        (out / "robust.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
