"""Does the swarm match the big model? ``python -m gossip.experiment CONFIG --out DIR``.

Runs, one after the other, with the same data, seeds and epochs (every arm is the CONFIG
with a few keys changed):

* ``large``  — the centralized large model (``experiment.large_model``) on all the data;
* ``small``  — the centralized small model (``experiment.small_model``), the peers' model;
* ``swarm``  — ``peers`` small models gossiping (the CONFIG's swarm settings), then its
  **ensemble** vote and **consensus** model scored on the test split (:mod:`gossip.experiments.ensemble`);
* sweeps     — the swarm again with one key changed per run (``experiment.sweeps``).

Each arm runs once per seed in ``experiment.seeds`` (sweeps: ``experiment.sweep_seeds``).
It writes ``DIR/report.md``, ``DIR/report.json`` and PNG plots (:mod:`gossip.experiments.report`), rebuilt
from the JSONL logs by :mod:`gossip.experiments.analyze`. Each arm lives in ``DIR/arms/<arm>-seed<s>/``;
an arm whose result is already there is not run again, so an interrupted experiment resumes
where it stopped (``--fresh`` starts over).

The ``experiment:`` mapping of the config is described in :mod:`gossip.experiments.plan`; overrides on the
command line work for its keys too: ``experiment.seeds=[0]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from gossip.cli import guarded
from gossip.config import Config, config_hash, to_dict
from gossip.errors import PeerError
from gossip.experiments import analyze, report
from gossip.experiments.plan import Settings, load, plan, settings_from
from gossip.observe.log import get_logger, run_logging

log = get_logger("gossip.experiments.experiment")  # not __name__: it is "__main__" under -m

__all__ = ["Settings", "arm_done", "load", "main", "plan", "run", "settings_from"]  # plan's, for notebooks


# ---------------------------------------------------------------- running arms
class TelemetryRecorder:
    """Observer thread: appends every peer snapshot's counters to ``telemetry.jsonl`` (bandwidth plot)."""

    FIELDS = ("peer_id", "ts", "state", "epoch", "step", "bytes_sent", "bytes_received", "test_accuracy")

    def __init__(self, cfg: Config, path: Path) -> None:
        self.cfg, self.path = cfg, path
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="telemetry-recorder", daemon=True)

    def __enter__(self) -> TelemetryRecorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(5)

    def _run(self) -> None:
        from gossip.observe.telemetry import TelemetrySubscriber

        with TelemetrySubscriber(self.cfg) as sub, self.path.open("a", encoding="utf-8") as out:
            while not self.stop.is_set():
                for got in sub.poll(200):
                    if isinstance(got.message, dict):
                        out.write(json.dumps({k: got.message.get(k) for k in self.FIELDS}) + "\n")


def arm_done(arm: dict[str, Any], root: Path, ensemble: bool) -> bool:
    """True when the arm's folder holds a finished run of exactly this arm's config (resume)."""
    path = root / arm["dir"] / "result.json"
    if not path.is_file():
        return False
    try:
        result = json.loads(path.read_text())
    except ValueError:
        return False
    if result.get("config_hash") != config_hash(arm["config"]):
        return False  # the config changed since (epochs, data, ...): its numbers would be stale
    if arm["kind"] == "centralized":
        return result.get("kind") == "centralized"
    peers = arm["config"].peers
    finals = all((root / arm["dir"] / f"peer-{p}.final.pt").is_file() for p in range(peers))
    return (result.get("finished_peers") == peers and not result.get("interrupted")
            and not result.get("failed") and (finals or not ensemble))


def _run_arm(arm: dict[str, Any], root: Path, s: Settings, progress: IO[str] | None) -> None:
    from gossip.experiments import baseline
    from gossip.runtime import launch

    arm_dir = root / arm["dir"]
    if arm_dir.exists():
        shutil.rmtree(arm_dir)  # a half-finished arm: logs are appended to, so start it clean
    arm_dir.mkdir(parents=True)
    cfg = arm["config"]
    if arm["kind"] == "centralized":
        baseline.run(cfg, arm_dir, progress=baseline.TerminalProgress(cfg.train.epochs, progress)
                     if progress else None)
        return
    with TelemetryRecorder(cfg, arm_dir / "telemetry.jsonl"):
        result = launch.run(cfg, arm_dir, dashboard=s.dashboard, progress=progress)
    if result.get("interrupted"):
        raise KeyboardInterrupt
    if result.get("failed"):
        raise PeerError(f"{arm['name']}: peers failed: {result['failed']} (see {arm_dir}/peer-*.log)")


def _ensemble(arm: dict[str, Any], root: Path, cache: dict[str, Any]) -> dict[str, Any]:
    from gossip.experiments import ensemble
    from gossip.training.data import load_dataset

    arm_dir = root / arm["dir"]
    path = arm_dir / "ensemble.json"
    if path.is_file():
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    cfg = arm["config"]
    key = json.dumps(to_dict(cfg)["data"], sort_keys=True)
    if key not in cache:
        cache.clear()  # one data set in memory at a time
        cache[key] = load_dataset(cfg.data)
    result = ensemble.evaluate_swarm(cfg, arm_dir, cache[key])
    path.write_text(json.dumps(result, indent=2))
    return result


