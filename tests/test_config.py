"""Config loading: every shipped config loads; bad input is a one-line ConfigError naming the key."""

from __future__ import annotations

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
