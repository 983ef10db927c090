"""Start a whole swarm on this host: ``python -m gossip.launch CONFIG --run-dir DIR``.

Starts ``peers`` peer processes (``python -m gossip.peer``) and, unless ``--no-dashboard``,
the dashboard on ``dashboard.port``; shows one progress line per peer (read from the peers'
telemetry, so the launcher is an observer like the dashboard, not a coordinator); forwards
Ctrl-C as a graceful stop; and writes ``DIR/result.json`` summarising the run.

From Python or a Jupyter notebook::

    from gossip import config
    from gossip.runtime import launch
    result = launch.run(config.load("configs/mnist_4peers.yaml"), "runs/nb", dashboard=False)

Peers are subprocesses in both cases, so a notebook kernel stays responsive.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import yaml
import zmq

from gossip import config as config_mod
from gossip.cli import guarded
from gossip.config import Config, config_hash, to_dict
from gossip.errors import PeerError
from gossip.observe.log import configure, get_logger
from gossip.observe.telemetry import telemetry_endpoint

log = get_logger(__name__)

STOP_GRACE_S = 10.0


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    out = log_path.open("wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=env)


class Progress:
    """One line per peer from the peers' telemetry (redrawn on a TTY, per epoch otherwise)."""

    def __init__(self, cfg: Config, stream: IO[str] | None) -> None:
        self.stream = stream
        self.tty = bool(stream and stream.isatty())
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.LINGER, 0)
        for p in range(cfg.peers):
            self.sub.connect(telemetry_endpoint(cfg, p))
        self.last: dict[int, dict[str, Any]] = {}
        self.printed_epoch: dict[int, tuple[int, str]] = {}
        self.drawn = 0

    def poll(self, timeout_ms: int) -> None:
        if self.sub.poll(timeout_ms):
            while True:
                try:
                    snap = json.loads(self.sub.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                except ValueError:
                    continue
                if isinstance(snap, dict) and isinstance(snap.get("peer_id"), int):
                    self.last[snap["peer_id"]] = snap
        self.render()

    @staticmethod
    def line(s: dict[str, Any]) -> str:
        acc = s.get("test_accuracy")
        mb = (s.get("bytes_sent") or 0) / 1e6
        return (f"peer {s['peer_id']}: {s.get('state', '?'):9} epoch {min(s.get('epoch', 0) + 1, s.get('epochs', 0))}"
                f"/{s.get('epochs', '?')} step {s.get('step', 0)}/{s.get('steps_per_epoch', '?')} "
                f"loss {s.get('loss') or float('nan'):.3f} acc {'-' if acc is None else f'{acc:.4f}'} "
                f"sent {mb:.2f} MB updates {s.get('updates_sent', 0)}/{s.get('updates_applied', 0)} "
                f"rejected {s.get('updates_rejected', 0)}")

    def render(self) -> None:
        if self.stream is None:
            return
        if self.tty:
            if self.drawn:
                self.stream.write(f"\x1b[{self.drawn}F")
            lines = [self.line(self.last[p]) for p in sorted(self.last)]
            for text in lines:
                self.stream.write("\x1b[2K" + text + "\n")
            self.drawn = len(lines)
        else:
            for p, s in sorted(self.last.items()):
                key = (s.get("epoch", 0), s.get("state", ""))
                if self.printed_epoch.get(p) != key:
                    self.printed_epoch[p] = key
                    self.stream.write(self.line(s) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.sub.close()
        self.ctx.term()


def summarize(cfg: Config, run_dir: Path, wall_s: float) -> dict[str, Any]:
    peers = []
    for p in range(cfg.peers):
        path = run_dir / f"peer-{p}.result.json"
        if path.is_file():
            peers.append(json.loads(path.read_text()))
    accs = [r["test_accuracy"] for r in peers if r.get("test_accuracy") is not None]
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


def run(cfg: Config, run_dir: str | Path, *, dashboard: bool = True,
        progress: IO[str] | None = sys.stderr, keep_dashboard: bool = False,
        resume: bool = False) -> dict[str, Any]:
    """Run the swarm described by ``cfg`` to the end and return (and write) ``result.json``.

    ``resume``: every peer continues from its newest checkpoint in ``run_dir``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    configure(run_dir / "launch.jsonl")
    log.info("launch_start", peers=cfg.peers, config_hash=config_hash(cfg), run_dir=str(run_dir))
    t0 = time.monotonic()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    if dashboard and cfg.dashboard.enabled:
        procs["dashboard"] = _spawn(["-m", "gossip.dashboard", "--config", str(cfg_path)],
                                    run_dir / "dashboard.log")
        if progress:
            progress.write(f"dashboard: http://{cfg.dashboard.host}:{cfg.dashboard.port}/\n")
    for p in range(cfg.peers):
        procs[f"peer-{p}"] = _spawn(["-m", "gossip.peer", "--id", str(p), "--config", str(cfg_path),
                                     "--run-dir", str(run_dir), "--quiet", *(["--resume"] if resume else [])],
                                    run_dir / f"peer-{p}.log")
    view = Progress(cfg, progress)
    peers = {k: v for k, v in procs.items() if k.startswith("peer-")}
    interrupted = False
    try:
        while any(p.poll() is None for p in peers.values()):
            view.poll(250)
    except KeyboardInterrupt:
        interrupted = True
        for proc in peers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in peers.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
    finally:
        view.poll(0)
        view.close()
        if keep_dashboard and not interrupted and "dashboard" in procs:
            if progress:
                progress.write(f"swarm finished; dashboard still at http://{cfg.dashboard.host}:"
                               f"{cfg.dashboard.port}/ (Ctrl-C to exit)\n")
            with contextlib.suppress(KeyboardInterrupt):
                procs["dashboard"].wait()
        if "dashboard" in procs and procs["dashboard"].poll() is None:
            procs["dashboard"].send_signal(signal.SIGINT)
            try:
                procs["dashboard"].wait(5)
            except subprocess.TimeoutExpired:
                procs["dashboard"].kill()
    wall = time.monotonic() - t0
    failed = {k: p.returncode for k, p in peers.items() if p.returncode != 0}
    result = summarize(cfg, run_dir, wall)
    result["interrupted"] = interrupted
    result["failed"] = failed
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    log.info("launch_end", wall_s=round(wall, 3), accuracy=result["accuracy"], failed=failed)
    if failed and not result["peers"]:
        tail = (run_dir / f"{next(iter(failed))}.log").read_text(errors="replace").strip().splitlines()
        raise PeerError(f"every peer failed; {next(iter(failed))}: {tail[-1] if tail else 'no output'}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gossip.launch",
        description="Start a whole gossip swarm on this host (one process per peer, plus the dashboard), "
        "show per-peer progress and write RUN_DIR/result.json.",
        epilog="example: python -m gossip.launch configs/mnist_4peers.yaml --run-dir runs/demo peers=8 "
        "topology.kind=ring",
    )
    ap.add_argument("config", help="YAML config (see configs/)")
    ap.add_argument("--run-dir", required=True, help="folder for logs, per-peer results and result.json")
    ap.add_argument("--no-dashboard", action="store_true", help="do not start the web dashboard")
    ap.add_argument("--keep-dashboard", action="store_true",
                    help="leave the dashboard running after the swarm finishes, until Ctrl-C")
    ap.add_argument("--resume", action="store_true",
                    help="continue a stopped or crashed run: every peer starts from its newest checkpoint")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. peers=8")
    args = ap.parse_intermixed_args(argv)

    def go() -> int:
        cfg = config_mod.load(args.config, args.overrides)
        result = run(cfg, args.run_dir, dashboard=not args.no_dashboard, keep_dashboard=args.keep_dashboard,
                     resume=args.resume)
        acc, comm = result["accuracy"], result["comm"]
        if acc["mean"] is not None:
            print(f"swarm of {cfg.peers}: accuracy {acc['mean']:.4f} ± {acc['std']:.4f} "
                  f"(min {acc['min']:.4f}, max {acc['max']:.4f}), {comm['mb_per_epoch']:.2f} MB/epoch, "
                  f"compression {comm['compression_ratio'] or 0:.0f}x, {result['wall_s']:.1f} s "
                  f"-> {Path(args.run_dir) / 'result.json'}")
        if result["failed"]:
            print(f"failed peers: {result['failed']} (see their .log files)", file=sys.stderr)
            return 1
        return 130 if result["interrupted"] else 0

    return guarded(go)


if __name__ == "__main__":
    raise SystemExit(main())
