"""Checkpoints: atomic files, corruption detected, weights_only loading, and an exact resume."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from gossip import config
from gossip.errors import CheckpointError
from gossip.experiments.bench_robust import MemoryBridge, build_worker
from gossip.protocol import wire
from gossip.protocol.codec.dense import encode_dense
from gossip.runtime import checkpoint
from gossip.runtime.bridge import SnapshotOut
from gossip.runtime.checkpoint import Checkpointer
from gossip.runtime.ledger import Ledger
from gossip.runtime.worker import FINISHED
from gossip.sim.attacks import build_update
from gossip.training.data import load_dataset
from gossip.training.partition import partition
from gossip.training.trainer import set_threads


def state(i: int) -> dict:
    return {"format": checkpoint.FORMAT, "i": i, "t": torch.arange(5) * i}


def test_save_keeps_the_newest_k_and_leaves_no_temp_files(tmp_path):
    for epoch in range(1, 5):
        checkpoint.save(tmp_path, epoch, 0, state(epoch), keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt-e0003-s000000.pt", "ckpt-e0004-s000000.pt"]
    path, loaded = checkpoint.latest(tmp_path)
    assert path.name == "ckpt-e0004-s000000.pt" and loaded["i"] == 4
    assert torch.equal(loaded["t"], torch.arange(5) * 4)


def test_mid_epoch_names_sort_in_training_order(tmp_path):
    checkpoint.save(tmp_path, 2, 17, state(1), keep=5)
    checkpoint.save(tmp_path, 2, 100, state(2), keep=5)
    checkpoint.save(tmp_path, 10, 0, state(3), keep=5)
    assert [p.name for p in checkpoint.listing(tmp_path)] == [
        "ckpt-e0002-s000017.pt", "ckpt-e0002-s000100.pt", "ckpt-e0010-s000000.pt"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_a_damaged_checkpoint_is_detected_and_the_previous_one_used(tmp_path, damage):
    checkpoint.save(tmp_path, 1, 0, state(1), keep=3)
    newest = checkpoint.save(tmp_path, 2, 0, state(2), keep=3)
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) - 10] ^= 0x01  # one bit of tensor data: the zip container would not notice
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"not a checkpoint at all" * 10)
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(newest)
    assert str(newest) in str(err.value)
    path, loaded = checkpoint.latest(tmp_path)
    assert path.name == "ckpt-e0001-s000000.pt" and loaded["i"] == 1


def test_all_checkpoints_damaged_is_one_clear_error(tmp_path):
    p = checkpoint.save(tmp_path, 1, 0, state(1), keep=3)
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="all 1 checkpoints .* are unreadable"):
        checkpoint.latest(tmp_path)
    assert checkpoint.latest(tmp_path / "missing") is None


class Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_loading_refuses_pickled_code(tmp_path, monkeypatch):
    """A checkpoint with a valid checksum but a malicious pickle is refused (weights_only)."""
    monkeypatch.chdir(tmp_path)
    payload = pickle.dumps({"format": checkpoint.FORMAT, "x": Boom()}, protocol=2)
    import hashlib
    data = checkpoint.MAGIC + hashlib.sha256(payload).digest() + payload
    with pytest.raises(CheckpointError, match="unreadable payload"):
        checkpoint.decode(data, "evil.pt")
    assert not (tmp_path / "PWNED").exists()


def test_ledger_state_round_trips():
    led = Ledger(0, 3, now=0.0)
    for seq in (0, 1, 2, 5, 7):
        led.first_time(1, seq)
    led.first_time(2, 0)
    copy = Ledger(0, 3, now=0.0)
    copy.load_state_dict(led.state_dict())
    assert not copy.first_time(1, 5) and not copy.first_time(1, 2) and copy.first_time(1, 3)
    assert copy.views[2].floor == 1


def test_seq_lease_is_persisted_ahead_and_only_used_on_resume(tmp_path):
    cfg = config.load(None, [])
    ck = Checkpointer(tmp_path, 3, cfg.checkpoint)
    assert ck.leased == 0
    ck.reserve(0)
    assert ck.leased == checkpoint.SEQ_LEASE
    for seq in range(1, checkpoint.SEQ_LEASE + 3):
        ck.reserve(seq)
    assert ck.leased == 2 * checkpoint.SEQ_LEASE
    assert Checkpointer(tmp_path, 3, cfg.checkpoint, resume=True).leased == 2 * checkpoint.SEQ_LEASE
    assert Checkpointer(tmp_path, 3, cfg.checkpoint).leased == 0  # a fresh run starts at 0


# ---------------------------------------------------------------- exact resume of a real worker

STEPS = 10  # batches per epoch


@pytest.fixture(scope="module")
def setup(data_root):
    cfg = config.load(None, [
        "peers=2", "model.name=mnist_tiny", f"data.limit_train={2 * 32 * STEPS}", "data.limit_test=200",
        "train.epochs=3", "train.batch_size=32", "train.threads=1", "checkpoint.every_epochs=1",
        "checkpoint.keep=5", "codec.density=0.05"])
    set_threads(1)  # more intra-op threads than free cores makes tiny steps crawl
    dataset = load_dataset(cfg.data)
    shards = partition(dataset.train.labels, cfg.peers, cfg.data, cfg.seed)
    return cfg, dataset, shards


class Neighbour(MemoryBridge):
    """Feeds the worker a fixed neighbour update at every third global step, and can ask it to stop."""

    def __init__(self, worker, stop_at=None):
        super().__init__()
        self.worker, self.stop_at = worker, stop_at
        self.limits = wire.Limits(numel=worker.layout.numel, schema_hash=worker.layout.schema_hash,
                                  max_bytes=1 << 26, peers=2)

    def update(self, g):
        rng = np.random.default_rng(g)
        numel = self.worker.layout.numel
        idx = np.sort(rng.choice(numel, 50, replace=False)).astype(np.int64)
        msg = build_update(idx, rng.normal(0, 1e-3, 50).astype(np.float32), numel)
        data = wire.pack_update(msg, node_id=1, seq=g // 3, step=g, epoch=0, confidence=0.5,
                                schema_hash=self.worker.layout.schema_hash)
        return wire.unpack(data, self.limits)

    def drain(self, limit=10_000):
        items = super().drain()
        g = self.worker.progress.global_step
        if g % 3 == 0:
            items.append(self.update(g))  # repeated at the same step: the worker must fold it once
        if self.stop_at is not None and g >= self.stop_at:
            self.stop.set()
        return items

    def wait(self, timeout):
        return MemoryBridge.drain(self) or [FINISHED]


def make(setup, tmp_path, stop_at=None):
    cfg, dataset, shards = setup
    w = build_worker(cfg, 0, dataset, shards[0])
    w.bridge = Neighbour(w, stop_at)
    w.checkpointer = Checkpointer(tmp_path, 0, cfg.checkpoint)
    return w


def sent_updates(worker):
    return {item.seq: item.data for item in worker.bridge.updates()}


def test_resume_from_a_mid_epoch_stop_is_bit_exact(setup, tmp_path):
    straight = make(setup, tmp_path / "a")
    out_a = straight.run()
    assert straight.progress.applied_by_origin[1] == len({g // 3 for g in range(0, 3 * STEPS + 1, 3)})

    first = make(setup, tmp_path / "b", stop_at=STEPS + 4)  # stops in epoch 1
    assert first.run()["stopped"]
    files = [p.name for p in checkpoint.listing(tmp_path / "b" / "checkpoints" / "peer-0")]
    assert files == ["ckpt-e0001-s000000.pt", f"ckpt-e0001-s{5:06d}.pt"]

    resumed = make(setup, tmp_path / "c")
    _, st = checkpoint.latest(tmp_path / "b" / "checkpoints" / "peer-0")
    resumed.start_epoch, resumed.start_step = resumed.load_state_dict(st)
    assert (resumed.start_epoch, resumed.start_step) == (1, 5)
    out_c = resumed.run()

    assert torch.equal(straight.trainer.flat, resumed.trainer.flat)  # model, optimizer, data, RNG, residual
    assert torch.equal(straight.feedback.residual, resumed.feedback.residual)
    assert straight.seq == resumed.seq
    assert out_a["test_accuracy"] == out_c["test_accuracy"]
    a, b, c = sent_updates(straight), sent_updates(first), sent_updates(resumed)
    assert set(b) | set(c) == set(a) and not set(b) & set(c)  # no sequence number reused or skipped
    assert all(a[s] == c[s] for s in c)  # the very same bytes on the wire after the resume
    assert resumed.progress.applied_by_origin == straight.progress.applied_by_origin  # nothing folded twice


def test_resume_from_an_epoch_checkpoint_is_bit_exact(setup, tmp_path):
    straight = make(setup, tmp_path / "a")
    straight.run()
    resumed = make(setup, tmp_path / "b")
    path = tmp_path / "a" / "checkpoints" / "peer-0" / "ckpt-e0002-s000000.pt"
    resumed.start_epoch, resumed.start_step = resumed.load_state_dict(checkpoint.load(path))
    resumed.run()
    assert torch.equal(straight.trainer.flat, resumed.trainer.flat)
    def timeless(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert timeless(straight.progress.history) == timeless(resumed.progress.history)


def test_a_down_peers_shard_is_adopted_and_a_resume_keeps_it(setup, tmp_path):
    """Peer 1 is down: peer 0 trains on its own shard plus peer 1's (the only other live peer),
    and a stop + resume mid-epoch continues bit for bit on that same pool."""
    def down(worker):
        worker.down_peers = lambda: {1}
        return worker

    straight = down(make(setup, tmp_path / "a"))
    straight.run()
    assert straight.adopted == (1,)
    assert len(straight.trainer.labels) == len(setup[2][0]) + len(setup[2][1])
    first = down(make(setup, tmp_path / "b", stop_at=STEPS + 4))
    assert first.run()["stopped"]
    resumed = make(setup, tmp_path / "c")  # nobody down any more, but the resumed epoch keeps its pool
    _, st = checkpoint.latest(tmp_path / "b" / "checkpoints" / "peer-0")
    resumed.start_epoch, resumed.start_step = resumed.load_state_dict(st)
    assert resumed.adopted == (1,)
    resumed.down_peers = lambda: {1}
    resumed.run()
    assert torch.equal(straight.trainer.flat, resumed.trainer.flat)


def test_restore_refuses_another_peer_or_model(setup, tmp_path):
    w = make(setup, tmp_path)
    st = w.state_dict(0, 0)
    other = make(setup, tmp_path)
    other.peer_id = 1
    with pytest.raises(CheckpointError, match="peer 0, not of peer 1"):
        other.load_state_dict(st)
    st["schema_hash"] ^= 1
    with pytest.raises(CheckpointError, match="different model"):
        w.load_state_dict(st)


def test_seq_fill_updates_are_valid_and_empty(setup, tmp_path):
    w = make(setup, tmp_path)
    before = w.trainer.flat.clone()
    assert w.fill_seq_gap(5) == 5 and w.seq == 5
    assert len(w.bridge.updates()) == len(w.bridge.sent) == 5
    for item in w.bridge.updates():
        u = wire.unpack(item.data, w.bridge.limits)
        assert item.reason == "seq_fill" and u.values.numel() == 0 and u.indices.numel() == 0
    assert torch.equal(before, w.trainer.flat)


def same(a, b) -> bool:
    """Deep equality of state dicts (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)  # NaN == NaN here


