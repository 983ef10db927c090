"""gossip.runtime.launch without a real swarm: the stop (a graceful SIGINT first, SIGKILL for whoever
ignores it), a reused run directory, a dashboard whose port is taken, a peer that fails at start-up."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ports import free_port_block

from gossip import config
from gossip.errors import ConfigError
from gossip.runtime import launch, rundir

STUBBORN = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
# A graceful process says so itself, as a peer does (its loop installs its own handlers): a test run
# started in the background by a non-interactive shell inherits SIGINT ignored (POSIX), and a Python
# child started with SIGINT ignored keeps it so (seen in session 9: CI run as `cmd &`).
POLITE = ("import signal, time\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
          "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})\n"
          "try:\n    print('up', flush=True); time.sleep(60)\nexcept KeyboardInterrupt:\n    raise SystemExit(7)")


def _start(code: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"  # its handlers are in place
    return proc


def test_a_graceful_process_stops_on_sigint_and_a_stubborn_one_is_killed() -> None:
    polite, stubborn = _start(POLITE), _start(STUBBORN)
    masks = {who: [line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith(("SigBlk", "SigIgn"))] for who, pid in (("pytest", "self"), ("polite", polite.pid))}
    t0 = time.monotonic()
    # 3 s of grace: a clean-clone CI run (session 9) saw the polite one still running after 1 s
    launch._stop({"peer-0": polite, "peer-1": stubborn}, launch._StopSignals(), 3.0)
    assert polite.returncode == 7, masks  # it got SIGINT and exited its own way
    assert stubborn.returncode == -9  # killed after the grace period
    assert 2.9 < time.monotonic() - t0 < 15


def test_a_second_signal_cuts_the_grace_short() -> None:
    stubborn = _start(STUBBORN)
    signals = launch._StopSignals()
    signals.hurry = True  # what the handler sets when a signal arrives while stopping
    t0 = time.monotonic()
    launch._stop({"peer-0": stubborn}, signals, 30.0)
    assert stubborn.returncode == -9 and time.monotonic() - t0 < 5


def test_an_error_in_the_launcher_stops_the_peers_it_started(tmp_path: object,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[subprocess.Popen[bytes]] = []

    def spawn(args: list[str], log_path: object) -> subprocess.Popen[bytes]:
        started.append(_start(STUBBORN))  # a peer that ignores the graceful stop
        return started[-1]

    class Broken:
        def __init__(self, *args: object) -> None:
            raise RuntimeError("telemetry view broke")

    monkeypatch.setattr(launch, "_spawn", spawn)
    monkeypatch.setattr(launch, "PeerProgressLines", Broken)
    monkeypatch.setattr(launch, "STOP_GRACE_S", 0.5)
    with pytest.raises(RuntimeError, match="telemetry view broke"):
        launch.run(config.load(None, ["peers=2"]), tmp_path, dashboard=False, progress=None)
    assert len(started) == 2 and all(p.returncode == -9 for p in started)


# ---------------------------------------------------------------- a newcomer's run never goes wrong quietly
REPO = Path(__file__).resolve().parent.parent


def _launch_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gossip.launch", "configs/mnist_4peers.yaml", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout)


def test_a_run_dir_that_holds_a_run_is_refused_without_resume_or_fresh(tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    run_dir.mkdir()
    (run_dir / "peer-0.jsonl").write_text('{"event": "config_resolved"}\n')
    proc = _launch_cli("--run-dir", str(run_dir), "--no-dashboard")
    assert proc.returncode == 2
    assert proc.stderr == (f"error: {run_dir}: holds a previous run; use --resume to continue it, "
                           "--fresh to replace it, or another --run-dir\n")
    assert (run_dir / "peer-0.jsonl").read_text() == '{"event": "config_resolved"}\n'  # untouched
    assert not (run_dir / "launch.jsonl").exists()
    with pytest.raises(ConfigError, match="holds a previous run"):
        launch.run(config.load(None, ["peers=2"]), run_dir, dashboard=False, progress=None)
    both = _launch_cli("--run-dir", str(run_dir), "--resume", "--fresh")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    assert "--fresh" in _launch_cli("--help").stdout


def test_fresh_removes_only_what_a_run_writes_and_leftovers_of_a_launch_without_peers_are_reused(
        tmp_path: Path) -> None:
    for name in ("peer-0.jsonl", "peer-0.log", "peer-1.result.json", "result.json", "launch.jsonl",
                 "dashboard.log", "config.yaml", "notes.txt"):
        (tmp_path / name).write_text("old")
    (tmp_path / "checkpoints" / "peer-0").mkdir(parents=True)
    rundir.claim(tmp_path, fresh=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "launch.jsonl").write_text("a launch whose dashboard port was taken")
    rundir.claim(tmp_path)  # no peer ran: nothing to mix, the stale launcher log is not appended to
    assert not (tmp_path / "launch.jsonl").exists()
    (tmp_path / "result.json").write_text("{}")
    rundir.claim(tmp_path, resume=True)  # a resumed run keeps its files
    assert (tmp_path / "result.json").exists()


def test_a_dashboard_that_cannot_bind_its_port_stops_the_launch_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _launch_cli("--run-dir", str(tmp_path / "run"), f"dashboard.port={port}",
                           f"dashboard.telemetry_port={free_port_block(4)}", f"topology.base_port={free_port_block(4)}")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: dashboard.port: cannot listen on 127.0.0.1:{port} (")
    assert proc.stderr.endswith("; set dashboard.port=<a free port> or pass --no-dashboard\n")
    assert f":{port}/" not in proc.stdout  # never the URL of the program that holds the port
    assert not list((tmp_path / "run").glob("peer-*"))  # stopped before any peer started


# a peer that trains to the end (writes its result) and one that fails at start-up
GOOD_PEER = """import json, sys, time
run_dir = sys.argv[sys.argv.index("--run-dir") + 1]
time.sleep(4)
json.dump({"id": 0, "test_accuracy": 0.9, "stopped": False, "bytes_sent": 10, "bytes_received": 10,
           "dense_equivalent_bytes": 100, "params": 5}, open(run_dir + "/peer-0.result.json", "w"))
