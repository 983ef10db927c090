"""What a finished (or stopped) launch reports: ``result.json``'s figures and the summary line.

Only peers that trained to the end and evaluated count as finished, so a swarm with a peer that
died at start-up, or one stopped by a signal, never reads as a full swarm.
"""

from __future__ import annotations

import contextlib
import json
import signal
import statistics
from pathlib import Path
from typing import Any

from gossip.config import Config, config_hash, to_dict


def last_line(log_path: Path) -> str:
    """The last non-empty line of a process's log (its one-line error, usually)."""
    if not log_path.is_file():
        return "no output"
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"


def summarize(cfg: Config, run_dir: Path, wall_s: float) -> dict[str, Any]:
    peers = []
    for p in range(cfg.peers):
        path = run_dir / f"peer-{p}.result.json"
        if path.is_file():
            peers.append(json.loads(path.read_text()))
    # finished: trained to the end and evaluated (a stopped peer reports stopped and no accuracy)
    accs = [r["test_accuracy"] for r in peers if r.get("test_accuracy") is not None and not r.get("stopped")]
    sent = sum(r["bytes_sent"] for r in peers)
    dense = sum(r["dense_equivalent_bytes"] for r in peers)
    keys = ("id", "test_accuracy", "bytes_sent", "bytes_received", "updates_sent", "updates_applied",
            "updates_rejected", "rejected_by_reason", "duplicates", "triggers", "wall_s")
    return {
        "kind": "swarm", "dataset": cfg.data.name, "model": cfg.model.name,
        "params": peers[0]["params"] if peers else None, "epochs": cfg.train.epochs,
        "n_peers": cfg.peers, "finished_peers": len(accs),
        "topology": cfg.topology.kind, "bandwidth": cfg.link.bandwidth, "codec": to_dict(cfg)["codec"],
        "peers": [{k: r.get(k) for k in keys} for r in peers],
        "accuracy": {
            "mean": statistics.fmean(accs) if accs else None,
            "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0 if accs else None,
            "min": min(accs) if accs else None, "max": max(accs) if accs else None,
        },
        "comm": {
            "bytes_sent_total": sent,
            "mb_per_epoch": sent / 1e6 / cfg.train.epochs,
            "mb_per_epoch_per_peer": sent / 1e6 / cfg.train.epochs / max(1, len(peers)),
            "dense_equivalent_bytes": dense,
            "compression_ratio": dense / sent if sent else None,
        },
        "wall_s": round(wall_s, 3), "config_hash": config_hash(cfg), "config": to_dict(cfg),
    }


def summary_line(result: dict[str, Any], path: Path) -> str:
    """The launcher's last line: what the swarm reached, counting only the peers that finished."""
    n, done = result["n_peers"], result["finished_peers"]
    who = f"swarm of {n}" if done == n else f"swarm of {n}, {done} finished"
    if result["failed"]:
        who += f" (failed: {', '.join(sorted(result['failed']))})"
    if result["interrupted"]:
        who += f", interrupted by {result['signal']} (continue with --resume)"
    acc, comm = result["accuracy"], result["comm"]
    if acc["mean"] is None:
        return f"{who}: no accuracy, {result['wall_s']:.1f} s -> {path}"
    return (f"{who}: accuracy {acc['mean']:.4f} ± {acc['std']:.4f} (min {acc['min']:.4f}, max {acc['max']:.4f}), "
            f"{comm['mb_per_epoch']:.2f} MB/epoch, compression {comm['compression_ratio'] or 0:.0f}x, "
            f"{result['wall_s']:.1f} s -> {path}")
