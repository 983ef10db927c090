"""gossip.experiments.analyze on hand-written log fixtures (real runs are analysed in test_experiment.py)."""

import json
import math

import pandas as pd
import pytest

from gossip import analyze as analyze_cli
from gossip.errors import DataError
from gossip.experiments import analyze


def write_jsonl(path, events):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")


CFG = {"peers": 2, "seed": 0, "model": {"name": "mnist_tiny"}, "train": {"epochs": 2},
       "data": {"name": "mnist", "partition": "dirichlet", "alpha": 0.5}, "topology": {"kind": "full"},
       "link": {"bandwidth": "100Mbps"}, "codec": {"density": 0.01}}


def fake_swarm(run_dir, accs=(0.97, 0.95), epoch0=(0.90, 0.80), t0=1000.0):
    """Two peers, two epochs: epoch 0 scored on 2000 samples, the last by peer_evaluated."""
    for p, (acc, first) in enumerate(zip(accs, epoch0, strict=True)):
        write_jsonl(run_dir / f"peer-{p}.jsonl", [
            {"event": "config_resolved", "config": CFG, "peer_id": p, "ts": t0},
            {"event": "shard", "samples": 100, "label_histogram": [60 - 20 * p, 40 + 20 * p], "ts": t0 + 1},
            {"event": "peer_built", "model": "mnist_tiny", "params": 47000, "ts": t0 + 2},
            {"event": "epoch_end", "epoch": 0, "train_loss": 0.5, "seconds": 10.0 + p, "test_accuracy": first,
             "test_samples": 2000, "ts": t0 + 12},
            {"event": "epoch_end", "epoch": 1, "train_loss": 0.2, "seconds": 10.0, "ts": t0 + 22},
            {"event": "peer_down", "peer": 1 - p, "ts": t0 + 23} if p == 0 else {"event": "peer_up", "ts": t0 + 23},
            {"event": "peer_evaluated", "test_accuracy": acc, "test_loss": 0.1, "ts": t0 + 24},
            {"event": "peer_result", "id": p, "test_accuracy": acc, "bytes_sent": 3_000_000,
             "dense_equivalent_bytes": 300_000_000, "bytes_sent_by_epoch": {"0": 1_000_000, "1": 2_000_000},
             "wall_s": 25.0, "updates_rejected": 1, "ts": t0 + 25},
        ])
    write_jsonl(run_dir / "launch.jsonl", [{"event": "launch_start", "peers": 2, "ts": t0 - 2},
                                           {"event": "launch_end", "wall_s": 30.0, "ts": t0 + 28}])


def fake_baseline(run_dir, acc=0.98, model="mnist_cnn", seed=0):
    write_jsonl(run_dir / "baseline.jsonl", [
        {"event": "config_resolved", "config": {**CFG, "seed": seed, "model": {"name": model}}},
        {"event": "baseline_start", "model": model, "params": 1_200_000, "epochs": 2},
        {"event": "epoch_end", "epoch": 1, "test_accuracy": acc - 0.02, "train_s": 30.0, "epoch_s": 31.0},
        {"event": "epoch_end", "epoch": 2, "test_accuracy": acc, "train_s": 30.0, "epoch_s": 31.0},
        {"event": "baseline_done", "test_accuracy": acc, "wall_s": 70.0},
    ])


