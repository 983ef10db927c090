"""Simulated attackers: well-formed lies on the wire, an honest model at home."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gossip import config
from gossip.protocol import wire
from gossip.protocol.codec import ErrorFeedback, Layout, decode_update, make_encoder
from gossip.runtime import checkpoint
from gossip.sim import attacks

SHAPES = [("conv.weight", (16, 1, 5, 5)), ("conv.bias", (16,)), ("fc.weight", (10, 400)), ("fc.bias", (10,))]
LAYOUT = Layout.from_shapes(SHAPES)
LIMITS = wire.Limits(numel=LAYOUT.numel, schema_hash=LAYOUT.schema_hash, max_bytes=1 << 24, peers=8)


def cfg(attack: str, attackers=(1,)):
    return config.load(None, [f"security.attack={attack}", f"security.attackers={list(attackers)}", "peers=8"])


def honest_update(seed: int = 0):
    """A real encoder's update of a random residual (sparse top-k plus dense small tensors, int8)."""
    ef = ErrorFeedback(LAYOUT.numel)
    ef.add(torch.from_numpy(np.random.default_rng(seed).normal(0, 1, LAYOUT.numel).astype(np.float32)))
    return make_encoder(config.load(None, ["codec.density=0.05"]).codec, LAYOUT).encode(ef).msg


def on_the_wire(msg, step=5, confidence=0.4):
    data = wire.pack_update(msg, node_id=1, seq=0, step=step, epoch=0, confidence=confidence,
                            schema_hash=LAYOUT.schema_hash)
    return wire.unpack(data, LIMITS)  # every forged update must pass the receiver's validation


def test_honest_peers_and_attack_none_get_no_attack():
    assert attacks.make_attack(cfg("none"), 1, LAYOUT) is None
    assert attacks.make_attack(cfg("sign_flip"), 0, LAYOUT) is None
    assert attacks.make_attack(cfg("sign_flip"), 1, LAYOUT) is not None


def test_build_update_round_trips_sparse_and_dense():
    idx = np.array([0, 7, 500, LAYOUT.numel - 1])
    u = on_the_wire(attacks.build_update(idx, np.array([1.0, -2.0, 3.5, 4.0]), LAYOUT.numel))
    assert u.indices.tolist() == idx.tolist() and u.values.tolist() == [1.0, -2.0, 3.5, 4.0]
    dense = on_the_wire(attacks.build_update(None, np.arange(LAYOUT.numel, dtype=np.float32), LAYOUT.numel))
    assert dense.indices is None and torch.equal(dense.values, torch.arange(LAYOUT.numel, dtype=torch.float32))


def test_sign_flip_sends_minus_four_times_the_honest_update():
    msg = honest_update()
    idx, vals = decode_update(msg, LAYOUT.numel)
    forged, step, conf = attacks.make_attack(cfg("sign_flip"), 1, LAYOUT).forge(msg, step=5, confidence=0.4)
    u = on_the_wire(forged, step, conf)
    assert u.indices.tolist() == idx.tolist()
    assert np.allclose(u.values.numpy(), -attacks.SIGN_FLIP_SCALE * vals)
    assert (step, conf) == (5, 0.4)


def test_inflated_confidence_claims_certainty_and_boosts():
    msg = honest_update()
    _, vals = decode_update(msg, LAYOUT.numel)
    forged, _, conf = attacks.make_attack(cfg("inflated_confidence"), 1, LAYOUT).forge(msg, step=5, confidence=0.4)
    u = on_the_wire(forged, confidence=conf)
    assert u.confidence == 1.0 and np.allclose(u.values.numpy(), attacks.INFLATE_SCALE * vals)


def test_gaussian_is_dense_noise_of_the_honest_scale():
    msg = honest_update()
    _, vals = decode_update(msg, LAYOUT.numel)
    forged, _, _ = attacks.make_attack(cfg("gaussian"), 1, LAYOUT).forge(msg, step=5, confidence=0.4)
    u = on_the_wire(forged)
    assert u.indices is None and u.values.numel() == LAYOUT.numel
    rms = float(np.sqrt(np.mean(vals.astype(np.float64) ** 2)))
    assert float(u.values.std()) == pytest.approx(attacks.GAUSSIAN_STD_FACTOR * rms, rel=0.05)
    assert float(u.values.norm()) > 2 * float(np.linalg.norm(vals))


def test_stale_replay_records_then_replays_with_old_steps():
    attack = attacks.make_attack(cfg("stale_replay"), 1, LAYOUT)
    pool = []
    for i in range(attacks.REPLAY_POOL):
        msg = honest_update(i)
        forged, step, _ = attack.forge(msg, step=i, confidence=0.5)
        assert forged is msg and step == i  # honest while recording
        pool.append(decode_update(msg, LAYOUT.numel))
    for i in range(2 * attacks.REPLAY_POOL):
        forged, step, _ = attack.forge(honest_update(100 + i), step=1000 + i, confidence=0.5)
        u = on_the_wire(forged, step)
        old_idx, old_vals = pool[i % attacks.REPLAY_POOL]
        assert step == i % attacks.REPLAY_POOL and u.step == step
        assert u.indices.tolist() == old_idx.tolist() and np.allclose(u.values.numpy(), old_vals)


@pytest.mark.parametrize("kind", ["gaussian", "stale_replay"])
def test_attack_state_survives_a_checkpoint(kind):
    a = attacks.make_attack(cfg(kind), 1, LAYOUT)
    for i in range(attacks.REPLAY_POOL + 2):
        a.forge(honest_update(i), step=i, confidence=0.5)
    state = checkpoint.decode(checkpoint.encode({"format": checkpoint.FORMAT, "attack": a.state_dict()}))
    b = attacks.make_attack(cfg(kind), 1, LAYOUT)
    b.load_state_dict(state["attack"])
    msg = honest_update(99)
    fa, sa, _ = a.forge(msg, step=50, confidence=0.5)
    fb, sb, _ = b.forge(msg, step=50, confidence=0.5)
    assert sa == sb and fa.SerializeToString() == fb.SerializeToString()


def test_an_attacker_keeps_its_own_model_honest(data_root):
    """The worker applies the honest update to itself and puts the forged one on the wire."""
    from gossip.experiments.bench_robust import build_worker
    from gossip.training.data import load_dataset
    from gossip.training.partition import partition
    from gossip.training.trainer import set_threads

    set_threads(1)
    c = config.load(None, ["peers=2", "model.name=mnist_tiny", "data.limit_train=256", "data.limit_test=100",
                           "security.attack=sign_flip", "security.attackers=[0]", "train.batch_size=32"])
    ds = load_dataset(c.data)
    shards = partition(ds.train.labels, 2, c.data, c.seed)
    liar, twin = build_worker(c, 0, ds, shards[0]), build_worker(c, 0, ds, shards[0])
    twin.encoder, twin.attack = twin.encoder.inner, None  # the same peer, honest
    assert liar.attack is not None
    x, y = next(iter(liar.trainer.batches(0)))
    for w in (liar, twin):
        w.train_batch(x, y, 0)
        w.send_update("test")
    assert torch.equal(liar.trainer.flat, twin.trainer.flat)  # its own model is the honest one
    told, truth = (wire.unpack(w.bridge.sent[-1].data, w.limits) for w in (liar, twin))
    assert torch.equal(told.indices, truth.indices)
    assert torch.allclose(told.values, -attacks.SIGN_FLIP_SCALE * truth.values)
