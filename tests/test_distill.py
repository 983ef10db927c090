"""Codistillation (communication.mode: codistill): snapshots on the wire, teachers, the term, a swarm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ports import free_port_block

from gossip import config
from gossip._proto import gossip_pb2 as pb
from gossip.errors import ProtocolError
from gossip.protocol import wire
from gossip.protocol.codec.dense import encode_dense
from gossip.runtime import factory
from gossip.runtime.bridge import SnapshotOut
from gossip.runtime.testing import MemoryBridge
from gossip.training.data import load_dataset
from gossip.training.distill import Distiller
from gossip.training.models import build_model
from gossip.training.partition import partition

ROOT = Path(__file__).resolve().parent.parent
NUMEL = 500
LIMITS = wire.Limits(numel=NUMEL, schema_hash=7, max_bytes=1 << 20, peers=3)


def snapshot(weights: pb.GradUpdate, *, node_id: int = 1, from_id: int | None = None, schema_hash: int = 7) -> bytes:
    data = wire.pack_snapshot(weights, node_id=node_id, version=0, step=1, epoch=0, schema_hash=schema_hash)
    return data if from_id is None else wire.relay(data, from_id=from_id)


def reason(data: bytes) -> str:
    with pytest.raises(ProtocolError) as err:
        wire.unpack(data, LIMITS)
    return err.value.reason


def test_a_snapshot_round_trips_within_the_int8_error_and_hostile_ones_are_refused_with_a_reason():
    v = torch.randn(NUMEL)
    got = wire.unpack(snapshot(encode_dense(v)), LIMITS)
    assert isinstance(got, wire.Snapshot) and got.values.shape == (NUMEL,)
    assert float((got.values - v).abs().max()) <= float(v.abs().max()) / 127  # chunk scale / 2 at most, x2 slack
    nan = encode_dense(v, "fp32")
    nan.values = torch.full((NUMEL,), float("nan")).numpy().tobytes()
    assert reason(snapshot(nan)) == "non_finite"
    bad_scale = encode_dense(v)
    bad_scale.scales[0] = float("inf")
    assert reason(snapshot(bad_scale)) == "bad_scale"
    assert reason(snapshot(encode_dense(torch.randn(NUMEL + 3)))) == "schema_mismatch"  # another model's shape
    assert reason(snapshot(encode_dense(v), schema_hash=8)) == "schema_mismatch"
    partial = encode_dense(torch.randn(NUMEL - 10))
    partial.numel = NUMEL  # one segment that leaves 10 elements out
    assert reason(snapshot(partial)) == "bad_segment"
    sparse = encode_dense(v)
    sparse.count = 3
    assert reason(snapshot(sparse)) == "bad_field"


def tiny_distiller(**distill: float) -> tuple[Distiller, torch.nn.Module, torch.Tensor]:
    cfg = config.load(None, ["communication.mode=codistill", *(f"distill.{k}={v}" for k, v in distill.items())])
    model = build_model("mnist_tiny", 10, 1)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return Distiller(cfg, model, flat, steps_per_epoch=100), model, flat


def test_teachers_are_refused_when_stale_empty_or_huge_and_dropped_when_not_refreshed():
    d, _, flat = tiny_distiller(stale_epochs=1.0)
    assert d.offer(1, 0, 10, flat.clone(), now_step=0) is None and set(d.teachers) == {1}
    assert d.offer(1, 0, 10, flat.clone(), now_step=1) == "stale_snapshot"  # the same version again
    assert d.offer(2, 0, 10, torch.zeros_like(flat), now_step=1) == "empty_snapshot"
    assert d.offer(2, 0, 10, flat * 1e6, now_step=1) == "norm_bound"  # 1e6 x our own norm
    assert d.offer(2, 1, 10, flat * 2, now_step=1) is None
    assert d.refused == {"stale_snapshot": 1, "empty_snapshot": 1, "norm_bound": 1} and d.applied == 2
    assert d.forget_stale(now_step=100) == [] and d.forget_stale(now_step=102) == [1, 2] and not d.teachers  # a down neighbour stops teaching


def test_the_weight_warms_up_and_the_checkpoint_holds_the_teachers():
    d, _, flat = tiny_distiller(warmup_epochs=0.5, weight=2.0)
    assert (d.weight_at(0), d.weight_at(25), d.weight_at(50), d.weight_at(80)) == (0.0, 1.0, 2.0, 2.0)
    assert d.term(60) is None  # no teacher yet
    d.offer(2, 3, 40, flat * 0.5, now_step=44)
    again, _, _ = tiny_distiller(warmup_epochs=0.5, weight=2.0)
    again.load_state_dict(d.state_dict())
    t = again.teachers[2]
    assert (t.version, t.step, t.received_at) == (3, 40, 44)
    x = torch.randn(8, 1, 28, 28)
    assert torch.allclose(t.model(x), d.teachers[2].model(x))


def test_the_term_pulls_the_student_towards_its_teachers():
    """One step with a teacher that is sure of class 3 raises the student's class-3 probability
    more than the same step without the term: a term that is ignored fails this."""
    _, model, _ = tiny_distiller()
    teacher = build_model("mnist_tiny", 10, 1)
    with torch.no_grad():
        for p in teacher.parameters():
            p.zero_()
        last = list(teacher.parameters())[-1]  # the output bias
        last[3] = 10.0
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))

    def p3_after(weight: float) -> float:
        d, student, flat = tiny_distiller(weight=weight, warmup_epochs=0.0)
        student.load_state_dict(model.state_dict())
        d.offer(1, 0, 0, torch.cat([p.detach().reshape(-1) for p in teacher.parameters()]), now_step=0)
        opt = torch.optim.SGD(student.parameters(), lr=0.1)
        logits = student(x)
        term = d.term(10)
        loss = torch.nn.functional.cross_entropy(logits, y) + (term(logits, x) if term else 0.0)
        loss.backward()
        opt.step()
        with torch.no_grad():
            return float(student(x).softmax(dim=1)[:, 3].mean())

    assert p3_after(1.0) > p3_after(0.0) + 0.01


def worker_set(data_root: Path, weight: float, steps: int) -> list:
    """Three codistilling workers in lock step on real MNIST shards, snapshots ferried through wire bytes."""
    cfg = config.load(None, ["peers=3", "model.name=mnist_tiny", "data.limit_train=3000", "data.limit_test=500",
                             "train.batch_size=32", "communication.mode=codistill", f"distill.weight={weight}",
                             "distill.warmup_epochs=0", "distill.snapshots_per_epoch=8", f"data.root={data_root}"])
    dataset = load_dataset(cfg.data)
    shards = partition(dataset.train.labels, cfg.peers, cfg.data, cfg.seed)
    bridges = [MemoryBridge() for _ in range(3)]
    workers = [factory.build_worker(cfg, p, dataset, shards[p], bridges[p]) for p in range(3)]
    limits = wire.Limits(numel=workers[0].layout.numel, schema_hash=workers[0].layout.schema_hash,
                         max_bytes=1 << 24, peers=3)
    batches = [list(w.trainer.batches(0)) for w in workers]
    for step in range(steps):
        for p, w in enumerate(workers):
            w.take(bridges[p].drain())
            w.train_batch(*batches[p][step], step)
        for p, b in enumerate(bridges):
            for item in [i for i in b.sent if isinstance(i, SnapshotOut)]:
                for q in range(3):
                    if q != p:
                        bridges[q].to_thread(wire.unpack(item.data, limits))
            b.sent.clear()
    return [workers, dataset]


def test_distillation_changes_the_trajectory_towards_the_teachers(data_root):
    """Same seeds, shards and batches; only distill.weight differs. With the term each student
    ends closer (KL on test images) to the mean of the teachers it holds than without it."""
    (alone, dataset), (taught, _) = worker_set(data_root, 0.0, 30), worker_set(data_root, 3.0, 30)

    def gap(w) -> float:
        teachers = [t.model for t in w.codistill.distiller.teachers.values()]
        assert len(teachers) == 2  # every neighbour's snapshot arrived as a teacher
        student = w.trainer.predict_proba(dataset.test)
        saved = w.trainer.model
        probs = []
        for t in teachers:
            w.trainer.model = t
            probs.append(w.trainer.predict_proba(dataset.test))
        w.trainer.model = saved
        target = torch.stack(probs).mean(dim=0)
        return float(torch.nn.functional.kl_div(student.clamp_min(1e-8).log(), target, reduction="batchmean"))

    assert not torch.allclose(alone[0].trainer.flat, taught[0].trainer.flat)  # only the term differs
    assert not torch.allclose(alone[0].trainer.flat, alone[1].trainer.flat)  # each its own model
    assert all(w.progress.snapshots_applied > 0 for w in taught)
    assert sum(gap(w) for w in taught) < 0.8 * sum(gap(w) for w in alone)


@pytest.mark.slow
def test_a_codistilling_swarm_of_real_peers_keeps_diverse_models_and_sends_snapshots_only(
        data_root, tmp_path):
    base = free_port_block(8)
    small = ["model.name=mnist_tiny", "train.epochs=1", "data.limit_train=6000", "data.limit_test=1000", "checkpoint.save_final=true",
             "device=cpu", f"data.root={data_root}", f"topology.base_port={base}",
             f"dashboard.telemetry_port={base + 4}"]
    runs = {}
    for mode in ("average", "codistill"):
        out = subprocess.run([sys.executable, "-m", "gossip.launch", str(ROOT / "configs/mnist_4peers.yaml"),
                              "--run-dir", str(tmp_path / mode), "--no-dashboard", f"communication.mode={mode}",
                              *small], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-1500:] + out.stderr[-1500:]
        runs[mode] = [json.loads((tmp_path / mode / f"peer-{p}.result.json").read_text()) for p in range(4)]
    co = runs["codistill"]
    assert all(r["snapshots_applied"] >= 3 for r in co) and all(r["updates_sent"] == 0 for r in co)
    finals = [torch.load(tmp_path / "codistill" / f"peer-{p}.final.pt") for p in range(4)]
    key = next(iter(finals[0]))
    assert not torch.equal(finals[0][key], finals[1][key])  # not averaged into one model
    assert all(r["test_accuracy"] > 0.5 for r in co)  # 1,500 samples each, one epoch: learning, not there
    numel = sum(v.numel() for v in finals[0].values() if v.dtype.is_floating_point and v.dim() > 0)
    for r in co:  # what it sent is its snapshots (int8: a byte per weight) to 3 neighbours, plus the chatter
        assert r["snapshots_sent"] >= 3 * 3 and 0.9 < r["bytes_sent"] / (r["snapshots_sent"] * numel) < 1.3
