"""communication.outer (gossip/training/outer.py): the outer Nesterov step on the consensus movement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gossip import config
from gossip.errors import ConfigError
from gossip.protocol import wire
from gossip.runtime import factory
from gossip.runtime.testing import MemoryBridge
from gossip.sim.attacks import build_update
from gossip.training.data import Dataset, Split
from gossip.training.outer import OuterOptimizer, make_outer


def test_plain_settings_are_plain_averaging():
    outer = OuterOptimizer(4, torch.device("cpu"), lr=1.0, momentum=0.0)
    flat = torch.zeros(4)
    for _ in range(3):
        with outer.track(flat):
            flat += torch.tensor([1.0, 0.0, 2.0, 0.0])
        outer.step(flat)
    assert torch.equal(flat, torch.tensor([3.0, 0.0, 6.0, 0.0]))


def test_nesterov_follows_its_formula_and_drains():
    lr, mu = 0.7, 0.9
    outer = OuterOptimizer(2, torch.device("cpu"), lr=lr, momentum=mu)
    flat, g = torch.zeros(2), torch.tensor([1.0, -1.0])
    with outer.track(flat):
        flat += g
    outer.step(flat)
    m = g.clone()
    assert torch.allclose(flat, lr * (g + mu * m))
    outer.add(torch.tensor([0]), torch.tensor([2.0]), 0.25)  # our own sent delta at its 1/N
    outer.step(flat)  # nothing folded: the own part and the momentum still move the model
    g2 = torch.tensor([0.5, 0.0])
    m = mu * m + g2
    assert torch.allclose(flat, lr * (g + mu * g) + (lr * (g2 + mu * m) - g2))
    for _ in range(400):  # no movement any more: the momentum decays and the steps stop
        outer.step(flat)
    assert float(outer.buf.abs().max()) < 1e-12 and outer.steps < 2 + 400


def test_none_builds_nothing_and_bad_settings_are_one_line_errors():
    assert make_outer("none", 3, torch.device("cpu"), lr=0.7, momentum=0.9) is None
    with pytest.raises(ConfigError, match="outer"):
        config.load(None, ["communication.outer=adam"])
    with pytest.raises(ConfigError, match="outer_momentum"):
        config.load(None, ["communication.outer_momentum=1.0"])
    with pytest.raises(ConfigError, match="outer_lr"):
        config.load(None, ["communication.outer_lr=0"])


def worker(*overrides: str):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (256, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (256,), generator=g)
    dataset = Dataset("mnist", Split(images, labels), Split(images[:64], labels[:64]), 10, (0.5,), (0.5,), False)
    cfg = config.load(None, ["peers=4", "model.name=mnist_tiny", "communication.norm_bound=0", *overrides])
    return factory.build_worker(cfg, 0, dataset, torch.arange(256), MemoryBridge())


def update(w, seq: int, value: float) -> wire.DecodedUpdate:
    msg = build_update(np.arange(0, 50, 5, dtype=np.int64), np.full(10, value, dtype=np.float32), w.layout.numel)
    data = wire.pack_update(msg, node_id=1, seq=seq, step=seq, epoch=0, confidence=0.5,
                            schema_hash=w.layout.schema_hash)
    return wire.unpack(data, w.limits)


def test_the_outer_step_changes_the_trajectory_and_is_checkpointed():
    plain, outer = worker(), worker("communication.outer=nesterov")
    assert plain.outer is None and outer.outer is not None
    start = plain.trainer.flat.clone()
    assert torch.equal(start, outer.trainer.flat)
    for seq in range(3):
        for w in (plain, outer):
            w.fold_in([update(w, seq, 0.4)])
    moved_plain = plain.trainer.flat - start
    moved_outer = outer.trainer.flat - start
    assert torch.allclose(moved_plain[:50:5], torch.full((10,), 3 * 0.4 / 4))  # 3 updates at 1/N
    assert moved_outer[:50:5].min() > 1.5 * moved_plain[:50:5].max()  # the momentum carries it further
    assert torch.equal(moved_outer[1:50:5], torch.zeros(10))  # only what was folded moves
    state = outer.state_dict(0, 0)
    assert state["outer"]["steps"] == 3
    again = worker("communication.outer=nesterov")
    again.load_state_dict(state)
    assert torch.equal(again.outer.buf, outer.outer.buf) and again.outer.steps == 3
