"""BatchNorm statistics gossiped with the weights (``communication.bn_stats: gossip``).

In process: the running mean/var become views of the trainer's flat vector after the
parameters, a training step moves them there (BN's own update) and the optimizer does not.
Real peers (slow): three processes on loopback train ``cifar_tiny`` (BatchNorm) on a small
MNIST shard; with ``gossip`` their final running statistics agree up to the final flush's
int8 rounding, with ``local`` they are each peer's own and differ many times more.
"""

from __future__ import annotations

import faultkit as fk
import pytest
import torch

from gossip import config
from gossip.runtime import factory
from gossip.runtime.testing import MemoryBridge
from gossip.training.data import Dataset, Split


def tiny_cifar() -> Dataset:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (128,), generator=g)
    return Dataset("cifar10", Split(images, labels), Split(images[:32], labels[:32]), 10, (0.5,) * 3, (0.25,) * 3,
                   False)


def build(mode: str):
    cfg = config.load(None, ["model.name=cifar_tiny", "train.batch_size=32", f"communication.bn_stats={mode}"])
    return factory.build_worker(cfg, 0, tiny_cifar(), torch.arange(128), MemoryBridge())


def test_gossiped_statistics_live_in_the_flat_vector_after_the_parameters():
    local, gossip = build("local"), build("gossip")
    stats = [m for m in gossip.trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    extra = sum(m.running_mean.numel() + m.running_var.numel() for m in stats)
    assert extra > 0 and gossip.layout.numel == local.layout.numel + extra
    assert gossip.layout.schema_hash != local.layout.schema_hash  # peers with the other setting are refused
    assert gossip.trainer.layout[-1][0].endswith("running_var")
    tr = gossip.trainer
    tail = tr.flat[-extra:]
    tail.add_(1.0)  # a fold into the flat vector is a fold into the statistics
    assert torch.allclose(stats[-1].running_var, torch.full_like(stats[-1].running_var, 2.0))
    before = tr.flat.clone()
    x = tr._prepare(tr.images[:32])
    tr.step(x, tr.labels[:32])
    moved = (tr.flat - before)[-extra:]
    assert moved.abs().sum() > 0  # BN's own update, in place, lands in the vector (and so in the delta)
    assert not tr.grad[-extra:].any()  # never a gradient: the optimizer does not move them
    assert local.trainer.flat.numel() == local.layout.numel  # local: the parameters only


def spread(states: list[dict[str, torch.Tensor]]) -> float:
    """Largest difference between two peers' BatchNorm running statistics."""
    keys = [k for k in states[0] if k.endswith(("running_mean", "running_var"))]
    assert keys
    return max(float((s[k] - states[0][k]).abs().max()) for s in states[1:] for k in keys)


@pytest.mark.slow
def test_gossiped_statistics_agree_across_peers_after_the_final_flush(data_root, tmp_path):
    spreads = {}
    for mode in ("gossip", "local"):
        cfg = fk.make_cfg(**{"peers": 3, "model.name": "cifar_tiny", "data.limit_train": 1536, "train.epochs": 1,
                             "checkpoint.save_final": True, "communication.bn_stats": mode})
        run = tmp_path / mode
        _, procs = fk.start_swarm(run, cfg)
        try:
            assert fk.wait_all(procs) == dict.fromkeys(range(3), 0)
        finally:
            fk.kill_all(procs)
        states = [torch.load(run / f"peer-{p}.final.pt", weights_only=True) for p in range(3)]
        spreads[mode] = spread(states)
    print(f"BatchNorm statistics, largest difference between peers: {spreads}")
    assert spreads["gossip"] < 0.05 * spreads["local"], spreads
