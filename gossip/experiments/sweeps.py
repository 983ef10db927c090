"""A sweep's rows as a small table and a plot per swept key (``experiment.sweeps`` in the config).

For each key, the swarm arm (the config's own value, "base") and one row per swept value: accuracy
(mean ± std over peers and seeds), ensemble, MB per epoch and wall time; the plot shows accuracy
against the swept value (and against MB per epoch when the key changes the traffic, e.g.
``codec.density``), so "where does parity still hold" reads off one picture.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def by_key(rows: list[Row]) -> dict[str, list[Row]]:
    """Sweep rows grouped by swept key, in plan order."""
    out: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r.get("sweep"):
            out[r["sweep"]["key"]].append(r)
    return dict(out)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def tables(rows: list[Row]) -> list[str]:
    """Markdown lines: one table per swept key (empty when the experiment has no sweep)."""
    base = next((r for r in rows if r["role"] == "swarm"), None)
    lines: list[str] = []
    for key, group in by_key(rows).items():
        lines += [f"### Sweep over `{key}`", "",
                  "| value | accuracy % (mean ± std) | ensemble % | MB/epoch | wall s | complete |",
                  "|---|---|---|---|---|---|"]
        entries = ([("base (the swarm arm)", base)] if base else []) + [(str(r["sweep"]["value"]), r) for r in group]
        for label, r in entries:
            acc = "—" if r["accuracy_mean"] is None else f"{_pct(r['accuracy_mean'])} ± {_pct(r['accuracy_std'])}"
            mb = "—" if r["mb_per_epoch"] is None else f"{r['mb_per_epoch']:.2f}"
            wall = "—" if r["wall_s"] is None else f"{r['wall_s']:.0f}"
            lines.append(f"| {label} | {acc} | {_pct(r.get('ensemble_mean'))} | {mb} | {wall} | "
                         f"{'yes' if r['complete'] else 'no'} |")
        lines.append("")
    return lines


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def plot(rows: list[Row], out: Path) -> list[str]:
    """One PNG per swept key (``sweep_<key>.png``); returns the file names."""
    groups = by_key(rows)
    if not groups:
        return []
    from matplotlib.figure import Figure

    written = []
    for key, group in groups.items():
        values = [r["sweep"]["value"] for r in group]
        accs = [None if r["accuracy_mean"] is None else 100 * r["accuracy_mean"] for r in group]
        stds = [0.0 if r["accuracy_std"] is None else 100 * r["accuracy_std"] for r in group]
        mbs = [r["mb_per_epoch"] for r in group]
        traffic = len({round(m or 0.0, 3) for m in mbs}) > 1
        fig = Figure(figsize=(10 if traffic else 6, 4))
        ax = fig.add_subplot(1, 2 if traffic else 1, 1)
        xs = values if _numeric(values) else list(range(len(values)))
        ax.errorbar(xs, [a if a is not None else float("nan") for a in accs], yerr=stds, marker="o", capsize=3)
        if not _numeric(values):
            ax.set_xticks(xs, [str(v) for v in values])
        elif all(v > 0 for v in values) and max(values) / min(values) >= 20:
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel="test accuracy %", title=f"accuracy vs {key}")
        ax.grid(alpha=0.3)
        if traffic:
            ax2 = fig.add_subplot(1, 2, 2)
            ax2.errorbar(mbs, [a if a is not None else float("nan") for a in accs], yerr=stds, marker="o", capsize=3)
            for m, a, v in zip(mbs, accs, values, strict=True):
                if m is not None and a is not None:
                    ax2.annotate(str(v), (m, a), textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax2.set(xlabel="MB per epoch (all peers)", ylabel="test accuracy %", title="accuracy vs bytes")
            ax2.grid(alpha=0.3)
        fig.tight_layout()
        name = "sweep_" + "".join(c if c.isalnum() else "_" for c in key) + ".png"
        fig.savefig(out / name, dpi=110)
        written.append(name)
    return written
