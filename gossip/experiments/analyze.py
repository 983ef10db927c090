"""Rebuild an experiment's results table from its JSONL logs alone.

    python -m gossip.analyze runs/compare            # an experiment folder, a swarm run or a baseline run
    python -m gossip.analyze runs/a runs/b           # two runs side by side, with the differences
    python -m gossip.analyze runs/compare --json     # the same figures as JSON
    python -m gossip.analyze runs/x --csv x.csv --tensorboard runs/tb   # per-epoch scalars (gossip.experiments.export)

What is read (event names and fields are documented in ``docs/logs.md``):

* a swarm run folder: ``peer-<id>.jsonl`` (``config_resolved``, ``shard``, ``peer_built``,
  ``epoch_end``, ``peer_evaluated``, ``peer_result``), ``launch.jsonl`` (``launch_start``,
  ``launch_end``) and, when the experiment recorded it, ``telemetry.jsonl``;
* a centralized run folder: ``baseline.jsonl`` (``config_resolved``, ``baseline_start``,
  ``epoch_end``, ``baseline_done``);
* an experiment folder: ``experiment.jsonl`` (``experiment_plan`` names every arm and its
  folder, ``swarm_ensemble`` carries the ensemble and consensus scores) plus the arms' folders.

:func:`load` turns a folder into a list of *arm records* (plain dicts, one per run and seed);
:func:`summarize` groups them over seeds into the table rows that ``gossip.experiments.report`` prints
and ``gossip.experiments.experiment`` writes to ``report.md``, so both show the same numbers.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from gossip.errors import DataError

Arm = dict[str, Any]
BANDWIDTH_BIN_S = 1.0  # resolution of the bandwidth-over-time series from telemetry.jsonl


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Events of one log; a line cut short by a crash (the last one) is skipped."""
    events = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
    return events


def latest_run(events: list[dict[str, Any]], first: str) -> list[dict[str, Any]]:
    """The events from the last ``first`` on: a run folder used twice has both runs appended."""
    starts = [i for i, e in enumerate(events) if e.get("event") == first]
    return events[starts[-1]:] if starts else events


