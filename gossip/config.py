"""One typed configuration tree, loaded from YAML with ``key.sub=value`` overrides.

Every section is a frozen dataclass; every field has a default, a type and, where
it matters, a range. Loading rejects unknown keys, wrong types and out-of-range
values with a one-line :class:`~gossip.errors.ConfigError` that names the key::

    cfg = load("configs/mnist_4peers.yaml", ["train.lr=0.1", "peers=8"])

Units are in the field names or comments (``_s`` seconds, ``_ms`` milliseconds,
bandwidth as a string such as ``"10Gbps"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from gossip.errors import ConfigError


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Any:
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


@dataclass(frozen=True)
class DataConfig:
    name: Literal["mnist", "fashion_mnist", "cifar10", "imagefolder"] = "mnist"
    root: str | None = None  # None: $GOSSIP_DATA, else ./data
    partition: Literal["iid", "dirichlet", "shards"] = "iid"
    alpha: float = field(default=0.5, metadata=_range(0.0, None, lo_open=True))  # dirichlet concentration
    shards_per_peer: int = field(default=2, metadata=_range(1))
    augment: bool = True  # random crop + flip for CIFAR-like data
    download: bool = True  # fetch torchvision data sets into root when missing (needs internet)
    limit_train: int = field(default=0, metadata=_range(0))  # 0: all samples; >0: first N (smoke tests)
    limit_test: int = field(default=0, metadata=_range(0))
    # a peer that is down at an epoch start has its shard split among the live peers for that
    # epoch (every peer can rebuild every shard: the partition is deterministic); false: its data is lost
    adopt_down_shards: bool = True


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mnist_cnn"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=2, metadata=_range(1))
    batch_size: int = field(default=64, metadata=_range(1))
    lr: float = field(default=0.05, metadata=_range(0.0, None, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0))
    nesterov: bool = True
    weight_decay: float = field(default=5e-4, metadata=_range(0.0))
    label_smoothing: float = field(default=0.0, metadata=_range(0.0, 1.0))
    schedule: Literal["constant", "cosine", "onecycle"] = "onecycle"
    warmup_epochs: float = field(default=0.2, metadata=_range(0.0))
    eval_batch_size: int = field(default=1000, metadata=_range(1))
    threads: int = field(default=0, metadata=_range(0))  # torch CPU threads; 0: fair share of cores


@dataclass(frozen=True)
class CommunicationConfig:
    """Sync triggers (names and defaults from the design card) and aggregation."""

    grad_norm_threshold: float = field(default=0.15, metadata=_range(0.0))  # relative change since last sync
    confidence_threshold: float = field(default=0.7, metadata=_range(0.0, 1.0))  # mean max-softmax
    sync_interval: int = field(default=5, metadata=_range(1))  # max batches between syncs
    aggregation: Literal["uniform", "confidence", "staleness", "clip", "trimmed_mean", "median", "centered_clip"] = "uniform"
    confidence_cap: float = field(default=2.0, metadata=_range(1.0))  # max weight ratio between peers
    staleness_decay: float = field(default=0.1, metadata=_range(0.0))  # weight 1/(1+decay*steps_behind)
    clip_norm: float = field(default=0.0, metadata=_range(0.0))  # robust options; 0: derived
    trim_ratio: float = field(default=0.25, metadata=_range(0.0, 0.5))
    final_flush: bool = True  # send the leftover error-feedback residual at the end
    # A peer trains at train.lr x lr_scale (centralized runs ignore it). Averaging N peers'
    # deltas makes the swarm act like one model at N x the batch with 1/N of the steps, which
    # wants a larger step; linear scaling (N x) overshoots with compressed, delayed updates.
    # Measured (MNIST CNN, 4 peers, 2 epochs, base lr 0.05): x1 98.88%, x2 99.08%, x2.6 99.22%,
    # x4 97.08% (README, "The swarm's step size").
    lr_scale: float = field(default=1.0, metadata=_range(0.0, lo_open=True))
    # "local": a peer keeps its own full steps, so its model is the swarm's average plus its own
    # unsent residual (local SGD with compressed averaging). "exact": a peer's model moves only by
    # compressed updates, so every model is the same up to in-flight messages (DGC-style); it
    # trained worse in our MNIST runs (README, "Consensus").
    consensus: Literal["exact", "local"] = "local"


@dataclass(frozen=True)
class CodecConfig:
    select: Literal["topk", "sampled_topk", "randomk", "dense", "powersgd"] = "sampled_topk"
    density: float = field(default=0.01, metadata=_range(0.0, 1.0, lo_open=True))  # kept / elements of tensors >= dense_below
    values: Literal["int8", "int4", "sign", "fp16", "fp32"] = "int8"
    chunk: int = field(default=256, metadata=_range(0))  # values per quantization scale; 0: one per group
    index: Literal["auto", "delta_zlib", "bitmap_zlib", "rice", "rice_zlib"] = "auto"
    zlib_level: int = field(default=1, metadata=_range(0, 9))  # 1: measured best size/speed (gossip.bench codec)
    dense_below: int = field(default=2048, metadata=_range(0))  # tensors this small go dense
    error_feedback: bool = True
    momentum_correction: bool = False  # DGC; use ErrorFeedback.for_config(..., momentum=train.momentum)
    clip_norm: float = field(default=0.0, metadata=_range(0.0))  # max L2 norm of one update (rest waits); 0: off
    warmup_steps: int = field(default=0, metadata=_range(0))  # encodes over which density falls from 25% (DGC)
    powersgd_rank: int = field(default=4, metadata=_range(1))


@dataclass(frozen=True)
class TopologyConfig:
    kind: Literal["full", "ring", "torus", "kregular", "random_k", "edges"] = "full"
    k: int = field(default=2, metadata=_range(1))  # degree for kregular/random_k
    edges: tuple[tuple[int, int], ...] = ()
    transport: Literal["tcp", "ipc"] = "tcp"
    hosts: tuple[str, ...] = ("127.0.0.1",)  # one per peer, or one for all
    base_port: int = field(default=47000, metadata=_range(1024, 65000))
    ipc_dir: str = "/tmp/gossip-ipc"


@dataclass(frozen=True)
class LinkConfig:
    bandwidth: str = "10Gbps"
    latency_ms: float = field(default=0.0, metadata=_range(0.0))
    drop: float = field(default=0.0, metadata=_range(0.0, 1.0))  # fault injection
    duplicate: float = field(default=0.0, metadata=_range(0.0, 1.0))
    reorder: float = field(default=0.0, metadata=_range(0.0, 1.0))


@dataclass(frozen=True)
class TimeoutConfig:
    startup_s: float = field(default=60.0, metadata=_range(0.0, None, lo_open=True))
    silence_s: float = field(default=15.0, metadata=_range(0.0, None, lo_open=True))
    finish_s: float = field(default=30.0, metadata=_range(0.0))


@dataclass(frozen=True)
class CheckpointConfig:
    every_epochs: int = field(default=5, metadata=_range(0))  # 0: never
    keep: int = field(default=2, metadata=_range(1))
    save_final: bool = False  # write DIR/peer-<id>.final.pt (the final model's state_dict) at the end


@dataclass(frozen=True)
class DashboardConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = field(default=3000, metadata=_range(0, 65535))
    telemetry_port: int = field(default=47500, metadata=_range(1024, 65000))  # peer i publishes on +i
    interval_s: float = field(default=0.5, metadata=_range(0.05))
    down_after_s: float = field(default=3.0, metadata=_range(0.0, None, lo_open=True))  # silence => "down"


@dataclass(frozen=True)
class SecurityConfig:
    max_message_bytes: int = field(default=64 * 1024 * 1024, metadata=_range(1024))
    curve: bool = False  # CurveZMQ: encrypted links, only the peers' keys accepted (gossip.runtime.curve)
    curve_keys: str = "keys"  # folder with every peer-<i>.key and this peer's peer-<i>.key_secret
    attack: Literal["none", "sign_flip", "gaussian", "inflated_confidence", "stale_replay"] = "none"
    attackers: tuple[int, ...] = ()


@dataclass(frozen=True)
class Config:
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    peers: int = field(default=4, metadata=_range(1, 256))
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    communication: CommunicationConfig = CommunicationConfig()
    codec: CodecConfig = CodecConfig()
    topology: TopologyConfig = TopologyConfig()
    link: LinkConfig = LinkConfig()
    timeouts: TimeoutConfig = TimeoutConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    dashboard: DashboardConfig = DashboardConfig()
    security: SecurityConfig = SecurityConfig()
    experiment: dict[str, Any] = field(default_factory=dict)  # read by gossip.experiments.experiment only


# ---------------------------------------------------------------- loading

_BANDWIDTH = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(bps|bit/s)\s*$")
_SCALE = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


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


def _coerce(key: str, tp: Any, value: Any) -> Any:
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
                return _coerce(key, arg, value)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", args[0], v) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} items, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
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
        kwargs[name] = _coerce(key, hints[name], value)
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


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "experiment":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(raw: dict[str, Any]) -> Config:
    cfg = _build(Config, raw)
    validate(cfg)
    return cfg


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
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}:{where} invalid YAML") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return raw


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML file (or the defaults when ``path`` is None) and apply overrides."""
    return from_dict(_merge(load_raw(path), parse_overrides(overrides)))