def _say(progress: IO[str] | None, text: str) -> None:
    if progress is not None:
        progress.write(text + "\n")
        progress.flush()


def run(cfg: Config, out: str | Path, *, progress: IO[str] | None = sys.stderr, fresh: bool = False,
        report_only: bool = False) -> dict[str, Any]:
    """Run every arm not yet done, then write the report; returns report.json's content."""
    s = settings_from(cfg)
    arms = plan(cfg, s)
    root = Path(out)
    if fresh:  # only what an experiment writes: --out may be a folder holding other things
        shutil.rmtree(root / "arms", ignore_errors=True)
        for name in ("experiment.jsonl", "report.md", "report.json", *(f"{p}.png" for p in report.PLOTS)):
            (root / name).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    with run_logging(root / "experiment.jsonl"):  # each arm logs to its own folder inside this
        entries = [{k: a[k] for k in ("name", "group", "role", "seed", "dir", "kind", "sweep")} for a in arms]
        log.info("experiment_plan", settings=dataclasses.asdict(s), arms=entries, config=to_dict(cfg))
        unique: dict[str, dict[str, Any]] = {}
        for a in arms:
            unique.setdefault(a["dir"], a)  # an arm sharing another's folder (same config) runs under the first name
        todo = [] if report_only else list(unique.values())
        t0 = time.monotonic()
        failed: list[str] = []
        try:
            _run_arms(todo, root, s, progress, failed, t0)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True  # write what is done, then stop; the same command resumes
        data = analyze.load(root)
        result = report.write(root, data, analyze.summarize(data), data["settings"])
        log.info("experiment_report", answer=result["answer"], failed=failed, interrupted=interrupted,
                 seconds=round(time.monotonic() - t0, 3))
    if interrupted:
        _say(progress, f"interrupted: partial report in {root / 'report.md'}; run the same command to resume")
        raise KeyboardInterrupt
    result["failed"] = failed
    return result


def _run_arms(todo: list[dict[str, Any]], root: Path, s: Settings, progress: IO[str] | None,
              failed: list[str], t0: float) -> None:
    """Run (or skip, when done) each arm in turn; a failed arm is logged and added to ``failed``."""
    cache: dict[str, Any] = {}
    for i, arm in enumerate(todo, 1):
        head = f"[{i}/{len(todo)}] {arm['name']} ({arm['kind']}, {arm['config'].model.name}"
        head += f", {arm['config'].peers} peers)" if arm["kind"] == "swarm" else ")"
        if arm_done(arm, root, s.ensemble):
            _say(progress, f"{head}: already done, skipped")
        else:
            _say(progress, f"{head}: running ...")
            started = time.monotonic()
            try:
                _run_arm(arm, root, s, progress)
            except PeerError as exc:
                log.error("arm_failed", arm=arm["name"], dir=arm["dir"], error=str(exc))
                _say(progress, f"{head}: FAILED: {exc}")
                failed.append(arm["name"])
                continue
            log.info("arm_done", arm=arm["name"], dir=arm["dir"], seconds=round(time.monotonic() - started, 3))
            _say(progress, f"{head}: done in {time.monotonic() - started:.0f} s "
                           f"(experiment {time.monotonic() - t0:.0f} s so far)")
        if arm["kind"] == "swarm" and s.ensemble:
            extra = _ensemble(arm, root, cache)
            log.info("swarm_ensemble", arm=arm["name"], dir=arm["dir"], ensemble=extra["ensemble"],
                     consensus=extra["consensus"], agreement=extra["agreement"],
                     ensemble_uniform=extra["ensemble_uniform"], peer_accuracy=extra["peer_accuracy"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gossip.experiment",
        description="Swarm of small models vs one big model: run the centralized large and small models, "
        "the swarm (with its ensemble and consensus) and the configured sweeps, then write DIR/report.md, "
        "DIR/report.json and plots. Arms already done in DIR are not run again.",
        epilog="example: python -m gossip.experiment configs/compare_mnist.yaml --out runs/compare_mnist "
        "experiment.seeds=[0]",
    )
    ap.add_argument("config", help="YAML config with an experiment: mapping (see configs/compare_*.yaml)")
    ap.add_argument("--out", required=True, help="folder for the arms, the report and the plots")
    ap.add_argument("--fresh", action="store_true", help="delete DIR first instead of resuming")
    ap.add_argument("--report-only", action="store_true", help="run nothing: rebuild the report from DIR's logs")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=1")
    args = ap.parse_intermixed_args(argv)  # overrides may follow --out

    def go() -> int:
        cfg = load(args.config, args.overrides)
        result = run(cfg, args.out, fresh=args.fresh, report_only=args.report_only)
        print(report.markdown_table(result["rows"], result["target_accuracy"]))
        print(f"\n{result['answer']}\n-> {Path(args.out) / 'report.md'}")
        if result["failed"]:
            print(f"failed arms: {', '.join(result['failed'])}", file=sys.stderr)
            return 1
        return 0

    return guarded(go)


if __name__ == "__main__":
    raise SystemExit(main())
