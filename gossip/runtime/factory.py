"""Building one peer's training side: data shard, model, trainer, worker.

:func:`build_worker` is the one recipe (the same initial weights on every peer: the model is
built under ``seed``; the trainer's data order under ``seed * 1000 + peer_id``), used by
:class:`gossip.runtime.node.Peer` (through :func:`build_peer_worker`, which also loads the
data and picks threads and device) and by the in-process benches and tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from gossip.config import Config
from gossip.observe.log import get_logger
from gossip.protocol.codec import Layout
from gossip.runtime import topology
from gossip.runtime.worker import Worker
from gossip.training.data import Dataset, Split, load_dataset
from gossip.training.models import build_model, count_params
from gossip.training.partition import label_histogram, partition
from gossip.training.recipe import swarm_step
from gossip.training.trainer import Trainer, resolve_device, set_threads

log = get_logger(__name__)


def build_worker(cfg: Config, peer_id: int, dataset: Dataset, shard: torch.Tensor, bridge: Any, *,
                 device: torch.device | None = None) -> Worker:
    """Peer ``peer_id``'s worker, training on ``dataset.train[shard]``, talking through ``bridge``."""
    # the same initial weights on every peer when they average; their own under codistill (diversity)
    torch.manual_seed(cfg.seed if cfg.communication.mode == "average" else cfg.seed * 7919 + 1 + peer_id)
    # the sample batch checks a user's model ("package.module:factory") before training starts
    model = build_model(cfg.model.name, dataset.num_classes, dataset.train.images.shape[1],
                        sample=dataset.train.images[:2])
    split = Split(dataset.train.images[shard], dataset.train.labels[shard])
    step = swarm_step(cfg)  # the per-peer batch and learning rate (training/recipe.py)
    local = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=step.batch_size))
    trainer = Trainer(local, model, split, dataset, device=device or torch.device("cpu"),
                      seed=cfg.seed * 1000 + peer_id, lr_scale=step.lr_factor,
                      gossip_buffers=cfg.communication.bn_stats == "gossip")
    return Worker(cfg, peer_id, trainer, dataset, bridge, Layout.from_shapes(trainer.layout))


def build_peer_worker(cfg: Config, peer_id: int, bridge: Any) -> Worker:
    """What a peer process builds at startup: threads, device, data set, its shard, the worker."""
    hosts_here = sum(topology.host(cfg, p) == topology.host(cfg, peer_id) for p in range(cfg.peers))
    threads = set_threads(cfg.train.threads, hosts_here)
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg.data)
    shards = partition(dataset.train.labels, cfg.peers, cfg.data, cfg.seed)
    idx = shards[peer_id]
    log.info("shard", samples=len(idx),
             label_histogram=label_histogram(dataset.train.labels, idx, dataset.num_classes))
    worker = build_worker(cfg, peer_id, dataset, idx, bridge, device=device)
    log.info("peer_built", model=cfg.model.name, params=count_params(worker.trainer.model), device=str(device),
             threads=threads, neighbours=topology.neighbours(cfg, peer_id),
             steps_per_epoch=worker.trainer.steps_per_epoch)
    return worker
