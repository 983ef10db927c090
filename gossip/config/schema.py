"""The configuration tree: one frozen dataclass per section, every field typed and defaulted.

A field's ``metadata`` holds its range (:func:`_range`) or minimum length (:func:`_items`);
:mod:`gossip.config.loader` enforces both and the types. Units are in the field names or
comments (``_s`` seconds, ``_ms`` milliseconds, bandwidth as a string such as ``"10Gbps"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

DATA_SETS = ("mnist", "fashion_mnist", "cifar10", "imagefolder")

def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Any:
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


def _items(least: int) -> Any:
    return {"min_items": least}


@dataclass(frozen=True)
class DataConfig:
    # a built-in (DATA_SETS) or your own "package.module:factory" (gossip.training.custom)
    name: str = "mnist"
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
    name: str = "mnist_cnn"  # a built-in (gossip.training.models) or "package.module:factory"


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
    # The same optimisation problem as the centralized arm: train.batch_size is the swarm's global
    # batch, each peer steps on batch_size / peers (so a swarm epoch takes as many steps as a
    # centralized one, and averaging N peers' deltas is one step of the global batch).
    global_batch: bool = False
    # Or a fixed per-peer batch (samples per local step; 0: from the two keys above). The swarm's
    # effective batch then grows with the peers (peers x peer_batch), and lr_rule scales the
    # learning rate by its ratio to train.batch_size: a recipe that holds from 4 to 16 peers.
    peer_batch: int = field(default=0, metadata=_range(0))
    # The learning rate for the swarm's effective batch (peers x per-peer batch) against
    # train.batch_size: "linear" (Goyal et al.) multiplies train.lr by that ratio, "sqrt" by its
    # square root, "none" leaves it; the schedule's warm-up applies either way. Multiplies lr_scale.
    lr_rule: Literal["none", "linear", "sqrt"] = "none"
    # BatchNorm running mean/var stay per peer while the weights are averaged: re-estimate them for
    # the final weights on this many local batches before the final evaluation (0: off)
    bn_recalibrate_batches: int = field(default=0, metadata=_range(0))
    # Or gossip them: "gossip" puts every BatchNorm running mean/var into the gossiped vector after
    # the parameters (their changes travel with the deltas, dense: they are small), so the peers
    # end with the same statistics as well as the same weights; "local": each peer keeps its own
    bn_stats: Literal["local", "gossip"] = "local"
    # An outer optimizer on the consensus movement (gossip.training.outer): "nesterov" passes every
    # fold through Nesterov momentum (DiLoCo's outer step, lr 0.7 and momentum 0.9 there); "none"
    # adds the averaged deltas as they are. outer_lr is dimensionless (1 = the deltas' own size).
    outer: Literal["none", "nesterov"] = "none"
    outer_lr: float = field(default=0.7, metadata=_range(0.0, lo_open=True))
    outer_momentum: float = field(default=0.9, metadata=_range(0.0, 0.99))
    # "local": a peer keeps its own full steps, so its model is the swarm's average plus its own
    # unsent residual (local SGD with compressed averaging). "exact": a peer's model moves only by
    # compressed updates, so every model is the same up to in-flight messages (DGC-style); it
    # trained worse in our MNIST runs (README, "Consensus").
    consensus: Literal["exact", "local"] = "local"
    # Bounded influence of any one update, whatever the policy (gossip.aggregation.bound): an
    # update whose L2 norm exceeds norm_bound x the recent norms of updates (its sender's, and the
    # swarm's upper median, our own included) is rejected and counted as "norm_bound".
    # 0: off. A dimensionless factor: honest updates reached 7x the reference (47x in the first
    # updates, which get 8x the factor; 22x mid-run on a lossy link) on MNIST, hence 64.
    norm_bound: float = field(default=64.0, metadata=_range(0.0))
    # Bandwidth-aware sending (gossip.runtime.adapt, its docstring is the tuning guide): lower the
    # density of each update (down to min_density, then sync less often) while the backlog of a
    # link (bytes queued, not yet sent) exceeds adapt_target_backlog_s seconds of its measured
    # throughput; raise it again once the backlog is low. Inert while nothing queues (10 Gbps).
    adapt: bool = True
    min_density: float = field(default=0.0005, metadata=_range(0.0, 1.0, lo_open=True))  # kept / eligible elements
    adapt_target_backlog_s: float = field(default=1.0, metadata=_range(0.0, None, lo_open=True))  # seconds
    adapt_interval_s: float = field(default=1.0, metadata=_range(0.0, None, lo_open=True))  # seconds between decisions
    # The training thread waits before a batch while it is more than this many global steps
    # (batches) ahead of its slowest live, unfinished neighbour (steps from heartbeats); 0: no bound
    max_lead_steps: int = field(default=0, metadata=_range(0))
    # "average": peers average compressed deltas into one model (everything above). "codistill":
    # every peer keeps a model of its own (its own initial weights) and learns from its
    # neighbours' predictions on its own batches; they send model snapshots, not deltas (distill:)
    mode: Literal["average", "codistill"] = "average"


@dataclass(frozen=True)
class DistillConfig:
    """``communication.mode: codistill`` (gossip.training.distill: its docstring is the tuning guide)."""

    temperature: float = field(default=1.0, metadata=_range(0.0, None, lo_open=True))  # of teacher and student softmax
    weight: float = field(default=1.0, metadata=_range(0.0))  # of the distillation term against cross-entropy
    warmup_epochs: float = field(default=0.5, metadata=_range(0.0))  # the weight ramps up from 0 over these
    snapshots_per_epoch: float = field(default=4.0, metadata=_range(0.0, None, lo_open=True))  # sent by each peer
    values: Literal["int8", "fp16", "fp32"] = "int8"  # how a snapshot's weights travel
    stale_epochs: float = field(default=2.0, metadata=_range(0.0, None, lo_open=True))  # an unrefreshed teacher goes


@dataclass(frozen=True)
class CodecConfig:
    select: Literal["topk", "sampled_topk", "randomk", "dense", "powersgd"] = "sampled_topk"
    density: float = field(default=0.01, metadata=_range(0.0, 1.0, lo_open=True))  # kept / elements of tensors >= dense_below
    values: Literal["int8", "int4", "sign", "fp16", "fp32"] = "int8"
    chunk: int = field(default=256, metadata=_range(0))  # values per quantization scale; 0: one per group
    index: Literal["auto", "delta_zlib", "bitmap_zlib", "rice", "rice_zlib"] = "auto"
    zlib_level: int = field(default=1, metadata=_range(0, 9))  # delta/bitmap zlib level; rice_zlib uses Z_RLE (0 here: stored)
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
    # How an update reaches the peers that are not the origin's neighbours. "shortest_paths": a peer
    # relays it only to neighbours farther (in hops) from the origin than itself, so each copy
    # moves away from the origin and a peer gets one per neighbour nearer the origin; it floods
    # instead while any peer is down, and for an origin from which some peer would have only one
    # such neighbour (a ring: one lost relay must not cut anyone off). "flood": to every neighbour
    # but the sender and the origin (the default: the most ways in, the most duplicates).
    relay: Literal["shortest_paths", "flood"] = "flood"
    transport: Literal["tcp", "ipc"] = "tcp"
    # one per peer, or one for all; in YAML also "hostfile:PATH", "slurm" or "env" (gossip.config.hosts)
    hosts: tuple[str, ...] = ("127.0.0.1",)
    # below Linux's ephemeral range (32768-60999), where outgoing connections could already hold it
    base_port: int = field(default=24000, metadata=_range(1024, 65000))
    ipc_dir: str = "/tmp/gossip-ipc"


@dataclass(frozen=True)
class LinkConfig:
    bandwidth: str = "10Gbps"
    latency_ms: float = field(default=0.0, metadata=_range(0.0))
    drop: float = field(default=0.0, metadata=_range(0.0, 1.0))  # fault injection
    duplicate: float = field(default=0.0, metadata=_range(0.0, 1.0))
    reorder: float = field(default=0.0, metadata=_range(0.0, 1.0))
    # The shaper (gossip.runtime.shaper). A message longer than max(chunk_bytes, burst) bytes is
    # cut into fragments that long, and every fragment waits for its tokens.
    chunk_bytes: int = field(default=64 * 1024, metadata=_range(1024))
    # bytes a link may send back to back above the rate after an idle spell; 0: auto, the larger
    # of chunk_bytes and 5 ms at the rate (so under the default 10 Gbps messages go whole)
    burst_bytes: int = field(default=0, metadata=_range(0))
    # the bucket charges estimated wire bytes: the ZMTP stream cut into TCP segments of mss_bytes
    # (1448 = MTU 1500 - IPv4 20 - TCP 20 - timestamps 12), each adding header_bytes on the
    # wire (Ethernet 14 + IPv4 20 + TCP 20 + timestamps 12); header_bytes 0: payload only
    mss_bytes: int = field(default=1448, metadata=_range(64, 65536))
    header_bytes: int = field(default=66, metadata=_range(0, 512))
    # a partly reassembled message from a neighbour is dropped (and counted) after this many seconds
    reassembly_timeout_s: float = field(default=30.0, metadata=_range(0.0, None, lo_open=True))


@dataclass(frozen=True)
class TimeoutConfig:
    startup_s: float = field(default=60.0, metadata=_range(0.0, None, lo_open=True))
    silence_s: float = field(default=15.0, metadata=_range(0.0, None, lo_open=True))
    finish_s: float = field(default=30.0, metadata=_range(0.0))
    # seconds a peer that saw every peer go silent at once (a partition, not a crash of all of
    # them) waits for the link to come back before it declares itself done; 0: finish at once
    partition_wait_s: float = field(default=60.0, metadata=_range(0.0))


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
    telemetry_port: int = field(default=24500, metadata=_range(1024, 65000))  # peer i publishes on +i
    interval_s: float = field(default=0.5, metadata=_range(0.05))
    down_after_s: float = field(default=3.0, metadata=_range(0.0, None, lo_open=True))  # silence => "down"
    # open websocket feeds at most, in all and from one client address; more are refused (503) and
    # counted: each costs a queue and a snapshot per resync, so an unbounded number is a memory flood
    max_clients: int = field(default=64, metadata=_range(1))
    max_clients_per_address: int = field(default=8, metadata=_range(1))


@dataclass(frozen=True)
class SecurityConfig:
    max_message_bytes: int = field(default=64 * 1024 * 1024, metadata=_range(1024))
    # CurveZMQ: encrypted links, only the peers' keys accepted, a sender is whose key signed its
    # frames (gossip.runtime.curve). gossip.launch makes the keys (RUN_DIR/keys) when curve_keys has none
    curve: bool = True
    curve_keys: str = "keys"  # folder with every peer-<i>.key and this peer's peer-<i>.key_secret
    # run without keys on a non-loopback address (anyone who reaches a port can claim to be any
    # peer); without it such a peer refuses to start. On loopback a peer without keys runs
    # insecure anyway, with one security_off warning (tests, demos)
    insecure: bool = False
    # where a peer's telemetry PUB socket listens: "loopback" (127.0.0.1 only: telemetry has no
    # key, so only this host's observers read it) or "host" (its topology.hosts address, for a
    # dashboard on another machine; anyone who reaches the port reads the snapshots)
    telemetry: Literal["loopback", "host"] = "loopback"
    attack: Literal["none", "sign_flip", "gaussian", "inflated_confidence", "stale_replay"] = "none"
    attackers: tuple[int, ...] = ()
    # Per-sender rate limits for every message kind (gossip.runtime.ratelimit): token buckets per
    # (sender, kind), checked before any expensive work; excess frames are dropped and counted as
    # rate_limited. rate_scale multiplies every kind's rate and burst (0: no limits).
    rate_scale: float = field(default=1.0, metadata=_range(0.0))
    # seconds between two answers to one requester's StateRequests (each is the whole model)
    state_answer_interval_s: float = field(default=5.0, metadata=_range(0.0))
    # update_rejected: one line per reason per interval (seconds) with a count; 0: one per frame
    reject_log_interval_s: float = field(default=5.0, metadata=_range(0.0))


@dataclass(frozen=True)
class ExperimentConfig:
    """What ``python -m gossip.experiment`` runs (:mod:`gossip.experiments.plan`); a swarm ignores it.

    ``None`` means "derived from the rest of the config" (resolved by ``plan.settings_from``).
    """

    large_model: str | None = None  # None: model.name
    small_model: str | None = None  # None: model.name
    arms: tuple[Literal["large", "small", "swarm"], ...] = field(default=("large", "small", "swarm"),
                                                                 metadata=_items(1))
    seeds: tuple[int, ...] | None = field(default=None, metadata=_items(1))  # None: (seed,)
    sweep_seeds: tuple[int, ...] | None = field(default=None, metadata=_items(1))  # None: the first seed
    target_accuracy: float | None = field(default=None, metadata=_range(0.0, 1.0, lo_open=True))
    match_tolerance_pts: float = field(default=0.5, metadata=_range(0.0))  # "matches": within this many points
    ensemble: bool = True  # score the swarm's ensemble vote and consensus model
    dashboard: bool = False  # start the web dashboard for swarm arms
    # one swarm run per value: {"link.bandwidth": ("10Gbps", "1Mbps"), "partition": ("dirichlet:0.1",)}
    sweeps: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # overrides for the swarm and sweep arms only (the centralized arms keep the config as it is):
    # {"train.lr": 0.1, "codec.density": 0.003}; any config key, checked like a command-line override
    swarm: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    peers: int = field(default=4, metadata=_range(1, 256))
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    communication: CommunicationConfig = CommunicationConfig()
    distill: DistillConfig = DistillConfig()
    codec: CodecConfig = CodecConfig()
    topology: TopologyConfig = TopologyConfig()
    link: LinkConfig = LinkConfig()
    timeouts: TimeoutConfig = TimeoutConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    dashboard: DashboardConfig = DashboardConfig()
    security: SecurityConfig = SecurityConfig()
    experiment: ExperimentConfig = ExperimentConfig()  # read by gossip.experiments only