def fake_experiment(root):
    fake_swarm(root / "arms/swarm-seed0")
    fake_swarm(root / "arms/swarm-seed1", accs=(0.99, 0.97))
    fake_baseline(root / "arms/large-seed0", 0.98)
    fake_baseline(root / "arms/large-seed1", 0.99, seed=1)
    arms = [{"name": f"{g}-seed{s}", "group": g, "role": g, "seed": s, "dir": f"arms/{g}-seed{s}",
             "kind": "swarm" if g == "swarm" else "centralized", "sweep": None}
            for s in (0, 1) for g in ("large", "swarm")]
    arms.append({"name": "sweep-x-seed0", "group": "sweep link.bandwidth=100Mbps", "role": "sweep", "seed": 0,
                 "dir": "arms/swarm-seed0", "kind": "swarm", "sweep": {"key": "link.bandwidth", "value": "100Mbps"}})
    arms.append({"name": "small-seed0", "group": "small", "role": "small", "seed": 0, "dir": "arms/small-seed0",
                 "kind": "centralized", "sweep": None})  # planned, never run
    extra = {"ensemble": {"accuracy": 0.975, "loss": 0.1}, "consensus": {"accuracy": 0.965, "loss": 0.1},
             "agreement": 0.99}
    write_jsonl(root / "experiment.jsonl", [
        {"event": "experiment_plan", "settings": {"target_accuracy": 0.85}, "arms": arms},
        {"event": "swarm_ensemble", "arm": "swarm-seed0", "dir": "arms/swarm-seed0", **extra},
        {"event": "swarm_ensemble", "arm": "swarm-seed1", "dir": "arms/swarm-seed1",
         **extra, "ensemble": {"accuracy": 0.985, "loss": 0.1}},
    ])
    (root / "experiment.jsonl").open("a").write('{"event": "arm_done", "ar')  # a crash mid-line


def test_swarm_run_figures(tmp_path):
    fake_swarm(tmp_path)
    arm = analyze.load_swarm(tmp_path)
    assert arm["final_accuracy"] == [0.97, 0.95] and arm["complete"]
    assert arm["params"] == 47000 and arm["partition"] == "dirichlet(0.5)" and arm["send_rate"] == [
        {"t": 14.0, "bps": pytest.approx(8 * 2_000_000 / 14.0)}, {"t": 24.0, "bps": pytest.approx(8 * 4_000_000 / 10.0)}]
    assert arm["mb_per_epoch"] == pytest.approx(6.0 / 2)  # 6 MB over 2 epochs, all peers
    assert arm["compression_ratio"] == pytest.approx(100.0)
    assert arm["wall_s"] == 30.0 and arm["peers_down"] == [1] and arm["rejected"] == 2
    first, last = arm["curve"]
    assert first["epoch"] == 1 and first["accuracy"] == pytest.approx(0.85) and first["accuracy_std"] == pytest.approx(0.05)
    assert first["train_s"] == pytest.approx(10.5) and first["mb_cum"] == pytest.approx(2.0)
    assert last["accuracy"] == pytest.approx(0.96)  # the last epoch comes from peer_evaluated
    assert last["train_s"] == pytest.approx(20.5) and last["mb_cum"] == pytest.approx(6.0)
    assert arm["label_histograms"] == [[60, 40], [40, 60]]


def test_a_reused_folder_counts_only_its_last_run(tmp_path):
    fake_swarm(tmp_path, accs=(0.10, 0.10))
    first = {p: (tmp_path / f"peer-{p}.jsonl").read_text() for p in (0, 1)}
    fake_swarm(tmp_path)  # the launcher appends: both runs end up in the same files
    for p in (0, 1):
        path = tmp_path / f"peer-{p}.jsonl"
        path.write_text(first[p] + path.read_text())
    arm = analyze.load_swarm(tmp_path)
    assert arm["final_accuracy"] == [0.97, 0.95] and [c["epoch"] for c in arm["curve"]] == [1, 2]
    assert arm["curve"][1]["train_s"] == pytest.approx(20.5)


def test_telemetry_gives_a_finer_bandwidth_series(tmp_path):
    fake_swarm(tmp_path)
    snaps = [{"peer_id": p, "ts": 1000.0 + t, "bytes_sent": int(t * 125_000)} for t in range(0, 6) for p in (0, 1)]
    write_jsonl(tmp_path / "telemetry.jsonl", snaps)
    series = analyze.load_swarm(tmp_path)["send_rate"]
    assert len(series) >= 4
    assert all(p["bps"] == pytest.approx(2 * 1_000_000) for p in series)  # two peers at 1 Mbit/s each


