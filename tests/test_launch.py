"""Real swarms on loopback: peer processes, ZeroMQ, protobuf bytes, MNIST."""

import json
import subprocess
import sys

import pytest
from ports import free_port_block

from gossip import config
from gossip.runtime import launch

pytestmark = pytest.mark.slow


def tiny(peers=2, **extra):
    base = free_port_block(40)
    items = {
        "peers": peers, "model.name": "mnist_tiny", "data.limit_train": 3000, "data.limit_test": 1000,
        "train.epochs": 1, "train.batch_size": 32, "train.threads": 1,
        "topology.base_port": base, "dashboard.telemetry_port": base + 20,
        "timeouts.startup_s": 60, "timeouts.silence_s": 10, **extra,
    }
    return config.load(None, [f"{k}={v}" for k, v in items.items()])


def test_three_peer_swarm_trains_and_agrees(data_root, tmp_path):
    cfg = tiny(peers=3)
    result = launch.run(cfg, tmp_path, dashboard=False, progress=None)
    assert result["failed"] == {}
    assert result["finished_peers"] == 3
    acc = result["accuracy"]
    assert acc["mean"] > 0.75
    assert acc["max"] - acc["min"] < 0.02  # the final flush brings the models together
    for peer in result["peers"]:
        assert peer["updates_applied"] > 0
        assert peer["updates_rejected"] == 0
        assert peer["bytes_sent"] > 0
    assert result["comm"]["compression_ratio"] > 20
    logs = (tmp_path / "peer-0.jsonl").read_text().splitlines()
    events = [json.loads(line)["event"] for line in logs]
    for name in ("config_resolved", "neighbours_met", "epoch_end", "training_done", "peer_result"):
        assert name in events
    assert all(json.loads(line).get("peer_id") == 0 for line in logs)


def test_ring_relays_updates_to_non_neighbours(data_root, tmp_path):
    cfg = tiny(peers=4, **{"topology.kind": "ring"})
    result = launch.run(cfg, tmp_path, dashboard=False, progress=None)
    assert result["finished_peers"] == 4
    per_peer = {p["id"]: p for p in result["peers"]}
    originated = [json.loads((tmp_path / f"peer-{i}.result.json").read_text())["updates_originated"]
                  for i in range(4)]
    # peer 0 applies updates from all three others, though only 1 and 3 are its neighbours
    assert per_peer[0]["updates_applied"] == sum(originated) - originated[0]
    assert result["accuracy"]["max"] - result["accuracy"]["min"] < 0.02


def run_peer(tmp_path, cfg_file, peer_id, *overrides, timeout=120):
    return subprocess.Popen(
        [sys.executable, "-m", "gossip.peer", "--id", str(peer_id), "--config", str(cfg_file),
         "--run-dir", str(tmp_path), "--quiet", *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def write_cfg(tmp_path, cfg):
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(cfg)))
    return path


def test_different_models_stop_with_one_line_error(data_root, tmp_path):
    path = write_cfg(tmp_path, tiny(peers=2))
    a = run_peer(tmp_path, path, 0)
    b = run_peer(tmp_path, path, 1, "model.name=mnist_cnn")
    for proc in (a, b):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2
        lines = err.strip().splitlines()
        assert lines[-1].startswith("error: ") and "different model" in lines[-1]
        assert "Traceback" not in err


def test_unreachable_neighbour_is_a_one_line_error(data_root, tmp_path):
    path = write_cfg(tmp_path, tiny(peers=2, **{"timeouts.startup_s": 2}))
    proc = run_peer(tmp_path, path, 0)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1].startswith("error: peer 0: no neighbour answered")
    assert "Traceback" not in err


def test_peer_cli_rejects_bad_override(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gossip.peer", "--id", "0", "--config",
                           "configs/mnist_4peers.yaml", "--run-dir", str(tmp_path), "train.lr=fast"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: train.lr: expected a number, got 'fast'"


def _wait_for(predicate, timeout, what):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigterm_to_the_launcher_stops_every_peer(data_root, tmp_path):
    import signal

    import psutil

    path = write_cfg(tmp_path, tiny(peers=2, **{"train.epochs": 20}))  # still training when signalled
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "gossip.launch", str(path), "--run-dir", str(run_dir),
                                 "--no-dashboard"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        parent = psutil.Process(launcher.pid)
        _wait_for(lambda: len(parent.children()) == 2, 60, "two peer processes")
        peers = parent.children()

        def training(i):
            log = run_dir / f"peer-{i}.jsonl"
            return log.is_file() and '"neighbours_met"' in log.read_text()

        _wait_for(lambda: all(training(i) for i in range(2)), 120, "both peers to meet and train")
        launcher.send_signal(signal.SIGTERM)
        out, err = launcher.communicate(timeout=30)
    finally:
        if launcher.poll() is None:  # the test failed: do not leave the swarm behind
            for child in psutil.Process(launcher.pid).children(recursive=True):
                child.kill()
            launcher.kill()
    assert launcher.returncode == 128 + signal.SIGTERM, err
    _, alive = psutil.wait_procs(peers, timeout=15)
    assert not alive, f"peers outlived the launcher: {[p.pid for p in alive]}"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["interrupted"] is True and result["signal"] == "SIGTERM"
    assert result["finished_peers"] == 0 and result["failed"] == {}  # stopped peers did not finish
    # the summary line is printed after a stop too, and says what happened
    assert out.startswith("swarm of 2, 0 finished, interrupted by SIGTERM (continue with --resume): "), out
    events = [json.loads(line)["event"] for line in (run_dir / "launch.jsonl").read_text().splitlines()]
    assert "launch_interrupted" in events and events[-1] == "launch_end"