"""
BAD_PEER = "import sys; print('error: peer 1: cannot listen on 127.0.0.1:24001 (address in use)'); sys.exit(2)"


class _Stamped(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        self.stamps.append((time.monotonic(), text))
        return super().write(text)


def test_a_peer_that_fails_at_start_up_is_reported_at_once_and_not_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ended: dict[str, float] = {}

    def spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        peer = args[args.index("--id") + 1]
        code = GOOD_PEER if peer == "0" else BAD_PEER
        return subprocess.Popen([sys.executable, "-c", code, *args], stdout=log_path.open("wb"),
                                stderr=subprocess.STDOUT)

    monkeypatch.setattr(launch, "_spawn", spawn)
    stream = _Stamped()
    t0 = time.monotonic()
    result = launch.run(config.load(None, ["peers=2"]), tmp_path, dashboard=False, progress=stream)
    ended["good"] = time.monotonic()
    notes = [(t, s) for t, s in stream.stamps if s.startswith("peer 1 failed")]
    assert len(notes) == 1
    when, text = notes[0]
    assert text == (f"peer 1 failed (exit 2): error: peer 1: cannot listen on 127.0.0.1:24001 (address in use) "
                    f"(see {tmp_path / 'peer-1.log'})\n")
    assert when - t0 < 3.5 < ended["good"] - t0  # while peer 0 was still training, not at the end
    assert result["failed"] == {"peer-1": 2} and result["finished_peers"] == 1 and result["n_peers"] == 2
    line = launch.summary_line(result, tmp_path / "result.json")
    assert line.startswith("swarm of 2, 1 finished (failed: peer-1): accuracy 0.9000")
    events = [json.loads(x)["event"] for x in (tmp_path / "launch.jsonl").read_text().splitlines()]
    assert "peer_failed" in events


def test_summary_line_of_an_interrupted_run_and_progress_before_the_first_batch() -> None:
    result = {"n_peers": 4, "finished_peers": 0, "failed": {}, "interrupted": True, "signal": "SIGINT",
              "accuracy": {"mean": None}, "comm": {}, "wall_s": 12.34}
    assert launch.summary_line(result, Path("runs/demo/result.json")) == (
        "swarm of 4, 0 finished, interrupted by SIGINT (continue with --resume): no accuracy, 12.3 s "
        "-> runs/demo/result.json")
    line = launch.PeerProgressLines.line({"peer_id": 0, "state": "starting", "epochs": 2, "loss": None})
    assert "loss -" in line and "nan" not in line
