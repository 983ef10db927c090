"""gossip.experiments.experiment: resuming, the CLI, the shipped configs and (slow) a real tiny experiment end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from ports import free_port_block

from gossip import analyze as analyze_cli
from gossip import config
from gossip.experiments import analyze, experiment, plan, report

ROOT = Path(__file__).resolve().parents[1]


def cfg_with(exp, *overrides):
    return config.replace(config.load(None, ["model.name=mnist_tiny", *overrides]), {"experiment": exp})


def test_resume_needs_a_finished_run_of_the_same_config(tmp_path):
    cfg = cfg_with({"arms": ["large", "swarm"]}, "peers=2")
    large, swarm = plan.plan(cfg, plan.settings_from(cfg))
    for arm in (large, swarm):
        assert not experiment.arm_done(arm, tmp_path, True)
        (tmp_path / arm["dir"]).mkdir(parents=True)
    (tmp_path / large["dir"] / "result.json").write_text(json.dumps(
        {"kind": "centralized", "config_hash": config.config_hash(large["config"])}))
    assert experiment.arm_done(large, tmp_path, True)
    other = dict(large, config=config.replace(large["config"], ["train.epochs=3"]))
    assert not experiment.arm_done(other, tmp_path, True)  # same folder, changed config: run again
    good = {"config_hash": config.config_hash(swarm["config"]), "finished_peers": 2, "interrupted": False,
            "failed": {}}
    (tmp_path / swarm["dir"] / "result.json").write_text(json.dumps(good))
    assert experiment.arm_done(swarm, tmp_path, False)
    assert not experiment.arm_done(swarm, tmp_path, True)  # the ensemble needs the peers' final models
    for p in (0, 1):
        (tmp_path / swarm["dir"] / f"peer-{p}.final.pt").write_bytes(b"x")
    assert experiment.arm_done(swarm, tmp_path, True)
    for bad in ({"finished_peers": 1}, {"interrupted": True}, {"failed": {"peer-1": 2}}):
        (tmp_path / swarm["dir"] / "result.json").write_text(json.dumps({**good, **bad}))
        assert not experiment.arm_done(swarm, tmp_path, True), bad


def test_fresh_deletes_only_what_an_experiment_writes(tmp_path):
    cfg = cfg_with({"arms": ["small"]})
    (tmp_path / "arms/small-seed0").mkdir(parents=True)
    (tmp_path / "arms/small-seed0/baseline.jsonl").write_text("")
    (tmp_path / "notes.txt").write_text("mine")
    result = experiment.run(cfg, tmp_path, progress=None, fresh=True, report_only=True)
    assert not (tmp_path / "arms").exists() and (tmp_path / "notes.txt").read_text() == "mine"
    assert result["rows"] == [] and result["answer"].startswith("No answer yet")
    assert "No answer yet" in (tmp_path / "report.md").read_text()


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
        s = plan.settings_from(cfg)
        assert s.large_model != s.small_model and s.target_accuracy is not None, name
        assert plan.plan(cfg, s)


def test_every_compare_config_ships_one_swarm_recipe():
    """Issue 11: no per-data-set knob. The swarm's communication and codec settings are the same in
    every compare config; only the data set, model and training schedule differ."""
    cfgs = {n: experiment.load(ROOT / "configs" / f"{n}.yaml")
            for n in ("compare_mnist", "compare_cifar10_cpu", "compare_cifar10_gpu")}
    recipes = {n: (c.communication, c.codec) for n, c in cfgs.items()}
    assert len(set(recipes.values())) == 1, recipes
    comm = cfgs["compare_mnist"].communication
    assert comm.global_batch and comm.lr_rule == "none"  # the swarm solves the centralized problem


@pytest.mark.slow
def test_tiny_experiment_end_to_end_and_resume(tmp_path, capsys, data_root):
    base = free_port_block(8)  # one block: two separate blocks may overlap
    telemetry = base + 4
    cfg = experiment.load(None, [
        "peers=2", "model.name=mnist_tiny", "data.limit_train=1000", "data.limit_test=300", "train.epochs=2",
        "device=cpu", f"topology.base_port={base}", f"dashboard.telemetry_port={telemetry}",
        "experiment.large_model=mnist_cnn", "experiment.small_model=mnist_tiny", "experiment.target_accuracy=0.5",
        "experiment.sweeps={link.bandwidth: [10Gbps]}",  # the swarm's own setting: no extra run
    ])
    out = tmp_path / "exp"
    result = experiment.run(cfg, out, progress=sys.stderr)
    rows = {r["arm"]: r for r in result["rows"]}
    assert [r["arm"] for r in result["rows"]] == ["large", "small", "swarm"]  # the 10Gbps sweep point is the swarm
    swarm = json.loads((out / "arms/swarm-seed0/result.json").read_text())
    assert rows["swarm"]["accuracy_mean"] == pytest.approx(swarm["accuracy"]["mean"])  # logs == launcher's result
    assert rows["swarm"]["mb_per_epoch"] == pytest.approx(swarm["comm"]["mb_per_epoch"])
    large = json.loads((out / "arms/large-seed0/result.json").read_text())
    assert rows["large"]["accuracy_mean"] == pytest.approx(large["test_accuracy"]) and rows["large"]["params"] > 10**6
    assert rows["swarm"]["n"] == 2 and rows["swarm"]["mb_per_epoch"] > 0 and rows["swarm"]["compression_ratio"] > 1
    assert rows["large"]["macs"] == 11_769_792 and rows["swarm"]["macs"] == 1_083_008  # one model answers
    # forward + backward ~ 3 passes per sample seen: 1000 samples x 2 epochs, the swarm's over its 2 shards
    assert rows["swarm"]["train_macs"] == 3 * 1_083_008 * 1000 * 2 == rows["small"]["train_macs"]
    ens = json.loads((out / "arms/swarm-seed0/ensemble.json").read_text())
    assert rows["swarm"]["ensemble_mean"] == pytest.approx(ens["ensemble"]["accuracy"])
    assert rows["swarm"]["consensus_mean"] == pytest.approx(ens["consensus"]["accuracy"])
    assert rows["swarm"]["accuracy_mean"] > 0.5 and rows["swarm"]["consensus_mean"] > 0.5
    assert result["answer"].split(":")[0] in ("Yes", "No", "Partly")
    md = (out / "report.md").read_text()
    assert result["answer"] in md and report.markdown_table(result["rows"], 0.5) in md
    assert {"accuracy_vs_epoch.png", "accuracy_vs_mb.png", "bandwidth.png", "label_histograms.png"} <= {
        p.name for p in out.iterdir()}
    snaps = pd.read_json(out / "arms/swarm-seed0/telemetry.jsonl", lines=True)  # recorded while it ran
    assert set(snaps.peer_id) == {0, 1} and snaps.bytes_sent.max() > 0
    rate = analyze.load_swarm(out / "arms/swarm-seed0")["send_rate"]
    assert rate and max(p["bps"] for p in rate) > 0
    for log in ["experiment.jsonl", "arms/swarm-seed0/peer-0.jsonl", "arms/swarm-seed0/launch.jsonl",
                "arms/large-seed0/baseline.jsonl"]:
        df = pd.read_json(out / log, lines=True)
        assert len(df) > 0 and "event" in df.columns and "ts" in df.columns
    peer = pd.read_json(out / "arms/swarm-seed0/peer-1.jsonl", lines=True)
    assert peer.loc[peer.event == "epoch_end", "epoch"].tolist() == [0, 1]

    # the same table from the logs alone
    assert analyze_cli.main([str(out)]) == 0
    assert report.markdown_table(result["rows"], 0.5) in capsys.readouterr().out

    # resume: everything is done, nothing runs again
    mtime = (out / "arms/swarm-seed0/peer-0.jsonl").stat().st_mtime_ns
    again = experiment.run(cfg, out, progress=sys.stdout)
    assert capsys.readouterr().out.count("already done, skipped") == 3
    assert (out / "arms/swarm-seed0/peer-0.jsonl").stat().st_mtime_ns == mtime
    assert again["rows"] == result["rows"]