def test_every_component_state_round_trips_through_the_worker(setup, tmp_path):
    """Worker.state_dict is its components' state dicts; loading it into a fresh worker gives them back."""
    w = make(setup, tmp_path / "a", stop_at=4)
    w.run()
    st = checkpoint.decode(checkpoint.encode(w.state_dict(0, 4)))  # through the file format too
    assert {"trainer", "feedback", "encoder", "trigger", "applied", "policy", "attack", "progress", "seq"} <= set(st)
    fresh = make(setup, tmp_path / "b")
    assert fresh.load_state_dict(st) == (0, 4)
    again = fresh.state_dict(0, 4)
    for key in ("trainer", "feedback", "encoder", "trigger", "applied", "policy", "progress", "position", "seq"):
        assert same(st[key], again[key]), key
    assert w.progress.updates_applied > 0 and fresh.progress.state_dict() == w.progress.state_dict()
    assert fresh.applied.state_dict() == w.applied.state_dict() and fresh.applied.state_dict()[1][0] > 0


def test_a_malformed_worker_state_is_a_checkpoint_error(setup, tmp_path):
    w = make(setup, tmp_path)
    st = w.state_dict(0, 0)
    del st["trigger"]
    with pytest.raises(CheckpointError, match="missing or malformed field"):
        make(setup, tmp_path).load_state_dict(st)


