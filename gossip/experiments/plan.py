"""What an experiment runs: its settings (the config's ``experiment:`` mapping) and its arms.

The mapping is a typed section of the config (:class:`gossip.config.ExperimentConfig`: the loader
rejects unknown keys and wrong types with a one-line ConfigError naming ``experiment.<key>``);
:func:`settings_from` fills in its derived defaults and checks what spans the config;
:func:`plan` expands it into arms x seeds, each with its full config, its folder under the
experiment's ``DIR/arms/`` and its place in the report (group, role, sweep). Two arms with the
same config share one folder, so nothing runs twice.

The ``experiment:`` mapping of the config (every key optional)::

    experiment:
      large_model: mnist_cnn        # default: model.name
      small_model: mnist_tiny       # default: model.name
      arms: [large, small, swarm]   # which base arms to run
      seeds: [0, 1]                 # default: [seed]
      sweep_seeds: [0]              # default: the first seed
      target_accuracy: 0.98         # for the "time to target" column; default: none
      match_tolerance_pts: 0.5      # the swarm "matches" if within this many accuracy points
      ensemble: true                # score the ensemble vote and the consensus model
      dashboard: false              # start the web dashboard for swarm arms
      swarm:                        # swarm-only overrides (swarm and sweep arms), any config key
        train.lr: 0.1
      sweeps:                       # one swarm run per value, everything else as in the swarm arm
        link.bandwidth: [10Gbps, 100Mbps]
        codec.density: [0.001, 0.1]
        peers: [2, 8]
        partition: [iid, "dirichlet:0.5", "dirichlet:0.1"]   # also "shards:2"
        topology.kind: [full, ring]

Sweep keys are config keys (``section.key``, any of them: ``train.lr``, ``train.batch_size``,
``codec.density``, ``communication.sync_interval`` ...) or ``partition``; a sweep's rows appear in the
report as a small table and a plot per key. Overrides on the command line work for experiment keys
too: ``experiment.seeds=[0]``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from gossip import config as config_mod
from gossip.config import Config, ExperimentConfig, config_hash
from gossip.errors import ConfigError

BASE_ARMS = ("large", "small", "swarm")


@dataclasses.dataclass(frozen=True)
class Settings:
    """``cfg.experiment`` with every derived default filled in (models, seeds)."""

    large_model: str
    small_model: str
    arms: tuple[str, ...]
    seeds: tuple[int, ...]
    sweep_seeds: tuple[int, ...]
    target_accuracy: float | None
    match_tolerance_pts: float
    ensemble: bool
    dashboard: bool
    sweeps: dict[str, list[Any]]
    swarm: dict[str, Any] = dataclasses.field(default_factory=dict)  # nested overrides of the swarm arms


def settings_from(cfg: Config) -> Settings:
    """Resolve ``cfg.experiment`` (already typed and range-checked by the config loader) and check
    what spans the whole config: known models, and that every sweep value makes a valid config."""
    from gossip.config.loader import is_import_path
    from gossip.training.models import MODELS

    exp = cfg.experiment
    models = {}
    for key in ("large_model", "small_model"):
        name = getattr(exp, key) or cfg.model.name
        if name not in MODELS and not is_import_path(name):
            raise ConfigError(f"experiment.{key}: unknown model {name!r} (known: {', '.join(sorted(MODELS))})")
        models[key] = name
    seeds = exp.seeds or (cfg.seed,)
    swarm: dict[str, Any] = {}
    for key, value in exp.swarm.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key) or key.startswith("experiment"):
            raise ConfigError(f"experiment.swarm.{key}: not a config key")
        swarm = _merge(swarm, _nest(key, value))
        try:
            config_mod.replace(cfg, swarm)
        except ConfigError as exc:
            raise ConfigError(f"experiment.swarm.{key}: {exc}") from None
    for key, values in exp.sweeps.items():
        if not values:
            raise ConfigError(f"experiment.sweeps.{key}: expected a non-empty list of values, got []")
        for value in values:  # every value must make a valid config
            try:
                config_mod.replace(cfg, _merge(swarm, sweep_overrides(key, value)))
            except ConfigError as exc:
                raise ConfigError(f"experiment.sweeps.{key}: {value!r}: {exc}") from None
    return Settings(models["large_model"], models["small_model"], tuple(exp.arms), seeds,
                    exp.sweep_seeds or seeds[:1], exp.target_accuracy, exp.match_tolerance_pts,
                    exp.ensemble, exp.dashboard, {k: list(v) for k, v in exp.sweeps.items()}, swarm)


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def sweep_overrides(key: str, value: Any) -> dict[str, Any]:
    """``("partition", "dirichlet:0.1")`` -> ``{"data": {"partition": "dirichlet", "alpha": 0.1}}``."""
    if key != "partition":
        return _nest(key, value)
    kind, _, arg = str(value).partition(":")
    try:
        if kind == "iid" and not arg:
            return {"data": {"partition": "iid"}}
        if kind == "dirichlet":
            return {"data": {"partition": "dirichlet", "alpha": float(arg or 0.5)}}
        if kind == "shards":
            return {"data": {"partition": "shards", "shards_per_peer": int(arg or 2)}}
    except ValueError:
        pass
    raise ConfigError(f"expected iid, dirichlet:ALPHA or shards:K, got {value!r}")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        # an empty mapping replaces (experiment.sweeps={} turns the sweeps off); others merge
        out[k] = _merge(out[k], v) if isinstance(v, dict) and v and isinstance(out.get(k), dict) else v
    return out


def load(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """:func:`gossip.config.load` (kept for callers: ``experiment.x=...`` overrides merge there too)."""
    return config_mod.load(path, overrides)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).replace("=", "-")


def plan(cfg: Config, s: Settings) -> list[dict[str, Any]]:
    """Every arm x seed: name, group, role, seed, dir, sweep and its resolved config."""
    arms: list[dict[str, Any]] = []
    by_hash: dict[tuple[str, str], str] = {}

    def add(group: str, role: str, seed: int, extra: dict[str, Any], sweep: dict[str, Any] | None) -> None:
        # an arm's config drops the experiment mapping: adding a seed or a sweep later must not
        # change the hash of the arms already run (they are resumed by that hash)
        arm_cfg = config_mod.replace(dataclasses.replace(cfg, experiment=ExperimentConfig()), _merge({"seed": seed}, extra))
        kind = "swarm" if role in ("swarm", "sweep") else "centralized"
        key = (kind, config_hash(arm_cfg) if kind == "swarm" else config_hash(dataclasses.replace(arm_cfg, peers=1)))
        name = f"{_slug(group.replace(' ', '-'))}-seed{seed}"
        folder = by_hash.setdefault(key, f"arms/{name}")  # an identical config runs once
        if role == "sweep" and folder != f"arms/{name}":
            return  # a sweep point equal to an arm already planned (the swarm's own value) is that arm's row
        arms.append({"name": name, "group": group, "role": role, "seed": seed, "dir": folder, "kind": kind,
                     "sweep": sweep, "config": arm_cfg})

    swarm = _merge(s.swarm, {"model": {"name": s.small_model}, "checkpoint": {"save_final": True},
                             "dashboard": {"enabled": s.dashboard}})
    for seed in s.seeds:
        if "large" in s.arms:
            add("large", "large", seed, {"model": {"name": s.large_model}}, None)
        if "small" in s.arms:
            add("small", "small", seed, {"model": {"name": s.small_model}}, None)
        if "swarm" in s.arms:
            add("swarm", "swarm", seed, swarm, None)
    for key, values in s.sweeps.items():
        for value in values:
            for seed in s.sweep_seeds:
                add(f"sweep {key}={value}", "sweep", seed, _merge(swarm, sweep_overrides(key, value)),
                    {"key": key, "value": value})
    return arms