def replace(cfg: Config, overrides: list[str] | tuple[str, ...] | dict[str, Any]) -> Config:
    """A copy of ``cfg`` with overrides applied, validated like a fresh load."""
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    return from_dict(_merge(to_dict(cfg), extra))


def validate(cfg: Config) -> None:
    """Checks that span several keys."""
    parse_bandwidth(cfg.link.bandwidth)
    n_hosts = len(cfg.topology.hosts)
    if n_hosts not in (1, cfg.peers):
        raise ConfigError(f"topology.hosts: expected 1 or {cfg.peers} (peers) entries, got {n_hosts}")
    for a, b in cfg.topology.edges:
        if not (0 <= a < cfg.peers and 0 <= b < cfg.peers) or a == b:
            raise ConfigError(f"topology.edges: edge ({a}, {b}) is not between two of {cfg.peers} peers")
    if cfg.topology.kind == "edges" and not cfg.topology.edges:
        raise ConfigError("topology.edges: kind 'edges' needs a non-empty edge list")
    for a in cfg.security.attackers:
        if not 0 <= a < cfg.peers:
            raise ConfigError(f"security.attackers: {a} is not a peer id (0..{cfg.peers - 1})")


def to_dict(cfg: Config) -> dict[str, Any]:
    def convert(obj: Any) -> Any:
        if isinstance(obj, tuple):
            return [convert(v) for v in obj]
        if isinstance(obj, dict):
            return {k: convert(v) for k, v in obj.items()}
        return obj

    return convert(dataclasses.asdict(cfg))  # type: ignore[no-any-return]


def config_hash(cfg: Config) -> str:
    """Short stable hash of the resolved config (logged with it, compared across peers)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