def test_randomk_peers_pick_different_elements_and_resume_exactly(setup, tmp_path):
    """The encoder is seeded by (seed, peer id): two peers' random-k choices differ, a peer's own
    repeat themselves, and a mid-epoch resume is still bit-exact."""
    cfg, dataset, shards = setup
    cfg = config.replace(cfg, ["codec.select=randomk"])

    def worker(peer, path, stop_at=None):
        w = build_worker(cfg, peer, dataset, shards[peer])
        w.bridge = Neighbour(w, stop_at) if peer == 0 else w.bridge
        w.checkpointer = Checkpointer(path, peer, cfg.checkpoint)
        return w

    def first_indices(w):
        x, y = next(iter(w.trainer.batches(0)))
        w.train_batch(x, y, 0)
        w.send_update("test")
        return wire.unpack(w.bridge.updates()[-1].data, w.limits).indices.tolist()

    a0, a1 = first_indices(worker(0, tmp_path / "x")), first_indices(worker(1, tmp_path / "y"))
    assert a0 != a1 and a0 == first_indices(worker(0, tmp_path / "z"))
    straight = worker(0, tmp_path / "a")
    straight.run()
    first = worker(0, tmp_path / "b", stop_at=STEPS + 4)
    assert first.run()["stopped"]
    resumed = worker(0, tmp_path / "c")
    _, st = checkpoint.latest(tmp_path / "b" / "checkpoints" / "peer-0")
    resumed.start_epoch, resumed.start_step = resumed.load_state_dict(st)
    resumed.run()
    assert torch.equal(straight.trainer.flat, resumed.trainer.flat)
    a, c = sent_updates(straight), sent_updates(resumed)
    assert c and all(a[s] == c[s] for s in c)


