"""The swarm's step (training/recipe.py): global batch and learning-rate rules reach the trainer."""

from __future__ import annotations

import math

import pytest
import torch

from gossip import config
from gossip.errors import ConfigError
from gossip.runtime import factory
from gossip.runtime.testing import MemoryBridge
from gossip.training.data import Dataset, Split
from gossip.training.recipe import swarm_step


def cfg(*overrides: str) -> config.Config:
    return config.load(None, ["peers=4", "train.batch_size=64", "train.lr=0.1", *overrides])


def test_default_keeps_the_per_peer_batch_and_the_learning_rate():
    step = swarm_step(cfg())
    assert (step.batch_size, step.lr_factor, step.effective_batch) == (64, 1.0, 256)


def test_global_batch_divides_the_batch_between_peers():
    step = swarm_step(cfg("communication.global_batch=true"))
    assert (step.batch_size, step.effective_batch, step.lr_factor) == (16, 64, 1.0)
    # the learning-rate rule then has nothing to scale: the effective batch is the centralized one
    assert swarm_step(cfg("communication.global_batch=true", "communication.lr_rule=linear")).lr_factor == 1.0


@pytest.mark.parametrize(("rule", "factor"), [("none", 1.0), ("linear", 4.0), ("sqrt", 2.0)])
def test_learning_rate_rules_scale_with_the_effective_batch(rule: str, factor: float):
    step = swarm_step(cfg(f"communication.lr_rule={rule}", "communication.lr_scale=1.5"))
    assert math.isclose(step.lr_factor, 1.5 * factor)


def test_a_single_peer_is_the_centralized_recipe():
    step = swarm_step(cfg("peers=1", "communication.global_batch=true", "communication.lr_rule=linear"))
    assert (step.batch_size, step.lr_factor) == (64, 1.0)


def test_the_worker_trains_with_the_swarm_step():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (512, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (512,), generator=g)
    dataset = Dataset("mnist", Split(images, labels), Split(images[:64], labels[:64]), 10, (0.5,), (0.5,), False)
    shard = torch.arange(128)
    plain = factory.build_worker(cfg("model.name=mnist_tiny"), 0, dataset, shard, MemoryBridge())
    glob = factory.build_worker(cfg("model.name=mnist_tiny", "communication.global_batch=true"), 0, dataset, shard,
                                MemoryBridge())
    lin = factory.build_worker(cfg("model.name=mnist_tiny", "communication.lr_rule=linear"), 0, dataset, shard,
                               MemoryBridge())
    assert (plain.trainer.batch_size, plain.trainer.steps_per_epoch) == (64, 2)
    assert (glob.trainer.batch_size, glob.trainer.steps_per_epoch) == (16, 8)
    assert math.isclose(lin.trainer.peak_lr, 4 * plain.trainer.peak_lr)


def test_bn_recalibration_replaces_the_running_statistics_with_the_final_weights_ones():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (256,), generator=g)
    dataset = Dataset("cifar10", Split(images, labels), Split(images[:32], labels[:32]), 10, (0.5,) * 3,
                      (0.25,) * 3, False)
    worker = factory.build_worker(cfg("model.name=cifar_tiny", "train.batch_size=32"), 0, dataset,
                                  torch.arange(256), MemoryBridge())
    tr = worker.trainer
    bn = next(m for m in tr.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean.fill_(5.0)  # stale statistics, as after averaging
    bn.running_var.fill_(9.0)
    weights = tr.flat.clone()
    assert tr.recalibrate_bn(4) > 0
    assert torch.equal(tr.flat, weights)  # statistics only, never the weights
    assert bn.running_mean.abs().max() < 5.0 and not torch.allclose(bn.running_var, torch.full_like(bn.running_var, 9.0))
    assert bn.momentum == 0.1 and bn.num_batches_tracked == 4  # momentum restored; cumulative over 4 batches
    before = bn.running_mean.clone()
    tr.recalibrate_bn(4)
    assert torch.allclose(bn.running_mean, before)  # the same batches: the same estimate
    assert tr.recalibrate_bn(0) == 0


def test_a_fixed_peer_batch_scales_the_learning_rate_with_the_swarm():
    for peers, factor in ((4, 1.0), (16, 2.0)):
        step = swarm_step(cfg(f"peers={peers}", "communication.peer_batch=16", "communication.lr_rule=sqrt"))
        assert (step.batch_size, step.effective_batch) == (16, 16 * peers)
        assert math.isclose(step.lr_factor, factor)
    with pytest.raises(ConfigError, match="peer_batch"):
        cfg("communication.peer_batch=16", "communication.global_batch=true")
