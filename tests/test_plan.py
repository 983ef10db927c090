"""gossip.experiments.plan: the experiment's settings (one-line errors naming the key) and its arms."""

import pytest

from gossip import config
from gossip.errors import ConfigError
from gossip.experiments import plan


def cfg_with(exp, *overrides):
    return config.replace(config.load(None, ["model.name=mnist_tiny", *overrides]), {"experiment": exp})


def test_defaults_come_from_the_config():
    s = plan.settings_from(cfg_with({}, "seed=3"))
    assert (s.large_model, s.small_model, s.seeds, s.sweep_seeds) == ("mnist_tiny", "mnist_tiny", (3,), (3,))
    assert s.arms == ("large", "small", "swarm") and s.ensemble and not s.dashboard and s.target_accuracy is None


@pytest.mark.parametrize(("exp", "message"), [
    ({"seed": [0]}, "experiment.seed: unknown key"),
    ({"large_model": "gpt5"}, "experiment.large_model: unknown model 'gpt5'"),
    ({"seeds": []}, "experiment.seeds: expected a non-empty list of integers"),
    ({"seeds": [0, "1"]}, "experiment.seeds[1]: expected an integer, got '1'"),
    ({"sweep_seeds": 1}, "experiment.sweep_seeds: expected a non-empty list of integers, got 1"),
    ({"arms": ["swarm", "huge"]}, "experiment.arms[1]: expected one of 'large', 'small', 'swarm', got 'huge'"),
    ({"arms": []}, "experiment.arms: expected a non-empty list, got []"),
    ({"target_accuracy": 98}, "experiment.target_accuracy: must be <= 1.0, got 98.0"),
    ({"target_accuracy": 0}, "experiment.target_accuracy: must be > 0.0, got 0.0"),
    ({"target_accuracy": float("nan")}, "experiment.target_accuracy: expected a finite number, got nan"),
    ({"match_tolerance_pts": -1}, "experiment.match_tolerance_pts: must be >= 0.0, got -1.0"),
    ({"ensemble": "yes"}, "experiment.ensemble: expected true or false"),
    ({"sweeps": [1, 2]}, "experiment.sweeps: expected a mapping"),
    ({"sweeps": {"link.bandwidth": "10Gbps"}}, "experiment.sweeps.link.bandwidth: expected a list of values"),
    ({"sweeps": {"link.bandwidth": []}}, "experiment.sweeps.link.bandwidth: expected a non-empty list of values"),
    ({"sweeps": {"link.bandwidth": ["fast"]}}, "experiment.sweeps.link.bandwidth: 'fast': link.bandwidth:"),
    ({"sweeps": {"codec.densty": [0.1]}}, "experiment.sweeps.codec.densty: 0.1: codec.densty: unknown key"),
    ({"sweeps": {"partition": ["dirichlet:x"]}}, "experiment.sweeps.partition: 'dirichlet:x': expected iid"),
    ({"sweeps": {"partition": ["dirichlet:0"]}}, "experiment.sweeps.partition: 'dirichlet:0': data.alpha"),
])
def test_bad_settings_name_the_key(exp, message):
    with pytest.raises(ConfigError) as exc:  # types and ranges fail in the loader, the rest in settings_from
        plan.settings_from(cfg_with(exp))
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_sweep_overrides():
    assert plan.sweep_overrides("partition", "iid") == {"data": {"partition": "iid"}}
    assert plan.sweep_overrides("partition", "dirichlet:0.1") == {"data": {"partition": "dirichlet", "alpha": 0.1}}
    assert plan.sweep_overrides("partition", "shards:3") == {"data": {"partition": "shards", "shards_per_peer": 3}}
    assert plan.sweep_overrides("link.bandwidth", "1Mbps") == {"link": {"bandwidth": "1Mbps"}}
    assert plan.sweep_overrides("peers", 8) == {"peers": 8}


