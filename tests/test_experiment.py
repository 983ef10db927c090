"""gossip.experiment: settings, the plan of arms, and (slow) a real tiny experiment end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from fake_swarm import free_port_block

from gossip import analyze, config, experiment, report
from gossip.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def cfg_with(exp, *overrides):
    return config.replace(config.load(None, ["model.name=mnist_tiny", *overrides]), {"experiment": exp})


def test_defaults_come_from_the_config():
    s = experiment.settings_from(cfg_with({}, "seed=3"))
    assert (s.large_model, s.small_model, s.seeds, s.sweep_seeds) == ("mnist_tiny", "mnist_tiny", (3,), (3,))
    assert s.arms == ("large", "small", "swarm") and s.ensemble and not s.dashboard and s.target_accuracy is None


@pytest.mark.parametrize(("exp", "message"), [
    ({"seed": [0]}, "experiment.seed: unknown key"),
    ({"large_model": "gpt5"}, "experiment.large_model: unknown model 'gpt5'"),
    ({"seeds": []}, "experiment.seeds: expected a non-empty list of integers"),
    ({"seeds": [0, "1"]}, "experiment.seeds:"),
    ({"sweep_seeds": 1}, "experiment.sweep_seeds:"),
    ({"arms": ["swarm", "huge"]}, "experiment.arms:"),
    ({"target_accuracy": 98}, "experiment.target_accuracy: expected a number in (0, 1]"),
    ({"match_tolerance_pts": -1}, "experiment.match_tolerance_pts:"),
    ({"ensemble": "yes"}, "experiment.ensemble: expected true or false"),
    ({"sweeps": [1, 2]}, "experiment.sweeps: expected a mapping"),
    ({"sweeps": {"link.bandwidth": "10Gbps"}}, "experiment.sweeps.link.bandwidth: expected a non-empty list"),
    ({"sweeps": {"link.bandwidth": ["fast"]}}, "experiment.sweeps.link.bandwidth: 'fast': link.bandwidth:"),
    ({"sweeps": {"codec.densty": [0.1]}}, "experiment.sweeps.codec.densty: 0.1: codec.densty: unknown key"),
    ({"sweeps": {"partition": ["dirichlet:x"]}}, "experiment.sweeps.partition: 'dirichlet:x': expected iid"),
    ({"sweeps": {"partition": ["dirichlet:0"]}}, "experiment.sweeps.partition: 'dirichlet:0': data.alpha"),
])
def test_bad_settings_name_the_key(exp, message):
    with pytest.raises(ConfigError) as exc:
        experiment.settings_from(cfg_with(exp))
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_sweep_overrides():
    assert experiment.sweep_overrides("partition", "iid") == {"data": {"partition": "iid"}}
    assert experiment.sweep_overrides("partition", "dirichlet:0.1") == {"data": {"partition": "dirichlet", "alpha": 0.1}}
    assert experiment.sweep_overrides("partition", "shards:3") == {"data": {"partition": "shards", "shards_per_peer": 3}}
    assert experiment.sweep_overrides("link.bandwidth", "1Mbps") == {"link": {"bandwidth": "1Mbps"}}
    assert experiment.sweep_overrides("peers", 8) == {"peers": 8}


def test_plan_arms_seeds_and_shared_runs():
    cfg = cfg_with({"large_model": "mnist_cnn", "seeds": [0, 1], "sweeps": {
        "link.bandwidth": ["10Gbps", "100Mbps"], "partition": ["dirichlet:0.5"], "peers": [2]}}, "peers=4")
    arms = experiment.plan(cfg, experiment.settings_from(cfg))
    names = [a["name"] for a in arms]
    assert names[:6] == ["large-seed0", "small-seed0", "swarm-seed0", "large-seed1", "small-seed1", "swarm-seed1"]
    by_name = {a["name"]: a for a in arms}
    assert by_name["large-seed1"]["config"].model.name == "mnist_cnn" and by_name["large-seed1"]["config"].seed == 1
    swarm = by_name["swarm-seed0"]["config"]
    assert swarm.model.name == "mnist_tiny" and swarm.checkpoint.save_final and not swarm.dashboard.enabled
    # the 10Gbps sweep point is the swarm arm itself: it shares its folder instead of running twice
    assert by_name["sweep-link.bandwidth-10Gbps-seed0"]["dir"] == "arms/swarm-seed0"
    slow = by_name["sweep-link.bandwidth-100Mbps-seed0"]
    assert slow["dir"] == "arms/sweep-link.bandwidth-100Mbps-seed0" and slow["config"].link.bandwidth == "100Mbps"
    assert slow["sweep"] == {"key": "link.bandwidth", "value": "100Mbps"} and slow["role"] == "sweep"
    noniid = by_name["sweep-partition-dirichlet_0.5-seed0"]["config"]
    assert (noniid.data.partition, noniid.data.alpha, noniid.peers) == ("dirichlet", 0.5, 4)
    assert by_name["sweep-peers-2-seed0"]["config"].peers == 2
    assert not any(a["seed"] == 1 and a["role"] == "sweep" for a in arms)  # sweeps: the first seed only
    assert len({a["dir"] for a in arms}) == len(arms) - 1


def test_small_equal_to_large_runs_once():
    cfg = cfg_with({"arms": ["large", "small"]})  # both default to model.name
    dirs = [a["dir"] for a in experiment.plan(cfg, experiment.settings_from(cfg))]
    assert dirs == ["arms/large-seed0", "arms/large-seed0"]


def test_load_merges_experiment_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("experiment: {large_model: mnist_cnn, seeds: [0, 1], sweeps: {peers: [2]}}\n")
    cfg = experiment.load(path, ["experiment.seeds=[5]", "train.epochs=1", "experiment.sweeps={}"])
    assert cfg.experiment == {"large_model": "mnist_cnn", "seeds": [5], "sweeps": {}} and cfg.train.epochs == 1


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("experiment: {seeds: zero}\n")
    proc = subprocess.run([sys.executable, "-m", "gossip.experiment", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: experiment.seeds: expected a non-empty list of integers, got 'zero'"]


def test_shipped_configs_are_valid():
    for name in ("compare_mnist", "compare_cifar10_cpu", "compare_cifar10_gpu"):
        cfg = experiment.load(ROOT / "configs" / f"{name}.yaml")
        s = experiment.settings_from(cfg)
        assert s.large_model != s.small_model and s.target_accuracy is not None, name
        assert experiment.plan(cfg, s)


@pytest.mark.slow
def test_tiny_experiment_end_to_end_and_resume(tmp_path, capsys, data_root):
    base, telemetry = free_port_block(4), free_port_block(4)
    cfg = experiment.load(None, [
        "peers=2", "model.name=mnist_tiny", "data.limit_train=1000", "data.limit_test=300", "train.epochs=2",
        "device=cpu", f"topology.base_port={base}", f"dashboard.telemetry_port={telemetry}",
        "experiment.large_model=mnist_cnn", "experiment.small_model=mnist_tiny", "experiment.target_accuracy=0.5",
        "experiment.sweeps={link.bandwidth: [10Gbps]}",  # the swarm's own setting: no extra run
    ])
    out = tmp_path / "exp"
    result = experiment.run(cfg, out, progress=sys.stderr)
    rows = {r["arm"]: r for r in result["rows"]}
    assert set(rows) == {"large", "small", "swarm", "swarm ensemble", "swarm consensus",
                         "sweep link.bandwidth=10Gbps"}
    swarm = json.loads((out / "arms/swarm-seed0/result.json").read_text())
    assert rows["swarm"]["accuracy_mean"] == pytest.approx(swarm["accuracy"]["mean"])  # logs == launcher's result
    assert rows["swarm"]["mb_per_epoch"] == pytest.approx(swarm["comm"]["mb_per_epoch"])
    large = json.loads((out / "arms/large-seed0/result.json").read_text())
    assert rows["large"]["accuracy_mean"] == pytest.approx(large["test_accuracy"]) and rows["large"]["params"] > 10**6
    assert rows["swarm"]["n"] == 2 and rows["swarm"]["mb_per_epoch"] > 0 and rows["swarm"]["compression_ratio"] > 1
    ens = json.loads((out / "arms/swarm-seed0/ensemble.json").read_text())
    assert rows["swarm ensemble"]["accuracy_mean"] == pytest.approx(ens["ensemble"]["accuracy"])
    assert rows["swarm"]["accuracy_mean"] > 0.5 and rows["swarm consensus"]["accuracy_mean"] > 0.5
    assert result["answer"].split(":")[0] in ("Yes", "No", "Partly")
    md = (out / "report.md").read_text()
    assert result["answer"] in md and report.markdown_table(result["rows"], 0.5) in md
    assert {"accuracy_vs_epoch.png", "accuracy_vs_mb.png", "bandwidth.png", "label_histograms.png"} <= {
        p.name for p in out.iterdir()}
    assert len(analyze.load_swarm(out / "arms/swarm-seed0")["bandwidth"]) >= 2
    for log in ["experiment.jsonl", "arms/swarm-seed0/peer-0.jsonl", "arms/swarm-seed0/launch.jsonl",
                "arms/large-seed0/baseline.jsonl"]:
        df = pd.read_json(out / log, lines=True)
        assert len(df) > 0 and "event" in df.columns and "ts" in df.columns
    peer = pd.read_json(out / "arms/swarm-seed0/peer-1.jsonl", lines=True)
    assert peer.loc[peer.event == "epoch_end", "epoch"].tolist() == [0, 1]

    # the same table from the logs alone
    assert analyze.main([str(out)]) == 0
    assert report.markdown_table(result["rows"], 0.5) in capsys.readouterr().out

    # resume: everything is done, nothing runs again
    mtime = (out / "arms/swarm-seed0/peer-0.jsonl").stat().st_mtime_ns
    again = experiment.run(cfg, out, progress=sys.stdout)
    assert capsys.readouterr().out.count("already done, skipped") == 3
    assert (out / "arms/swarm-seed0/peer-0.jsonl").stat().st_mtime_ns == mtime
    assert again["rows"] == result["rows"]
