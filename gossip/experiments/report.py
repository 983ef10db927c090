"""Tables, the one-sentence answer and the plots of an experiment (from :mod:`gossip.experiments.analyze` output).

Everything here is a pure function of the figures ``gossip.experiments.analyze`` rebuilt from the logs,
so ``report.md`` and ``python -m gossip.analyze DIR`` print the same table.

How to read the table:

* **accuracy % (mean ± std)**: final test accuracy on the whole test split. For a swarm,
  pooled over every peer of every seed (``over`` says how many models); for the other rows
  over seeds. ``seed std`` is the spread of the per-seed means: differences between arms
  smaller than it are noise.
* **MB/epoch**: wire bytes sent by all peers together (updates, relays, heartbeats) per
  epoch; a centralized model sends nothing.
* **wall s**: whole run, start-up, data loading and evaluation included (mean over seeds).
* **to X% s**: training seconds until the end of the first epoch whose test accuracy (mean
  over peers) reaches the target; ``k/n`` seeds reached it. Swarm epochs before the last are
  scored on the first 2000 test samples, so the swarm's early points are noisier.
* **compression**: dense-equivalent bytes (every update sent as fp32 parameters) / wire bytes.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from gossip.experiments import sweeps

PLOTS = {
    "accuracy_vs_epoch": "accuracy vs epoch (every arm; band: ± std over peers)",
    "accuracy_vs_mb": "accuracy vs MB communicated (cumulative, all peers)",
    "bandwidth": "swarm send rate over time (all peers together)",
    "label_histograms": "label histogram of each peer's shard",
}


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def _num(v: float | None, fmt: str = ".1f") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _params(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _over(row: dict[str, Any]) -> str:
    seeds = len(row["seeds"])
    per_seed = row["n"] // max(1, seeds)
    plural = "s" * (seeds > 1)
    return f"{per_seed} peers × {seeds} seed{plural}" if row["kind"] == "swarm" else f"{seeds} seed{plural}"


def markdown_table(rows: list[dict[str, Any]], target: float | None) -> str:
    to = f"to {100 * target:g}% s" if target is not None else "to target s"
    head = ["arm", "model", "params", "MMAC/img", "train TMAC", "peers", "accuracy % (mean ± std)", "over",
            "seed std", "ensemble %", "consensus %", "MB/epoch", "wall s", to, "compression"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        acc = "—" if r["accuracy_mean"] is None else f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}"
        ttt = "—" if r["target_reached"] is None else f"{_num(r['time_to_target_s'])} ({r['target_reached']})"
        comp = "—" if r["compression_ratio"] is None else f"{r['compression_ratio']:.0f}x"
        seed_std = None if r["accuracy_seed_std"] is None else 100 * r["accuracy_seed_std"]
        macs, train = r.get("macs"), r.get("train_macs")
        cells = [r["arm"] + ("" if r["complete"] else " (incomplete)"), r["model"] or "—", _params(r["params"]),
                 _num(None if macs is None else macs / 1e6, ".2f"), _num(None if train is None else train / 1e12, ".1f"),
                 str(r["peers"]), acc, _over(r), _num(seed_std, ".2f"), _pct(r.get("ensemble_mean")),
                 _pct(r.get("consensus_mean")), _num(r["mb_per_epoch"], ".2f"), _num(r["wall_s"]), ttt, comp]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_table(diff: list[dict[str, Any]]) -> str:
    head = ["arm", "accuracy % A", "accuracy % B", "Δ points (B − A)", "ensemble % A", "ensemble % B",
            "MB/epoch A", "MB/epoch B", "wall s A", "wall s B"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for d in diff:
        lines.append("| " + " | ".join([
            d["arm"], _pct(d["accuracy_a"]), _pct(d["accuracy_b"]), _num(d["delta_pts"], "+.2f"),
            _pct(d["ensemble_a"]), _pct(d["ensemble_b"]), _num(d["mb_per_epoch_a"], ".2f"),
            _num(d["mb_per_epoch_b"], ".2f"), _num(d["wall_s_a"]), _num(d["wall_s_b"])]) + " |")
    return "\n".join(lines)


def answer(rows: list[dict[str, Any]], tolerance_pts: float) -> str:
    """A few sentences: does the swarm match the centralized large model (else the small one)?"""
    by_role = {r["role"]: r for r in rows if r["role"] in ("swarm", "large", "small")}
    swarm, ref = by_role.get("swarm"), by_role.get("large") or by_role.get("small")
    if swarm is None or ref is None or swarm["accuracy_mean"] is None or ref["accuracy_mean"] is None:
        return "No answer yet: the swarm and the centralized arm must both finish."
    gap = 100 * (ref["accuracy_mean"] - swarm["accuracy_mean"])
    side = "below" if gap >= 0 else "above"
    who = (f"the swarm of {swarm['peers']} {swarm['model']} peers ({_params(swarm['params'])} params each) reaches "
           f"{_pct(swarm['accuracy_mean'])}% ± {100 * swarm['accuracy_std']:.2f} ({_over(swarm)}), "
           f"{abs(gap):.2f} points {side} the centralized {ref['model']} ({_params(ref['params'])} params, "
           f"{_pct(ref['accuracy_mean'])}%)")
    together = {k: swarm[f"{k}_mean"] for k in ("ensemble", "consensus") if swarm.get(f"{k}_mean") is not None}
    best = max(together, key=lambda k: together[k], default=None)
    tol = tolerance_pts + 1e-9  # inclusive: a gap of exactly the tolerance matches
    if gap <= tol:
        text = f"Yes: {who}, within the {tolerance_pts:g}-point tolerance."
    elif best is not None and 100 * (ref["accuracy_mean"] - together[best]) <= tol:
        text = (f"Partly: {who}; the swarm deciding together does match it: its {best} reaches "
                f"{_pct(together[best])}% (tolerance {tolerance_pts:g} points).")
    else:
        text = f"No: {who}, more than the {tolerance_pts:g}-point tolerance."
    small = by_role.get("small")
    if small is not None and small is not ref and small["accuracy_mean"] is not None:
        size_gap = 100 * (ref["accuracy_mean"] - small["accuracy_mean"])
        text += (f" Trained centrally, {small['model']} itself reaches {_pct(small['accuracy_mean'])}%: "
                 f"{size_gap:.2f} points of the gap come from the smaller model, {gap - size_gap:.2f} from "
                 "training it as a swarm.")
    noise = [r["accuracy_seed_std"] for r in (swarm, ref) if r["accuracy_seed_std"] is not None]
    if noise and abs(gap) <= 2 * 100 * max(noise):
        text += f" The gap is within twice the seed-to-seed spread ({100 * max(noise):.2f} points): it is noise."
    if together:
        text += " Together the peers score " + " and ".join(
            f"{_pct(v)}% as {'an ensemble vote' if k == 'ensemble' else 'a consensus model'}"
            for k, v in together.items()) + "."
        if swarm.get("agreement_mean") is not None:
            text = text[:-1] + (f" (the peers predict the same class on {100 * swarm['agreement_mean']:.1f}% of "
                                "the test samples).")
    if swarm["mb_per_epoch"] is not None:
        comp = f" ({swarm['compression_ratio']:.0f}x less than dense updates)" if swarm["compression_ratio"] else ""
        text += (f" The swarm sent {swarm['mb_per_epoch']:.2f} MB per epoch{comp} and ran {_num(swarm['wall_s'], '.0f')} s"
                 f" against {_num(ref['wall_s'], '.0f')} s for the centralized model.")
    if swarm.get("mode") == "codistill":  # its sweeps are codistilling too: the table tells them apart
        return text + " The peers codistill (each its own model): the swarm's answer is their ensemble."
    return text + "".join(_codistill(r, ref, swarm, small) for r in rows if r.get("mode") == "codistill")


def _codistill(row: dict[str, Any], ref: dict[str, Any], swarm: dict[str, Any], small: dict[str, Any] | None) -> str:
    """The codistilling arm's answer: its ensemble, at its inference cost against the big model's."""
    ens = row.get("ensemble_mean")
    if ens is None or ref["accuracy_mean"] is None:
        return ""
    gap = 100 * (ens - ref["accuracy_mean"])
    cost = ""
    if row.get("macs") and ref.get("macs"):
        cost = (f", {row['peers']} x {_params(row['params'])} params and {row['macs'] / 1e6:.1f} MMAC per image "
                f"against {_params(ref['params'])} and {ref['macs'] / 1e6:.1f}")
    mb = ""
    if row.get("mb_per_epoch") is not None and swarm.get("mb_per_epoch"):
        mb = f"; it sent {row['mb_per_epoch']:.2f} MB per epoch ({row['mb_per_epoch'] / swarm['mb_per_epoch']:.2f}x the averaging swarm's)"
    alone = ""
    if row.get("accuracy_mean") is not None and small is not None and small.get("accuracy_mean") is not None:
        alone = (f" Each of its peers, trained on a 1/{row['peers']} shard, reaches {_pct(row['accuracy_mean'])}% alone "
                 f"against {_pct(small['accuracy_mean'])}% for {small['model']} trained on all the data: that is "
                 "what the ensemble has to make up.")
    return (f" Codistilling instead (each peer its own model, {row['arm']}), the peers' ensemble reaches {_pct(ens)}% "
            f"({len(row['seeds'])} seeds), {abs(gap):.2f} points {'above' if gap >= 0 else 'below'} the centralized "
            f"{ref['model']}{cost}{mb}.{alone}")


# ---------------------------------------------------------------- plots
def _mean_curve(arms: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], list[float]]:
    """Per epoch, averaged over seeds: (x = ``key``, accuracy, std over peers)."""
    by_epoch: dict[int, list[tuple[float, float, float]]] = defaultdict(list)
    for a in arms:
        for c in a["curve"]:
            if c["accuracy"] is not None:
                by_epoch[c["epoch"]].append((c[key], c["accuracy"], c.get("accuracy_std") or 0.0))
    epochs = sorted(by_epoch)
    xs = [sum(p[0] for p in by_epoch[e]) / len(by_epoch[e]) for e in epochs]
    ys = [sum(p[1] for p in by_epoch[e]) / len(by_epoch[e]) for e in epochs]
    sd = [sum(p[2] for p in by_epoch[e]) / len(by_epoch[e]) for e in epochs]
    return xs, ys, sd


def plot_all(arms: list[dict[str, Any]], rows: list[dict[str, Any]], out: Path) -> list[str]:
    """Write the PNG plots into ``out``; returns their file names."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, safe in threads and notebooks
    from matplotlib.ticker import MaxNLocator

    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in arms:
        groups[a["group"]].append(a)
    swarms = {g: a for g, a in groups.items() if a[0]["kind"] == "swarm"}
    written = []

    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for g, ga in groups.items():
        xs, ys, sd = _mean_curve(ga, "epoch")
        style = "--" if ga[0]["role"] == "sweep" else "-"
        line = ax.plot(xs, [100 * y for y in ys], marker="o", label=g, linestyle=style)
        if ga[0]["kind"] == "swarm" and xs:
            lo = [100 * (y - s) for y, s in zip(ys, sd, strict=True)]
            hi = [100 * (y + s) for y, s in zip(ys, sd, strict=True)]
            ax.fill_between(xs, lo, hi, color=line[0].get_color(), alpha=0.15)
    for r in rows:  # the main swarm deciding together, at its last epoch
        last = max((c["epoch"] for a in groups.get(r["group"], []) for c in a["curve"]), default=None)
        if r["role"] != "swarm" or last is None:
            continue
        for key, marker, dx in (("ensemble", "*", 0.03), ("consensus", "D", 0.06)):  # dx: both stay visible
            if r.get(f"{key}_mean") is not None:
                ax.scatter([last + dx], [100 * r[f"{key}_mean"]], marker=marker, s=90, zorder=5,
                           label=f"{r['arm']} {key}")
    ax.set(xlabel="epoch", ylabel="test accuracy %", title=PLOTS["accuracy_vs_epoch"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    _legend(ax)
    written.append(_save(fig, out, "accuracy_vs_epoch"))

    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    mbs = []
    for g, ga in swarms.items():
        xs, ys, _ = _mean_curve(ga, "mb_cum")
        mbs += [x for x in xs if x > 0]
        ax.plot(xs, [100 * y for y in ys], marker="o", label=g)
    for g, ga in groups.items():
        if ga[0]["kind"] == "centralized":
            acc = [a["final_accuracy"][0] for a in ga if a["final_accuracy"]]
            if acc:
                ax.axhline(100 * sum(acc) / len(acc), linestyle=":" if ga[0]["role"] == "large" else "--",
                           color="black" if ga[0]["role"] == "large" else "gray",
                           label=f"{g} (centralized, no communication)")
    if mbs and max(mbs) / min(mbs) > 50:
        ax.set_xscale("log")
    ax.set(xlabel="MB sent (cumulative, all peers)", ylabel="test accuracy %", title=PLOTS["accuracy_vs_mb"])
    ax.grid(alpha=0.3)
    _legend(ax)
    written.append(_save(fig, out, "accuracy_vs_mb"))

    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    for g, ga in swarms.items():
        series = ga[0]["send_rate"]  # the first seed only: more would hide each other
        if series:
            ax.plot([p["t"] for p in series], [p["bps"] / 1e6 for p in series], drawstyle="steps-post",
                    label=f"{g} ({ga[0]['bandwidth']} links)")
    ax.set(xlabel="seconds since launch", ylabel="Mbit/s sent", title=PLOTS["bandwidth"])
    ax.grid(alpha=0.3)
    if swarms:
        _legend(ax)
    written.append(_save(fig, out, "bandwidth"))

    by_partition: dict[str, tuple[str, list[list[int]]]] = {}
    for g, ga in swarms.items():
        if ga[0]["label_histograms"] and all(h for h in ga[0]["label_histograms"]):
            by_partition.setdefault(ga[0]["partition"], (g, ga[0]["label_histograms"]))
    if by_partition:
        fig = Figure(figsize=(4 * len(by_partition) + 1, 4))
        for i, (part, (g, hists)) in enumerate(by_partition.items()):
            ax = fig.add_subplot(1, len(by_partition), i + 1)
            bottom = [0] * len(hists)
            for cls in range(len(hists[0])):
                vals = [h[cls] for h in hists]
                ax.bar(range(len(hists)), vals, bottom=bottom, label=str(cls))
                bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
            ax.set(xlabel="peer", ylabel="samples", title=f"{part} ({g})", xticks=list(range(len(hists))))
        fig.axes[-1].legend(title="class", fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.suptitle(PLOTS["label_histograms"])
        written.append(_save(fig, out, "label_histograms"))
    return written


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save(fig: Any, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)
    return f"{name}.png"


# ---------------------------------------------------------------- the files
def write(out: Path, run: dict[str, Any], summary: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and the PNG plots into ``out``; returns report.json's content."""
    plots = plot_all(run["arms"], summary["rows"], out) if run["arms"] else []
    text = answer(summary["rows"], settings.get("match_tolerance_pts", 0.5))
    dataset = next((a["dataset"] for a in run["arms"]), None)
    md = [f"# Swarm vs centralized on {dataset}", "", f"**{text}**", "", "## Results", "",
          markdown_table(summary["rows"], summary["target_accuracy"]), "",
          "Accuracy: final test accuracy on the whole test split (swarm: every peer's own model). "
          "Ensemble: confidence-weighted vote of the peers' softmax outputs (each peer weighted per sample "
          "by its max-softmax probability). Consensus: the peers' parameters (and BatchNorm statistics) "
          "averaged into one model. MB/epoch: wire bytes of all peers per epoch. Wall: whole run, start-up "
          "included. Time to target: training seconds until the end of the first epoch whose (mean) test "
          "accuracy reaches it (swarm epochs before the last are scored on the first 2000 test samples). "
          "Compression: dense fp32 bytes of the same updates / wire bytes. See gossip/experiments/report.py.", ""]
    sweep_lines = sweeps.tables(summary["rows"])
    if sweep_lines:
        md += ["## Sweeps", "", *sweep_lines]
        sweep_plots = sweeps.plot(summary["rows"], out)
        md += [line for p in sweep_plots for line in (f"![{p[:-4]}]({p})", "")]
        plots = plots + sweep_plots
    md += ["## Plots", ""] + [line for p in plots if p[:-4] in PLOTS for line in (f"![{PLOTS[p[:-4]]}]({p})", "")]
    md += ["## Arms", "", "| arm | seed | folder | complete |", "|---|---|---|---|"]
    md += [f"| {a['group']} | {a['seed']} | {Path(a['dir']).name} | {'yes' if a['complete'] else 'no'} |"
           for a in run["arms"]]
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    report = {"answer": text, "settings": settings, "target_accuracy": summary["target_accuracy"],
              "rows": summary["rows"], "plots": plots,
              "arms": [{k: v for k, v in a.items() if k != "label_histograms"} for a in run["arms"]]}
    (out / "report.json").write_text(json.dumps(finite(report), indent=2), encoding="utf-8")
    return report


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj
