"""Config loading: every shipped config loads; bad input is a one-line ConfigError naming the key."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from gossip import config
from gossip.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_there_are_configs() -> None:
    names = {p.name for p in CONFIGS}
    assert {"mnist_baseline.yaml", "cifar10_baseline.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = config.load(path)
    assert isinstance(cfg, config.Config)
    assert len(config.config_hash(cfg)) == 12
    # Round trip: the resolved dict loads back to the same config.
    assert config.from_dict(config.to_dict(cfg)) == cfg


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def _one_line(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_unknown_key_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        config.load(_write(tmp_path, "train:\n  lrr: 0.1\n"))
    assert _one_line(exc).startswith("train.lrr: unknown key")
    with pytest.raises(ConfigError, match=r"^bogus: unknown key"):
        config.load(None, ["bogus=1"])


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        config.load(_write(tmp_path, "train:\n  epochs: three\n"))
    assert _one_line(exc).startswith("train.epochs: expected an integer")
    with pytest.raises(ConfigError, match=r"^data.augment: expected true or false"):
        config.load(None, ["data.augment=5"])
    with pytest.raises(ConfigError, match=r"^data.name: expected one of"):
        config.load(None, ["data.name=imagenet"])


def test_bad_range_names_the_key() -> None:
    with pytest.raises(ConfigError) as exc:
        config.load(None, ["train.lr=0"])
    assert _one_line(exc) == "train.lr: must be > 0.0, got 0.0"
    with pytest.raises(ConfigError, match=r"^train.momentum: must be <= 1.0"):
        config.load(None, ["train.momentum=1.5"])
    with pytest.raises(ConfigError, match=r"^data.limit_train: must be >= 0"):
        config.load(None, ["data.limit_train=-1"])


def test_overrides_are_typed_and_win_over_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "train:\n  lr: 0.5\n  epochs: 3\ndata:\n  name: cifar10\n")
    cfg = config.load(path, ["train.lr=0.1", "train.epochs=7", "data.augment=false", "data.root=/x"])
    assert cfg.train.lr == 0.1 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 7 and isinstance(cfg.train.epochs, int)
    assert cfg.data.augment is False
    assert cfg.data.root == "/x"
    assert cfg.data.name == "cifar10"  # untouched keys keep the file's value
    assert config.config_hash(cfg) != config.config_hash(config.load(path))


def test_bad_override_syntax_names_the_override() -> None:
    with pytest.raises(ConfigError, match=r"^train\.lr: overrides look like key.sub=value"):
        config.load(None, ["train.lr"])
    with pytest.raises(ConfigError, match=r"^train\.\.lr: not a valid key"):
        config.load(None, ["train..lr=1"])
    with pytest.raises(ConfigError, match=r"^train\.lr: cannot parse value"):
        config.load(None, ["train.lr=[1"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        config.load(_write(tmp_path, "train: [\n"))


def _float_keys(cls: type = config.Config, prefix: str = "") -> list[str]:
    """Every float field of the tree (``float`` or ``float | None``), as dotted keys."""
    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys += _float_keys(tp, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        elif tp is float or float in typing.get_args(tp):
            keys.append(prefix + f.name)
    return keys


FLOAT_KEYS = _float_keys()


def test_float_keys_cover_the_tree() -> None:
    assert {"codec.density", "train.lr", "link.latency_ms", "experiment.target_accuracy"} <= set(FLOAT_KEYS)
    assert len(FLOAT_KEYS) > 20


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize(("text", "shown"), [(".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf")])
def test_non_finite_floats_are_rejected(tmp_path: Path, key: str, text: str, shown: str) -> None:
    expected = f"{key}: expected a finite number, got {shown}"
    with pytest.raises(ConfigError) as exc:
        config.load(None, [f"{key}={text}"])
    assert _one_line(exc) == expected
    section, _, name = key.rpartition(".")
    yaml_text = f"{section}:\n  {name}: {text}\n" if section else f"{name}: {text}\n"
    with pytest.raises(ConfigError) as exc:
        config.load(_write(tmp_path, yaml_text))
    assert _one_line(exc) == expected


def test_nan_from_python_is_rejected_too() -> None:
    cfg = config.load(None)
    with pytest.raises(ConfigError, match=r"^codec\.density: expected a finite number, got nan$"):
        config.replace(cfg, {"codec": {"density": float("nan")}})


def test_experiment_overrides_merge_into_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "experiment: {seeds: [0, 1], sweeps: {peers: [2]}}\n")
    cfg = config.load(path, ["experiment.seeds=[5]"])
    assert cfg.experiment.seeds == (5,) and cfg.experiment.sweeps == {"peers": (2,)}
    assert config.load(path, ["experiment.sweeps={}"]).experiment.sweeps == {}  # an empty mapping clears
    with pytest.raises(ConfigError, match=r"^experiment\.arms\[0\]: expected one of"):
        config.load(path, ["experiment.arms=[big]"])


def test_data_and_model_names_take_import_paths(tmp_path):
    cfg = config.load(None, ["data.name=mypkg.sets:load", "model.name=mypkg.nets:make"])
    assert cfg.data.name == "mypkg.sets:load" and cfg.model.name == "mypkg.nets:make"
    with pytest.raises(ConfigError, match=r"^data.name: expected one of 'mnist'.*'package.module:factory', got 'mnst'$"):
        config.load(None, ["data.name=mnst"])
    with pytest.raises(ConfigError, match=r"^model.name: expected a built-in model or 'package.module:factory'"):
        config.load(None, ["model.name='pkg mod:make'"])


def test_hosts_from_a_hostfile_next_to_the_config(tmp_path):
    (tmp_path / "hosts.txt").write_text("10.0.0.1 slots=2\n10.0.0.2 slots=2\n")
    (tmp_path / "c.yaml").write_text("peers: 4\ntopology:\n  hosts: hostfile:hosts.txt\n")
    cfg = config.load(tmp_path / "c.yaml")
    assert cfg.topology.hosts == ("10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2")
    with pytest.raises(ConfigError, match="4 slots for 5 peers"):
        config.load(tmp_path / "c.yaml", ["peers=5"])


def test_yaml_syntax_errors_say_where_and_what(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 0.1\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        config.load(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}:") and "invalid YAML: " in message and "\n" not in message
    assert any(word in message for word in ("expected", "flow sequence")), message


def test_default_ports_lie_below_the_ephemeral_range():
    cfg = config.load(None)
    top = cfg.topology.base_port + 2 * 256  # data + a margin for every peer id
    assert top < 32768 and cfg.dashboard.telemetry_port + 256 < 32768


def test_shipped_configs_use_ports_below_the_ephemeral_range():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        cfg = config.load(path)
        for base, span in ((cfg.topology.base_port, cfg.peers), (cfg.dashboard.telemetry_port, cfg.peers)):
            assert base + span < 32768, f"{path.name}: ports {base}..{base + span} reach Linux's ephemeral range"
