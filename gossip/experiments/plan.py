"""What an experiment runs: its settings (the config's ``experiment:`` mapping) and its arms.

:func:`settings_from` validates the mapping (a ConfigError names ``experiment.<key>``);
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
      sweeps:                       # one swarm run per value, everything else as in the swarm arm
        link.bandwidth: [10Gbps, 100Mbps]
        codec.density: [0.001, 0.1]
        peers: [2, 8]
        partition: [iid, "dirichlet:0.5", "dirichlet:0.1"]   # also "shards:2"
        topology.kind: [full, ring]

Sweep keys are config keys (``section.key``) or ``partition``. Overrides on the command line
work for experiment keys too: ``experiment.seeds=[0]``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from gossip import config as config_mod
from gossip.config import Config, config_hash
from gossip.errors import ConfigError

BASE_ARMS = ("large", "small", "swarm")
_KEYS = {"large_model", "small_model", "arms", "seeds", "sweep_seeds", "target_accuracy",
         "match_tolerance_pts", "ensemble", "dashboard", "sweeps"}


@dataclasses.dataclass(frozen=True)
class Settings:
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


def _ints(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(type(v) is int for v in value):
        raise ConfigError(f"experiment.{key}: expected a non-empty list of integers, got {value!r}")
    return tuple(value)


def settings_from(cfg: Config) -> Settings:
    """Validate ``cfg.experiment``; a ConfigError names ``experiment.<key>``."""
    from gossip.training.models import MODELS

    raw = cfg.experiment
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"experiment.{unknown[0]}: unknown key (valid: {', '.join(sorted(_KEYS))})")
    models = {}
    for key in ("large_model", "small_model"):
        name = raw.get(key, cfg.model.name)
        if name not in MODELS:
            raise ConfigError(f"experiment.{key}: unknown model {name!r} (known: {', '.join(sorted(MODELS))})")
        models[key] = name
    arms = raw.get("arms", list(BASE_ARMS))
    if not isinstance(arms, list) or not arms or any(a not in BASE_ARMS for a in arms):
        raise ConfigError(f"experiment.arms: expected a list of {', '.join(BASE_ARMS)}, got {arms!r}")
    seeds = _ints("seeds", raw.get("seeds", [cfg.seed]))
    sweep_seeds = _ints("sweep_seeds", raw.get("sweep_seeds", [seeds[0]]))
    target = raw.get("target_accuracy")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1):
        raise ConfigError(f"experiment.target_accuracy: expected a number in (0, 1], got {target!r}")
    tol = raw.get("match_tolerance_pts", 0.5)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0:
        raise ConfigError(f"experiment.match_tolerance_pts: expected a number >= 0, got {tol!r}")
    flags = {}
    for key, default in (("ensemble", True), ("dashboard", False)):
        flags[key] = raw.get(key, default)
        if not isinstance(flags[key], bool):
            raise ConfigError(f"experiment.{key}: expected true or false, got {flags[key]!r}")
    sweeps = raw.get("sweeps", {}) or {}
    if not isinstance(sweeps, dict):
        raise ConfigError(f"experiment.sweeps: expected a mapping of key: [values], got {sweeps!r}")
    for key, values in sweeps.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"experiment.sweeps.{key}: expected a non-empty list of values, got {values!r}")
        for value in values:  # every value must make a valid config
            try:
                config_mod.replace(cfg, sweep_overrides(key, value))
            except ConfigError as exc:
                raise ConfigError(f"experiment.sweeps.{key}: {value!r}: {exc}") from None
    return Settings(models["large_model"], models["small_model"], tuple(arms), seeds, sweep_seeds,
                    None if target is None else float(target), float(tol), flags["ensemble"],
                    flags["dashboard"], {str(k): list(v) for k, v in sweeps.items()})


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
    """Like :func:`gossip.config.load`, but ``experiment.x=...`` overrides merge into the mapping."""
    mine = [o for o in overrides if o.strip().startswith("experiment.")]
    cfg = config_mod.load(path, [o for o in overrides if o not in mine])
    extra = config_mod.parse_overrides(mine).get("experiment", {})
    return dataclasses.replace(cfg, experiment=_merge(cfg.experiment, extra))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).replace("=", "-")


def plan(cfg: Config, s: Settings) -> list[dict[str, Any]]:
    """Every arm x seed: name, group, role, seed, dir, sweep and its resolved config."""
    arms: list[dict[str, Any]] = []
    by_hash: dict[tuple[str, str], str] = {}

    def add(group: str, role: str, seed: int, extra: dict[str, Any], sweep: dict[str, Any] | None) -> None:
        # an arm's config drops the experiment mapping: adding a seed or a sweep later must not
        # change the hash of the arms already run (they are resumed by that hash)
        arm_cfg = config_mod.replace(dataclasses.replace(cfg, experiment={}), _merge({"seed": seed}, extra))
        kind = "swarm" if role in ("swarm", "sweep") else "centralized"
        key = (kind, config_hash(arm_cfg) if kind == "swarm" else config_hash(dataclasses.replace(arm_cfg, peers=1)))
        name = f"{_slug(group.replace(' ', '-'))}-seed{seed}"
        folder = by_hash.setdefault(key, f"arms/{name}")  # an identical config runs once
        if role == "sweep" and folder != f"arms/{name}":
            return  # a sweep point equal to an arm already planned (the swarm's own value) is that arm's row
        arms.append({"name": name, "group": group, "role": role, "seed": seed, "dir": folder, "kind": kind,
                     "sweep": sweep, "config": arm_cfg})

    swarm = {"model": {"name": s.small_model}, "checkpoint": {"save_final": True},
             "dashboard": {"enabled": s.dashboard}}
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
