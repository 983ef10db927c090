"""A step whose loss or gradient is NaN or infinite is skipped: the peer keeps its model (Trainer.step)."""
from __future__ import annotations

import math

import torch

from gossip import config
from gossip.runtime import factory
from gossip.runtime.testing import MemoryBridge
from gossip.training.data import load_dataset
from gossip.training.partition import partition
from gossip.training.trainer import set_threads


def _worker(*overrides: str):  # type: ignore[no-untyped-def]
    set_threads(1)
    cfg = config.load(None, ["peers=2", "model.name=cifar_tiny", "data.limit_train=256", "data.limit_test=100",
                             "train.batch_size=32", "communication.sync_interval=3", *overrides])
    ds = load_dataset(cfg.data)
    shard = partition(ds.train.labels, 2, cfg.data, cfg.seed)[0]
    return factory.build_worker(cfg, 0, ds, shard, MemoryBridge())


def _bn(tr) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    return [b.clone() for name, b in tr.model.named_buffers() if name.endswith(("running_mean", "running_var"))]


def test_a_nan_sample_costs_one_batch_not_the_run(data_root):
    w = _worker()
    tr = w.trainer
    batches = iter(tr.batches(0))
    x, y = next(batches)
    assert w.train_batch(x, y, 0) > 0  # one good step first: momentum and statistics are not zero
    flat, velocity, bn = tr.flat.clone(), tr.velocity.clone(), _bn(tr)
    residual = w.feedback.residual.clone()
    since = w.trigger.batches_since_sync
    assert bn, "cifar_tiny has BatchNorm: the test must cover its statistics"

    bad = x.clone()
    bad[3, 0, 5, 5] = float("nan")  # one corrupt pixel in one sample
    loss = w.train_batch(bad, y, 1)

    assert math.isnan(loss)
    assert torch.equal(tr.flat, flat) and torch.equal(tr.velocity, velocity)  # no step, no momentum step
    assert all(torch.equal(a, b) for a, b in zip(_bn(tr), bn, strict=True))  # the forward's statistics undone
    assert torch.equal(w.feedback.residual, residual)  # no delta
    assert w.trigger.batches_since_sync == since  # the trigger saw nothing (its averages stay finite)
    assert w.progress.non_finite_steps == 1 and w.progress.global_step == 2  # the position still moves
    assert tr.step_count == 2  # and so does the schedule

    x2, y2 = next(batches)
    loss2 = w.train_batch(x2, y2, 2)
    assert math.isfinite(loss2) and not torch.equal(tr.flat, flat)  # training goes on
    assert torch.isfinite(tr.flat).all() and all(torch.isfinite(b).all() for b in _bn(tr))
    assert w.progress.state_dict()["non_finite_steps"] == 1  # kept across a restart


def test_an_infinite_loss_is_skipped_too(data_root):
    """Not only NaN: a loss term that overflows (here codistillation-style ``extra``) skips the step."""
    w = _worker()
    tr = w.trainer
    x, y = next(iter(tr.batches(0)))
    flat = tr.flat.clone()
    stats = tr.step(x, y, extra=lambda logits, _x: logits.sum() * float("inf"))
    assert stats.skipped and not math.isfinite(stats.loss)
    assert torch.equal(tr.flat, flat)
    stats = tr.step(x, y)
    assert not stats.skipped and not torch.equal(tr.flat, flat)