def last_event(events: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    found = [e for e in events if e.get("event") == name]
    return found[-1] if found else None


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _std(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.pstdev(values) if len(values) > 1 else (0.0 if values else None)


def _describe(cfg: dict[str, Any]) -> dict[str, Any]:
    data = cfg.get("data", {})
    partition = data.get("partition", "iid")
    if partition == "dirichlet":
        partition = f"dirichlet({data.get('alpha')})"
    elif partition == "shards":
        partition = f"shards({data.get('shards_per_peer')})"
    return {"dataset": data.get("name"), "partition": partition,
            "topology": cfg.get("topology", {}).get("kind"), "bandwidth": cfg.get("link", {}).get("bandwidth"),
            "density": cfg.get("codec", {}).get("density"), "seed": cfg.get("seed"),
            "epochs": cfg.get("train", {}).get("epochs")}


def _compute(readies: list[dict[str, Any] | None], epochs: int, *, teachers: list[int],
             ensemble: bool) -> dict[str, Any]:
    """Inference MACs per image (an ensemble answer counts every member) and training MACs of a
    run: forward + backward ~ 3 forward passes per sample seen, plus one forward per teacher
    under codistillation (gossip.training.distill)."""
    known = [r for r in readies if r and isinstance(r.get("macs"), int)]
    if not known:
        return {"macs": None, "train_macs": None}
    macs = known[0]["macs"]
    train = sum(epochs * int(r.get("train_samples", 0)) * r["macs"] * (3 + t)
                for r, t in zip(known, teachers, strict=False))
    return {"macs": macs * (len(readies) if ensemble else 1), "train_macs": train}


# ---------------------------------------------------------------- one run folder
def load_swarm(run_dir: Path) -> Arm:
    logs = sorted(run_dir.glob("peer-*.jsonl"), key=lambda p: int(p.stem.split("-")[1]))
    peers = [latest_run(read_jsonl(p), "config_resolved") for p in logs]
    if not peers:
        raise DataError(f"{run_dir}: no peer-<id>.jsonl logs")
    resolved = next((r for ev in peers if (r := last_event(ev, "config_resolved"))), None)
    cfg = resolved["config"] if resolved else {}
    built = next((b for ev in peers if (b := last_event(ev, "peer_built"))), {})
    finals = [last_event(ev, "peer_evaluated") for ev in peers]
    results = [last_event(ev, "peer_result") for ev in peers]
    epochs: dict[int, list[dict[str, Any]]] = defaultdict(list)  # epoch -> that epoch's record of each peer
    for ev, final in zip(peers, finals, strict=True):
        total = 0.0
        ends = [e for e in ev if e.get("event") == "epoch_end"]
        for i, e in enumerate(ends):
            total += e.get("seconds", 0.0)
            acc = e.get("test_accuracy")
            if i == len(ends) - 1 and final is not None:
                acc = final.get("test_accuracy")  # the last epoch is scored on the whole test split
            epochs[e["epoch"]].append({"accuracy": acc, "ts": e.get("ts"), "train_s": total})
    sent_by_epoch: dict[int, int] = defaultdict(int)
    for r in results:
        for key, b in (r or {}).get("bytes_sent_by_epoch", {}).items():
            sent_by_epoch[int(key)] += b
    curve, mb = [], 0.0
    for ep in sorted(epochs):
        mb += sent_by_epoch.get(ep, 0) / 1e6
        recs = epochs[ep]
        ep_accs = [r["accuracy"] for r in recs if r["accuracy"] is not None]
        curve.append({"epoch": ep + 1, "accuracy": _mean(ep_accs), "accuracy_std": _std(ep_accs),
                      "train_s": _mean([r["train_s"] for r in recs]), "mb_cum": mb,
                      "ts": _mean([r["ts"] for r in recs if r["ts"] is not None])})
    done = [r for r in results if r is not None]
    sent = sum(r.get("bytes_sent", 0) for r in done)
    dense = sum(r.get("dense_equivalent_bytes", 0) for r in done)
    launch = (latest_run(read_jsonl(run_dir / "launch.jsonl"), "launch_start")
              if (run_dir / "launch.jsonl").is_file() else [])
    start, end = last_event(launch, "launch_start"), last_event(launch, "launch_end")
    n_epochs = cfg.get("train", {}).get("epochs") or max(1, len(curve))
    accs = [f.get("test_accuracy") for f in finals if f is not None and f.get("test_accuracy") is not None]
    arm = {
        "kind": "swarm", "dir": str(run_dir), "model": cfg.get("model", {}).get("name") or built.get("model"),
        "params": built.get("params"), "peers": cfg.get("peers", len(peers)), **_describe(cfg),
        "final_accuracy": accs, "finished_peers": len(accs), "complete": len(accs) == cfg.get("peers", len(peers)),
        "curve": curve, "bytes_sent_total": sent, "dense_equivalent_bytes": dense,
        "mb_per_epoch": sent / 1e6 / n_epochs, "compression_ratio": dense / sent if sent else None,
        "wall_s": end.get("wall_s") if end else max((r.get("wall_s", 0.0) for r in done), default=None),
        "label_histograms": [(last_event(ev, "shard") or {}).get("label_histogram") for ev in peers],
        "rejected": sum(r.get("updates_rejected", 0) for r in done),
        "peers_down": sorted({x["peer"] for ev in peers for x in ev
                              if x.get("event") == "peer_down" and isinstance(x.get("peer"), int)}),
    }
    t0 = start.get("ts") if start else min((c["ts"] for c in curve if c["ts"]), default=None)
    arm["send_rate"] = _send_rate(run_dir, curve, sent_by_epoch, t0)
    arm["mode"] = cfg.get("communication", {}).get("mode", "average")
    codistill = arm["mode"] == "codistill"
    teachers = [len((last_event(ev, "peer_built") or {}).get("neighbours", [])) if codistill else 0 for ev in peers]
    arm.update(_compute([last_event(ev, "trainer_ready") for ev in peers], n_epochs, teachers=teachers,
                        ensemble=codistill))
    return arm


def _send_rate(run_dir: Path, curve: list[dict[str, Any]], sent_by_epoch: dict[int, int],
               t0: float | None) -> list[dict[str, float]]:
    """Swarm send rate (bits/s, all peers) over time: from telemetry.jsonl, else one point per epoch."""
    path = run_dir / "telemetry.jsonl"
    if path.is_file() and t0 is not None:
        per_peer: dict[int, list[tuple[float, int]]] = defaultdict(list)
        for snap in read_jsonl(path):
            if isinstance(snap.get("peer_id"), int) and isinstance(snap.get("bytes_sent"), int):
                per_peer[snap["peer_id"]].append((float(snap["ts"]) - t0, snap["bytes_sent"]))
        if per_peer:
            # Peers publish at their own moments: interpolate each peer's byte counter onto one
            # grid (BANDWIDTH_BIN_S), sum, and difference.
            series = [sorted(v) for v in per_peer.values()]
            lo, hi = min(s[0][0] for s in series), max(s[-1][0] for s in series)
            grid = np.arange(lo, hi + 1e-9, BANDWIDTH_BIN_S)
            if len(grid) > 1:
                total = sum(np.interp(grid, [t for t, _ in s], [b for _, b in s]) for s in series)
                rate = 8 * np.diff(total) / BANDWIDTH_BIN_S
                return [{"t": round(float(t), 3), "bps": float(r)} for t, r in zip(grid[1:], rate, strict=True)]
    out, prev = [], t0
    for c in curve:
        if c["ts"] is None or prev is None:
            continue
        dt = c["ts"] - prev
        if dt > 0:
            out.append({"t": round(c["ts"] - t0, 3) if t0 else 0.0,
                        "bps": 8 * sent_by_epoch.get(c["epoch"] - 1, 0) / dt})
        prev = c["ts"]
    return out


def load_centralized(run_dir: Path) -> Arm:
    ev = latest_run(read_jsonl(run_dir / "baseline.jsonl"), "config_resolved")
    resolved, start, done = last_event(ev, "config_resolved"), last_event(ev, "baseline_start") or {}, last_event(ev, "baseline_done")
    cfg = resolved["config"] if resolved else {}
    curve, total = [], 0.0
    for e in (e for e in ev if e.get("event") == "epoch_end"):
        total += e.get("train_s", 0.0)
        curve.append({"epoch": e["epoch"], "accuracy": e.get("test_accuracy"), "accuracy_std": 0.0,
                      "train_s": total, "mb_cum": 0.0, "ts": e.get("ts")})
    return {
        "kind": "centralized", "dir": str(run_dir), "model": start.get("model") or cfg.get("model", {}).get("name"),
        "params": start.get("params"), "peers": 1, **_describe(cfg),
        "final_accuracy": [done["test_accuracy"]] if done else [], "finished_peers": int(done is not None),
        "complete": done is not None, "curve": curve, "bytes_sent_total": 0, "dense_equivalent_bytes": 0,
        "mb_per_epoch": 0.0, "compression_ratio": None, "wall_s": done.get("wall_s") if done else None,
        "label_histograms": [], "send_rate": [], "rejected": 0, "peers_down": [], "mode": "centralized",
        **_compute([last_event(ev, "trainer_ready")], int(cfg.get("train", {}).get("epochs") or 1), teachers=[0],
                   ensemble=False),
    }


def load_arm(run_dir: Path) -> Arm:
    if (run_dir / "baseline.jsonl").is_file():
        return load_centralized(run_dir)
    return load_swarm(run_dir)


# ---------------------------------------------------------------- a folder: experiment or single run
def load(path: str | Path) -> dict[str, Any]:
    """``{"dir", "settings", "arms": [arm records]}`` for an experiment folder or one run folder."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    exp_log = root / "experiment.jsonl"
    if not exp_log.is_file():
        if not (root / "baseline.jsonl").is_file() and not any(root.glob("peer-*.jsonl")):
            raise DataError(f"{root}: no gossip logs here (experiment.jsonl, peer-<id>.jsonl or baseline.jsonl)")
        arm = load_arm(root)  # one run: its row is named by its kind, so two swarm runs line up in compare()
        arm.update(name=root.name, group=arm["kind"], role=arm["kind"], sweep=None)
        return {"dir": str(root), "settings": {}, "arms": [arm]}
    events = read_jsonl(exp_log)
    plan = last_event(events, "experiment_plan")
    if plan is None:
        raise DataError(f"{exp_log}: no experiment_plan event")
    extras = {e["dir"]: e for e in events if e.get("event") == "swarm_ensemble" and "dir" in e}
    arms = []
    for entry in plan["arms"]:
        arm_dir = root / entry["dir"]
        if not arm_dir.is_dir() or not ((arm_dir / "baseline.jsonl").is_file() or any(arm_dir.glob("peer-*.jsonl"))):
            continue  # not run yet
        arm = load_arm(arm_dir)
        arm.update({k: entry.get(k) for k in ("name", "group", "role", "sweep")})
        extra = extras.get(entry["dir"])
        if extra is not None:
            arm["ensemble"], arm["consensus"] = extra.get("ensemble"), extra.get("consensus")
            arm["agreement"] = extra.get("agreement")
        arms.append(arm)
    return {"dir": str(root), "settings": plan.get("settings", {}), "arms": arms}


# ---------------------------------------------------------------- rows over seeds
def time_to_target(curve: list[dict[str, Any]], target: float | None) -> float | None:
    """Training seconds until the end of the first epoch whose (mean) test accuracy >= target."""
    if target is None:
        return None
    for c in curve:
        if c["accuracy"] is not None and c["accuracy"] >= target:
            return float(c["train_s"])
    return None


def _row(group: str, arms: list[Arm], target: float | None) -> dict[str, Any]:
    """One table row: an arm group's seeds pooled (swarm accuracy: every peer of every seed)."""
    per_seed = [a["final_accuracy"] for a in arms]
    pooled = [x for accs in per_seed for x in accs]
    seed_means = [statistics.fmean(accs) for accs in per_seed if accs]
    ttt = [time_to_target(a["curve"], target) for a in arms]
    first = arms[0]
    swarm = first["kind"] == "swarm"
    row = {
        "arm": group, "group": group, "role": first["role"], "kind": first["kind"], "model": first["model"],
        "params": first["params"], "peers": first["peers"], "partition": first["partition"],
        "topology": first["topology"], "bandwidth": first["bandwidth"] if swarm else None,
        "density": first["density"] if swarm else None, "sweep": first.get("sweep"),
        "seeds": [a["seed"] for a in arms], "n": len(pooled),
        "accuracy_mean": _mean(pooled), "accuracy_std": _std(pooled),
        "accuracy_seed_std": _std(seed_means) if len(seed_means) > 1 else None,
        "mb_per_epoch": _mean([a["mb_per_epoch"] for a in arms]),
        "wall_s": _mean([a["wall_s"] for a in arms]),
        "time_to_target_s": _mean([t for t in ttt if t is not None]),
        "target_reached": f"{sum(t is not None for t in ttt)}/{len(ttt)}" if target is not None else None,
        "compression_ratio": _mean([a["compression_ratio"] for a in arms]),
        "complete": all(a["complete"] for a in arms),
        "mode": first.get("mode"), "macs": first.get("macs"), "train_macs": _mean([a.get("train_macs") for a in arms]),  # type: ignore[misc]
    }
    for extra in ("ensemble", "consensus"):  # the swarm deciding together, over seeds
        scores = [a[extra]["accuracy"] for a in arms if a.get(extra)]
        row[f"{extra}_mean"], row[f"{extra}_std"] = _mean(scores), _std(scores)
    row["agreement_mean"] = _mean([a["agreement"] for a in arms if a.get("agreement") is not None])
    return row


def summarize(run: dict[str, Any], target: float | None = None) -> dict[str, Any]:
    """Table rows, one per arm group (seeds pooled), in plan order."""
    target = target if target is not None else run["settings"].get("target_accuracy")
    groups: dict[str, list[Arm]] = defaultdict(list)
    for arm in run["arms"]:
        groups[arm["group"]].append(arm)
    rows = [_row(group, arms, target) for group, arms in groups.items()]
    return {"dir": run["dir"], "target_accuracy": target, "rows": rows}


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the same arm in both summaries (or the only row of each), accuracy differences B - A."""
    by_arm = {r["arm"]: r for r in b["rows"]}
    pairs = [(ra, by_arm[ra["arm"]]) for ra in a["rows"] if ra["arm"] in by_arm]
    if not pairs and len(a["rows"]) == 1 and len(b["rows"]) == 1:
        pairs = [(a["rows"][0], b["rows"][0])]  # e.g. a swarm run against a baseline run
    out = []
    for ra, rb in pairs:
        delta = (None if ra["accuracy_mean"] is None or rb["accuracy_mean"] is None
                 else 100 * (rb["accuracy_mean"] - ra["accuracy_mean"]))
        out.append({"arm": ra["arm"] if ra["arm"] == rb["arm"] else f"{ra['arm']} / {rb['arm']}",
                    "accuracy_a": ra["accuracy_mean"], "accuracy_b": rb["accuracy_mean"], "delta_pts": delta,
                    "ensemble_a": ra["ensemble_mean"], "ensemble_b": rb["ensemble_mean"],
                    "mb_per_epoch_a": ra["mb_per_epoch"], "mb_per_epoch_b": rb["mb_per_epoch"],
                    "wall_s_a": ra["wall_s"], "wall_s_b": rb["wall_s"]})
    return out