def test_plan_arms_seeds_and_shared_runs():
    cfg = cfg_with({"large_model": "mnist_cnn", "seeds": [0, 1], "sweeps": {
        "link.bandwidth": ["10Gbps", "100Mbps"], "partition": ["dirichlet:0.5"], "peers": [2]}}, "peers=4")
    arms = plan.plan(cfg, plan.settings_from(cfg))
    names = [a["name"] for a in arms]
    assert names[:6] == ["large-seed0", "small-seed0", "swarm-seed0", "large-seed1", "small-seed1", "swarm-seed1"]
    by_name = {a["name"]: a for a in arms}
    assert by_name["large-seed1"]["config"].model.name == "mnist_cnn" and by_name["large-seed1"]["config"].seed == 1
    swarm = by_name["swarm-seed0"]["config"]
    assert swarm.model.name == "mnist_tiny" and swarm.checkpoint.save_final and not swarm.dashboard.enabled
    # the 10Gbps sweep point is the swarm arm itself: not planned again, the swarm row shows it
    assert "sweep-link.bandwidth-10Gbps-seed0" not in by_name
    slow = by_name["sweep-link.bandwidth-100Mbps-seed0"]
    assert slow["dir"] == "arms/sweep-link.bandwidth-100Mbps-seed0" and slow["config"].link.bandwidth == "100Mbps"
    assert slow["sweep"] == {"key": "link.bandwidth", "value": "100Mbps"} and slow["role"] == "sweep"
    noniid = by_name["sweep-partition-dirichlet_0.5-seed0"]["config"]
    assert (noniid.data.partition, noniid.data.alpha, noniid.peers) == ("dirichlet", 0.5, 4)
    assert by_name["sweep-peers-2-seed0"]["config"].peers == 2
    assert not any(a["seed"] == 1 and a["role"] == "sweep" for a in arms)  # sweeps: the first seed only
    assert len({a["dir"] for a in arms}) == len(arms) == 9


def test_small_equal_to_large_runs_once():
    cfg = cfg_with({"arms": ["large", "small"]})  # both default to model.name
    dirs = [a["dir"] for a in plan.plan(cfg, plan.settings_from(cfg))]
    assert dirs == ["arms/large-seed0", "arms/large-seed0"]


def test_load_merges_experiment_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("experiment: {large_model: mnist_cnn, seeds: [0, 1], sweeps: {peers: [2]}}\n")
    cfg = plan.load(path, ["experiment.seeds=[5]", "train.epochs=1", "experiment.sweeps={}"])
    assert cfg.experiment == config.ExperimentConfig(large_model="mnist_cnn", seeds=(5,)) and cfg.train.epochs == 1
    # the same merge in gossip.config.load itself: a non-empty sweeps mapping adds to the file's
    more = config.load(path, ["experiment.sweeps={codec.density: [0.1]}", "experiment.ensemble=false"])
    assert more.experiment.sweeps == {"peers": (2,), "codec.density": (0.1,)} and more.experiment.seeds == (0, 1)
    assert not more.experiment.ensemble


def test_more_seeds_or_sweeps_keep_the_arms_already_run():
    """Arms are resumed by their config hash: extending the experiment must not change it."""
    def hashes(exp):
        c = cfg_with(exp)
        return {a["name"]: config.config_hash(a["config"]) for a in plan.plan(c, plan.settings_from(c))}

    before = hashes({"seeds": [0]})
    after = hashes({"seeds": [0, 1], "sweeps": {"link.bandwidth": ["10Gbps", "100Mbps"]}})
    assert set(before) < set(after)
    assert all(after[name] == h for name, h in before.items())


def test_experiment_is_a_typed_section_of_the_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("experiment: {seeds: [1, 2], target_accuracy: 0.9, sweeps: {peers: [2, 8]}}\n")
    exp = config.load(path).experiment
    assert isinstance(exp, config.ExperimentConfig) and exp.seeds == (1, 2) and exp.target_accuracy == 0.9
    assert exp.sweeps == {"peers": (2, 8)}
    with pytest.raises(ConfigError, match=r"^experiment\.seedz: unknown key \(valid: "):
        config.load(path, ["experiment.seedz=[0]"])
    with pytest.raises(ConfigError, match=r"^experiment\.match_tolerance_pts: expected a finite number, got inf$"):
        config.load(path, ["experiment.match_tolerance_pts=.inf"])
    # only what differs from the defaults is written out: a config without an experiment hashes as before
    assert config.to_dict(config.load(None))["experiment"] == {}
    assert config.to_dict(config.load(path))["experiment"] == {"seeds": [1, 2], "target_accuracy": 0.9,
                                                               "sweeps": {"peers": [2, 8]}}
    assert config.from_dict(config.to_dict(config.load(path))) == config.load(path)
