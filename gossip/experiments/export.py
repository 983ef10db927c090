"""Per-epoch scalars of a run or an experiment, from its JSONL logs, as CSV or TensorBoard event files.

    python -m gossip.analyze runs/x --csv runs/x/scalars.csv
    python -m gossip.analyze runs/compare --tensorboard runs/tb && tensorboard --logdir runs/tb

One series per peer (swarm runs) or per run (centralized): ``train_loss``, ``test_accuracy``,
``mb_sent`` (cumulative wire MB of that peer), ``triggers/<kind>`` (cumulative syncs fired by each
trigger), and for centralized runs ``test_loss`` and ``lr``. TensorBoard runs are named
``<arm>/peer-<id>`` (or ``<arm>/centralized``), the step is the 1-based epoch, the wall time the
event's own timestamp, so curves of several arms line up in one TensorBoard.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gossip.errors import DataError
from gossip.experiments.analyze import last_event, latest_run, load, read_jsonl

Row = dict[str, Any]
FIXED = ("arm", "run", "epoch", "ts")


def _swarm_rows(arm: str, run_dir: Path) -> Iterator[Row]:
    for log in sorted(run_dir.glob("peer-*.jsonl"), key=lambda p: int(p.stem.split("-")[1])):
        events = latest_run(read_jsonl(log), "config_resolved")
        result = last_event(events, "peer_result") or {}
        final = last_event(events, "peer_evaluated")
        by_epoch = {int(k): v for k, v in (result.get("bytes_sent_by_epoch") or {}).items()}
        ends = [e for e in events if e.get("event") == "epoch_end" and isinstance(e.get("epoch"), int)]
        sent = 0
        for i, e in enumerate(ends):
            sent += by_epoch.get(e["epoch"], 0)
            acc = e.get("test_accuracy")
            if i == len(ends) - 1 and final is not None:
                acc = final.get("test_accuracy")  # the last epoch is scored on the whole test split
            row: Row = {"arm": arm, "run": log.stem, "epoch": e["epoch"] + 1, "ts": e.get("ts"),
                        "train_loss": e.get("train_loss"), "test_accuracy": acc,
                        "mb_sent": sent / 1e6 if by_epoch else None}
            for kind, n in (e.get("triggers") or {}).items():
                row[f"triggers/{kind}"] = n
            yield row


def _centralized_rows(arm: str, run_dir: Path) -> Iterator[Row]:
    events = latest_run(read_jsonl(run_dir / "baseline.jsonl"), "config_resolved")
    for e in events:
        if e.get("event") == "epoch_end" and isinstance(e.get("epoch"), int):
            yield {"arm": arm, "run": "centralized", "epoch": e["epoch"], "ts": e.get("ts"),
                   "train_loss": e.get("train_loss"), "test_accuracy": e.get("test_accuracy"),
                   "test_loss": e.get("test_loss"), "lr": e.get("lr")}


def rows(path: str | Path) -> list[Row]:
    """Every per-epoch record of a run folder or of every arm of an experiment folder."""
    run = load(path)
    out: list[Row] = []
    for arm in run["arms"]:
        run_dir = Path(arm["dir"])
        name = arm.get("name") or run_dir.name
        gen = _centralized_rows if arm["kind"] == "centralized" else _swarm_rows
        out.extend(gen(name, run_dir))
    if not out:
        raise DataError(f"{path}: no epoch_end events to export")
    return out


def _columns(records: list[Row]) -> list[str]:
    extra = sorted({k for r in records for k in r} - set(FIXED))
    return [*FIXED, *extra]


def write_csv(records: list[Row], path: str | Path) -> Path:
    """One row per (arm, peer, epoch); empty cells where a run has no such scalar."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_columns(records), restval="")
        writer.writeheader()
        for r in records:
            writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return target


def write_tensorboard(records: list[Row], logdir: str | Path) -> list[Path]:
    """TensorBoard event files, one run folder per (arm, peer); returns the folders written."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DataError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    root = Path(logdir)
    folders: dict[tuple[str, str], list[Row]] = {}
    for r in records:
        folders.setdefault((r["arm"], r["run"]), []).append(r)
    written = []
    for (arm, run), recs in folders.items():
        folder = root / arm / run
        writer = SummaryWriter(log_dir=str(folder))
        try:
            for r in recs:
                for key, value in r.items():
                    if key in FIXED or not isinstance(value, int | float) or isinstance(value, bool):
                        continue
                    writer.add_scalar(key, float(value), global_step=int(r["epoch"]), walltime=r.get("ts"))
        finally:
            writer.close()
        written.append(folder)
    return written