def test_experiment_folder_rows(tmp_path):
    fake_experiment(tmp_path)
    run = analyze.load(tmp_path)
    assert sorted(a["name"] for a in run["arms"]) == ["large-seed0", "large-seed1", "swarm-seed0", "swarm-seed1",
                                                       "sweep-x-seed0"]
    rows = {r["arm"]: r for r in analyze.summarize(run)["rows"]}
    swarm = rows["swarm"]
    pooled = [0.97, 0.95, 0.99, 0.97]
    assert swarm["accuracy_mean"] == pytest.approx(sum(pooled) / 4) and swarm["n"] == 4
    assert swarm["accuracy_std"] == pytest.approx(math.sqrt(sum((a - 0.97) ** 2 for a in pooled) / 4))
    assert swarm["accuracy_seed_std"] == pytest.approx(0.01)  # seed means 0.96 and 0.98
    assert swarm["time_to_target_s"] == pytest.approx(10.5) and swarm["target_reached"] == "2/2"  # target 0.85
    assert rows["large"]["accuracy_mean"] == pytest.approx(0.985) and rows["large"]["mb_per_epoch"] == 0.0
    assert rows["large"]["time_to_target_s"] == pytest.approx(30.0)
    assert swarm["ensemble_mean"] == pytest.approx(0.98) and swarm["ensemble_std"] == pytest.approx(0.005)
    assert swarm["consensus_mean"] == pytest.approx(0.965) and swarm["agreement_mean"] == pytest.approx(0.99)
    assert rows["large"]["ensemble_mean"] is None
    assert rows["sweep link.bandwidth=100Mbps"]["accuracy_mean"] == pytest.approx(0.96)
    assert "small" not in rows  # planned but never run
    strict = analyze.summarize(run, target=0.99)["rows"]
    assert strict[0]["arm"] == "large" and strict[0]["target_reached"] == "1/2"


def test_compare_two_runs(tmp_path):
    fake_swarm(tmp_path / "dense")
    fake_swarm(tmp_path / "sparse", accs=(0.98, 0.98))
    fake_baseline(tmp_path / "central", 0.99)
    sa, sb, sc = (analyze.summarize(analyze.load(tmp_path / d)) for d in ("dense", "sparse", "central"))
    (diff,) = analyze.compare(sa, sb)  # single runs are named by their kind: both rows are "swarm"
    assert diff["arm"] == "swarm" and diff["delta_pts"] == pytest.approx(2.0)
    assert diff["mb_per_epoch_a"] == diff["mb_per_epoch_b"] == pytest.approx(3.0)
    (diff,) = analyze.compare(sa, sc)  # one row each: paired even though the kinds differ
    assert diff["arm"] == "swarm / centralized" and diff["delta_pts"] == pytest.approx(3.0)
    assert diff["mb_per_epoch_b"] == 0.0


def test_cli_table_json_and_errors(tmp_path, capsys):
    fake_experiment(tmp_path / "e")
    fake_baseline(tmp_path / "b")
    assert analyze_cli.main([str(tmp_path / "e"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert ("| swarm | mnist_tiny | 47k | — | — | 2 | 97.00 ± 1.41 | 2 peers × 2 seeds | 1.00 | 98.00 | 96.50 | 3.00 "
            "| 30.0 | 10.5 (2/2) | 100x |") in out
    assert ("| large | mnist_cnn | 1.20M | — | — | 1 | 98.50 ± 0.50 | 2 seeds | 0.50 | — | — | 0.00 | 70.0 | 30.0 (2/2) "
            "| — |") in out
    assert out.count("## ") == 3  # two tables and the comparison
    assert "| large / centralized |" not in out  # an experiment has several rows: only same-named ones pair
    assert analyze_cli.main([str(tmp_path / "e"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["runs"][0]["rows"][0]["arm"] == "large" and data["compare"] is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        analyze_cli.main([str(tmp_path / "empty")])
    assert exc.value.code == 2 and "error: " in capsys.readouterr().err
    with pytest.raises(DataError):
        analyze.load(tmp_path / "missing")


def test_fixture_logs_load_with_pandas(tmp_path):
    fake_swarm(tmp_path)
    df = pd.read_json(tmp_path / "peer-0.jsonl", lines=True)
    assert df.loc[df.event == "epoch_end", "seconds"].tolist() == [10.0, 10.0]
