"""Loading the tree: YAML and ``key.sub=value`` overrides -> a validated :class:`Config`.

Every value is coerced to its field's type and checked against its range; anything wrong is a
one-line :class:`~gossip.errors.ConfigError` that names the key (``train.lr: must be > 0.0, got 0.0``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from gossip.config import hosts
from gossip.config.schema import DATA_SETS, Config, ExperimentConfig
from gossip.errors import ConfigError

_BANDWIDTH = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(bps|bit/s)\s*$")
_SCALE = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_ITEMS = {int: "integers", float: "numbers", str: "strings", Any: "values"}


def parse_bandwidth(text: str) -> float:
    """``"10Gbps"`` -> bits per second (``"0bps"`` or ``"unlimited"``: infinity)."""
    if text.strip().lower() in ("unlimited", "inf", "0bps"):
        return float("inf")
    m = _BANDWIDTH.match(text)
    if not m:
        raise ConfigError(f"link.bandwidth: expected e.g. '10Gbps', '100Mbps', got {text!r}")
    return float(m.group(1)) * _SCALE[m.group(2).lower()]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce_list(key: str, args: tuple[Any, ...], value: Any, meta: Any) -> tuple[Any, ...]:
    homogeneous = len(args) == 2 and args[1] is Ellipsis
    least = (meta or {}).get("min_items", 0)
    if not isinstance(value, (list, tuple)) or len(value) < least:
        what = "a non-empty list" if least else "a list"
        if homogeneous and args[0] in _ITEMS:
            what += " of " + _ITEMS[args[0]]
        raise ConfigError(f"{key}: expected {what}, got {value!r}")
    if homogeneous:
        return tuple(_coerce(f"{key}[{i}]", args[0], v) for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{key}: expected {len(args)} items, got {value!r}")
    return tuple(_coerce(f"{key}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value, strict=True)))


def _coerce(key: str, tp: Any, value: Any, meta: Any = None) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, arg, value, meta)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        return _coerce_list(key, args, value, meta)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_tp, value_tp = args or (Any, Any)
        return {_coerce(key, key_tp, k): _coerce(f"{key}.{k}", value_tp, v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # .nan passes every range check below, .inf most of them
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _check_range(key: str, value: Any, meta: Any) -> None:
    if not meta or value is None:
        return
    lo, hi, lo_open = meta.get("lo"), meta.get("hi"), meta.get("lo_open")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ConfigError(f"{key}: must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: must be <= {hi}, got {value!r}")


def _build(cls: Any, raw: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key (valid: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in raw.items():
        key = prefix + name
        kwargs[name] = _coerce(key, hints[name], value, fields[name].metadata)
        _check_range(key, kwargs[name], fields[name].metadata)
    return cls(**kwargs)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["train.lr=0.1", "topology.kind=ring"]`` -> nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item}: overrides look like key.sub=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
            raise ConfigError(f"{key}: not a valid key")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: cannot parse value {text!r} ({exc.__class__.__name__})") from None
        _set_path(tree, key, value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any], cls: Any = Config) -> dict[str, Any]:
    """``extra`` over ``base``: sections merge key by key; a mapping field (``experiment.sweeps``)
    merges its entries, and an empty mapping clears it (``experiment.sweeps={}`` turns sweeps off)."""
    hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    out = dict(base)
    for key, value in extra.items():
        old, tp = out.get(key), hints.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            if dataclasses.is_dataclass(tp):
                out[key] = _merge(old, value, tp)
            else:
                out[key] = {**old, **value} if value else {}
        else:
            out[key] = value
    return out


def is_import_path(name: str) -> bool:
    """``"package.module:attr"`` names user code (a model or data factory), as uvicorn and Flower do."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr) and all(
        part.isidentifier() for part in [*module.split("."), *attr.split(".")])


def from_dict(raw: dict[str, Any], base: Path | None = None) -> Config:
    """A validated Config; ``base`` is the folder relative hostfile paths are read from."""
    topo = raw.get("topology")
    if isinstance(topo, dict) and isinstance(topo.get("hosts"), str):
        peers = raw.get("peers", Config.peers)
        n = peers if isinstance(peers, int) and not isinstance(peers, bool) and peers > 0 else 1
        raw = {**raw, "topology": {**topo, "hosts": hosts.resolve(topo["hosts"], n, base)}}
    cfg = _build(Config, raw)
    validate(cfg)
    return cfg  # type: ignore[no-any-return]


def load_raw(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.line + 1}:{mark.column + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        context = getattr(exc, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise ConfigError(f"{p}:{where} invalid YAML: {detail}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return raw


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML file (or the defaults when ``path`` is None) and apply overrides."""
    base = Path(path).resolve().parent if path is not None else None
    return from_dict(_merge(load_raw(path), parse_overrides(overrides)), base)


def replace(cfg: Config, overrides: list[str] | tuple[str, ...] | dict[str, Any]) -> Config:
    """A copy of ``cfg`` with overrides applied, validated like a fresh load."""
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    return from_dict(_merge(to_dict(cfg), extra))


def validate(cfg: Config) -> None:
    """Checks that span several keys."""
    parse_bandwidth(cfg.link.bandwidth)
    if cfg.data.name not in DATA_SETS and not is_import_path(cfg.data.name):
        raise ConfigError(f"data.name: expected one of {', '.join(map(repr, DATA_SETS))} or "
                          f"'package.module:factory', got {cfg.data.name!r}")
    if not cfg.model.name or (":" in cfg.model.name and not is_import_path(cfg.model.name)):
        raise ConfigError(f"model.name: expected a built-in model or 'package.module:factory', "
                          f"got {cfg.model.name!r}")
    n_hosts = len(cfg.topology.hosts)
    if n_hosts not in (1, cfg.peers):
        raise ConfigError(f"topology.hosts: expected 1 or {cfg.peers} (peers) entries, got {n_hosts}")
    for a, b in cfg.topology.edges:
        if not (0 <= a < cfg.peers and 0 <= b < cfg.peers) or a == b:
            raise ConfigError(f"topology.edges: edge ({a}, {b}) is not between two of {cfg.peers} peers")
    if cfg.topology.kind == "edges" and not cfg.topology.edges:
        raise ConfigError("topology.edges: kind 'edges' needs a non-empty edge list")
    if cfg.communication.peer_batch and cfg.communication.global_batch:
        raise ConfigError("communication.peer_batch: set it or communication.global_batch, not both "
                          "(both say what a peer's batch is)")
    for a in cfg.security.attackers:
        if not 0 <= a < cfg.peers:
            raise ConfigError(f"security.attackers: {a} is not a peer id (0..{cfg.peers - 1})")


def _convert(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return [_convert(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _convert(v) for k, v in obj.items()}
    return obj


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain YAML/JSON data (tuples as lists); loads back to the same config."""
    out: dict[str, Any] = _convert(dataclasses.asdict(cfg))
    # Only the experiment keys that differ from the defaults: a config without an experiment
    # (every arm's, every swarm's) keeps the hash it had when the section was a plain mapping,
    # so arms already run are still found by it.
    out["experiment"] = {f.name: out["experiment"][f.name] for f in dataclasses.fields(ExperimentConfig)
                         if getattr(cfg.experiment, f.name) != getattr(ExperimentConfig(), f.name)}
    return out


def config_hash(cfg: Config) -> str:
    """Short stable hash of the resolved config (logged with it, compared across peers)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