class Teacher(MemoryBridge):
    """Feeds a codistilling worker a fixed neighbour snapshot every fourth global step."""

    def __init__(self, worker, stop_at=None):
        super().__init__()
        self.worker, self.stop_at = worker, stop_at
        self.limits = wire.Limits(numel=worker.layout.numel, schema_hash=worker.layout.schema_hash,
                                  max_bytes=1 << 26, peers=2)
        self.base = worker.trainer.flat.clone()  # a plausible model: ours at the start, perturbed

    def drain(self, limit=10_000):
        items = super().drain()
        g = self.worker.progress.global_step
        if g % 4 == 0:
            noise = torch.from_numpy(np.random.default_rng(g).normal(0, 0.02, self.base.numel()).astype(np.float32))
            data = wire.pack_snapshot(encode_dense(self.base + noise), node_id=1, version=g // 4, step=g, epoch=0,
                                      schema_hash=self.worker.layout.schema_hash)
            items.append(wire.unpack(data, self.limits))
        if self.stop_at is not None and g >= self.stop_at:
            self.stop.set()
        return items

    def wait(self, timeout):
        return MemoryBridge.drain(self) or [FINISHED]


def test_a_codistilling_worker_resumes_bit_exact_with_its_teachers(setup, tmp_path):
    cfg, dataset, shards = setup
    cfg = config.replace(cfg, ["communication.mode=codistill", "distill.warmup_epochs=0.2",
                               "distill.snapshots_per_epoch=2"])

    def make_cd(where, stop_at=None):
        w = build_worker(cfg, 0, dataset, shards[0])
        w.bridge = Teacher(w, stop_at)
        w.checkpointer = Checkpointer(where, 0, cfg.checkpoint)
        return w

    straight = make_cd(tmp_path / "a")
    straight.run()
    first = make_cd(tmp_path / "b", stop_at=STEPS + 5)  # stops in epoch 1 between snapshots, holding one
    assert first.run()["stopped"] and first.codistill.distiller.teachers
    resumed = make_cd(tmp_path / "c")
    _, st = checkpoint.latest(tmp_path / "b" / "checkpoints" / "peer-0")
    resumed.start_epoch, resumed.start_step = resumed.load_state_dict(st)
    assert set(resumed.codistill.distiller.teachers) == {1}
    resumed.run()
    assert torch.equal(straight.trainer.flat, resumed.trainer.flat)  # the teachers' pull included
    assert straight.codistill.version == resumed.codistill.version
    assert straight.progress.snapshots_applied == resumed.progress.snapshots_applied > 0
    snaps = [i.data for i in straight.bridge.sent if isinstance(i, SnapshotOut)]
    assert snaps and straight.seq == 0  # snapshots out, never a delta
