"""Start a whole swarm on this host: ``python -m gossip.launch CONFIG --run-dir DIR``.

Starts ``peers`` peer processes (``python -m gossip.peer``) and, unless ``--no-dashboard``,
the dashboard on ``dashboard.port``; shows one progress line per peer (read from the peers'
telemetry, so the launcher is an observer like the dashboard, not a coordinator); turns
SIGINT (Ctrl-C), SIGTERM or SIGHUP into a graceful stop of every peer, killing any peer still
running ``STOP_GRACE_S`` later, so no peer outlives the launcher (an error in the launcher stops
them too); and writes ``DIR/result.json`` summarising the run (``interrupted``, ``signal``).

Nothing goes wrong quietly: a ``DIR`` that holds a previous run is refused unless resumed or
replaced (:mod:`gossip.runtime.rundir`); a dashboard that cannot start (its port is taken) stops
the launch before any peer starts; a peer that exits with an error is reported at once, with the
last line of its log; the summary line counts the peers that finished, also after a stop signal.

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
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import yaml

from gossip import config as config_mod
from gossip.cli import guarded
from gossip.config import Config, config_hash, to_dict
from gossip.errors import ConfigError, PeerError
from gossip.observe.log import get_logger, run_logging
from gossip.observe.telemetry import TelemetrySubscriber
from gossip.runtime import curve, rundir
from gossip.runtime.runsummary import exit_text, last_line, summarize, summary_line

__all__ = ["main", "run", "summarize", "summary_line"]

log = get_logger(__name__)

STOP_GRACE_S = 10.0
DASHBOARD_READY_S = 30.0  # the dashboard imports aiohttp and binds its port well within this


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    out = log_path.open("wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=env)


class PeerProgressLines:
    """One line per peer from the peers' telemetry (redrawn on a TTY, per epoch otherwise)."""

    def __init__(self, cfg: Config, stream: IO[str] | None) -> None:
        self.stream = stream
        self.tty = bool(stream and stream.isatty())
        self.sub = TelemetrySubscriber(cfg)
        self.last: dict[int, dict[str, Any]] = {}
        self.printed_epoch: dict[int, tuple[int, str]] = {}
        self.drawn = 0

    def poll(self, timeout_ms: int) -> None:
        for got in self.sub.poll(timeout_ms):
            snap = got.message
            if isinstance(snap, dict) and isinstance(snap.get("peer_id"), int):
                self.last[snap["peer_id"]] = snap
        self.render()

    @staticmethod
    def line(s: dict[str, Any]) -> str:
        acc, loss = s.get("test_accuracy"), s.get("loss")  # None until the first batch / evaluation
        mb = (s.get("bytes_sent") or 0) / 1e6
        return (f"peer {s['peer_id']}: {s.get('state', '?'):9} epoch {min(s.get('epoch', 0) + 1, s.get('epochs', 0))}"
                f"/{s.get('epochs', '?')} step {s.get('step', 0)}/{s.get('steps_per_epoch', '?')} "
                f"loss {'-' if loss is None else f'{loss:.3f}'} acc {'-' if acc is None else f'{acc:.4f}'} "
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

    def note(self, text: str) -> None:
        """A line above the progress lines (which are redrawn below it on a TTY)."""
        if self.stream is None:
            return
        if self.tty and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[2K")  # the note takes the first progress line's place
            self.drawn = 0
        self.stream.write(text + "\n")
        self.render()

    def close(self) -> None:
        self.sub.close()


class _Signalled(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) delivered to the launcher, raised in its main thread."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _StopSignals:
    """While installed, the first stop signal raises :class:`_Signalled`; later ones cut the grace short."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopping = False  # set once the peers are being stopped: a signal then must not raise
        self.hurry = False
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = self.signum or signum
        if self.stopping:
            self.hurry = True
            return
        self.stopping = True
        raise _Signalled(signum)

    def __enter__(self) -> _StopSignals:
        # only the main thread may set handlers; elsewhere KeyboardInterrupt cannot arrive either
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _stop(procs: dict[str, subprocess.Popen[bytes]], signals: _StopSignals, grace_s: float) -> None:
    """SIGINT (a peer's graceful stop) to every process still running, then SIGKILL whoever is left
    after ``grace_s`` (or at once on a second signal): no peer outlives its launcher."""
    signals.stopping = True
    running = [p for p in procs.values() if p.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in running) and time.monotonic() < deadline and not signals.hurry:
        time.sleep(0.05)
    for name, proc in procs.items():
        if proc.poll() is None:
            log.warning("process_killed", process=name, grace_s=grace_s)
            proc.kill()
            proc.wait()


def run(cfg: Config, run_dir: str | Path, *, dashboard: bool = True,
        progress: IO[str] | None = sys.stderr, keep_dashboard: bool = False,
        resume: bool = False, fresh: bool = False) -> dict[str, Any]:
    """Run the swarm described by ``cfg`` to the end and return (and write) ``result.json``.

    ``resume``: every peer continues from its newest checkpoint in ``run_dir``. ``fresh``: the
    previous run's files in ``run_dir`` are removed first; without either, a ``run_dir`` that holds
    a run raises :class:`~gossip.errors.ConfigError`. SIGINT, SIGTERM or SIGHUP stop the peers
    gracefully (``result["interrupted"]``); an error in the launcher stops them too before it
    propagates.
    """
    run_dir = Path(run_dir)
    rundir.claim(run_dir, resume=resume, fresh=fresh)
    run_dir.mkdir(parents=True, exist_ok=True)
    asked = cfg  # the result is filed under the config asked for, not the key folder filled in below
    cfg = curve.launch_keys(cfg, run_dir)  # a key pair per peer in run_dir/keys unless the config has them
    cfg_path = run_dir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    with run_logging(run_dir / "launch.jsonl"), _StopSignals() as signals:
        log.info("launch_start", peers=cfg.peers, config_hash=config_hash(cfg), run_dir=str(run_dir))
        t0 = time.monotonic()
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            interrupted = _supervise(cfg, run_dir, cfg_path, procs, signals, dashboard=dashboard,
                                     progress=progress, keep_dashboard=keep_dashboard, resume=resume)
        except BaseException:  # an error in the launcher itself (or a signal during the spawn)
            _stop(procs, signals, STOP_GRACE_S)
            raise
        stop_signal = signal.Signals(signals.signum).name if signals.signum else None
        if interrupted:
            log.info("launch_interrupted", signal=stop_signal)
        wall = time.monotonic() - t0
        peers = {k: v for k, v in procs.items() if k.startswith("peer-")}
        failed = {k: p.returncode for k, p in peers.items() if p.returncode != 0}
        result = summarize(asked, run_dir, wall)
        result["interrupted"] = interrupted
        result["signal"] = stop_signal if interrupted else None
        result["failed"] = failed
        (run_dir / "result.json").write_text(json.dumps(result, indent=2))
        log.info("launch_end", wall_s=round(wall, 3), accuracy=result["accuracy"], failed=failed)
    if failed and not result["peers"]:
        first = next(iter(failed))
        raise PeerError(f"every peer failed; {first}: {last_line(run_dir / f'{first}.log')}")
    return result


def _await_dashboard(cfg: Config, proc: subprocess.Popen[bytes], log_path: Path) -> str:
    """The URL the dashboard says it listens on; a dashboard that exits first stops the launch."""
    deadline = time.monotonic() + DASHBOARD_READY_S
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace") if log_path.is_file() else ""
        for line in text.splitlines():
            if line.startswith("dashboard: http"):
                return line.split()[1]
        if proc.poll() is not None:
            last = last_line(log_path)
            if last.startswith("error: "):  # its own one-line error (dashboard.port: cannot listen ...)
                raise ConfigError(f"{last.removeprefix('error: ')}; set dashboard.port=<a free port> "
                                  "or pass --no-dashboard")
            raise ConfigError(f"the dashboard did not start ({exit_text(proc.returncode)}: {last}); "
                              f"see {log_path}, or pass --no-dashboard")
        time.sleep(0.05)
    log.warning("dashboard_slow", waited_s=DASHBOARD_READY_S, log=str(log_path))
    return f"http://{cfg.dashboard.host}:{cfg.dashboard.port}/"


def _report_failures(peers: dict[str, subprocess.Popen[bytes]], reported: set[str], run_dir: Path,
                     view: PeerProgressLines) -> None:
    """Say at once (terminal and log) that a peer exited with an error, naming its last log line."""
    for name, proc in peers.items():
        if name in reported or proc.poll() in (None, 0):  # poll(): any() above stops at the first running
            continue
        reported.add(name)
        path = run_dir / f"{name}.log"
        line = last_line(path)
        log.warning("peer_failed", process=name, returncode=proc.returncode, last_line=line[:300])
        view.note(f"{name.replace('-', ' ')} failed ({exit_text(proc.returncode)}): {line} (see {path})")


def _supervise(cfg: Config, run_dir: Path, cfg_path: Path, procs: dict[str, subprocess.Popen[bytes]],
               signals: _StopSignals, *, dashboard: bool, progress: IO[str] | None, keep_dashboard: bool,
               resume: bool) -> bool:
    """Start the dashboard and the peers (into ``procs``), show progress until the peers end, stop the
    dashboard; True when a stop signal ended the run early."""
    url = ""
    if dashboard and cfg.dashboard.enabled:
        procs["dashboard"] = _spawn(["-m", "gossip.dashboard", "--config", str(cfg_path)],
                                    run_dir / "dashboard.log")
        url = _await_dashboard(cfg, procs["dashboard"], run_dir / "dashboard.log")
        if progress:
            progress.write(f"dashboard: {url}\n")
    for p in range(cfg.peers):
        procs[f"peer-{p}"] = _spawn(["-m", "gossip.peer", "--id", str(p), "--config", str(cfg_path),
                                     "--run-dir", str(run_dir), "--quiet", *(["--resume"] if resume else [])],
                                    run_dir / f"peer-{p}.log")
    peers = {k: v for k, v in procs.items() if k.startswith("peer-")}
    view = PeerProgressLines(cfg, progress)
    interrupted = False
    reported: set[str] = set()
    try:
        while any(p.poll() is None for p in peers.values()):
            view.poll(250)
            _report_failures(peers, reported, run_dir, view)
        _report_failures(peers, reported, run_dir, view)
    except KeyboardInterrupt:  # SIGINT, SIGTERM or SIGHUP (_Signalled)
        interrupted = True
        _stop(peers, signals, STOP_GRACE_S)
    finally:
        view.poll(0)
        view.close()
    if keep_dashboard and not interrupted and "dashboard" in procs:
        if progress:
            progress.write(f"swarm finished; dashboard still at {url} (Ctrl-C to exit)\n")
        with contextlib.suppress(KeyboardInterrupt):
            procs["dashboard"].wait()
    if "dashboard" in procs:
        _stop({"dashboard": procs["dashboard"]}, signals, 5.0)
    return interrupted


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gossip.launch",
        description="Start a whole gossip swarm on this host (one process per peer, plus the dashboard), "
        "show per-peer progress and write RUN_DIR/result.json. A RUN_DIR that holds a previous run "
        "(peer-*.jsonl, result.json, checkpoints) is refused unless --resume or --fresh: two runs are "
        "never mixed in one folder.",
        epilog="example: python -m gossip.launch configs/mnist_4peers.yaml --run-dir runs/demo peers=8 "
        "topology.kind=ring",
    )
    ap.add_argument("config", help="YAML config (see configs/)")
    ap.add_argument("--run-dir", required=True, help="folder for logs, per-peer results and result.json")
    ap.add_argument("--no-dashboard", action="store_true", help="do not start the web dashboard")
    ap.add_argument("--keep-dashboard", action="store_true",
                    help="leave the dashboard running after the swarm finishes, until Ctrl-C")
    again = ap.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue a stopped or crashed run: every peer starts from its newest checkpoint")
    again.add_argument("--fresh", action="store_true",
                       help="replace the previous run in RUN_DIR: delete its logs, results and checkpoints "
                       "first (other files stay)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. peers=8")
    args = ap.parse_intermixed_args(argv)

    def go() -> int:
        cfg = config_mod.load(args.config, args.overrides)
        result = run(cfg, args.run_dir, dashboard=not args.no_dashboard, keep_dashboard=args.keep_dashboard,
                     resume=args.resume, fresh=args.fresh)
        print(summary_line(result, Path(args.run_dir) / "result.json"))
        if result["failed"]:
            print(f"failed peers: {result['failed']} (see their .log files)", file=sys.stderr)
            return 1
        if result["interrupted"]:  # 128 + the signal, as a shell reports a process it stopped
            return 128 + int(signal.Signals[result["signal"] or "SIGINT"])
        return 0

    return guarded(go)


if __name__ == "__main__":
    raise SystemExit(main())
