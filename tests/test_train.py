"""Trainer: flat parameter buffer, optimizer on views, deterministic batches, schedule, checkpoints."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from gossip import config
from gossip.errors import CheckpointError, ConfigError
from gossip.training.data import Dataset, Split
from gossip.training.trainer import StepStats, Trainer, resolve_device, set_threads

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: one thread is fastest, and immune to a busy machine's thread contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _split(n: int, size: int, seed: int) -> Split:
    """Three classes told apart by which third of the image is bright."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=gen)
    images = torch.randint(0, 60, (n, 1, size, size), generator=gen, dtype=torch.uint8)
    third = size // 3
    for i, c in enumerate(labels.tolist()):
        images[i, 0, :, c * third:(c + 1) * third] += 150
    return Split(images, labels)


def _dataset(n: int = 100, size: int = 12, augment: bool = False, seed: int = 0) -> Dataset:
    return Dataset("synthetic", _split(n, size, seed), _split(40, size, seed + 1), 3, (0.3,), (0.3,), augment)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
    )


def _cfg(*overrides: str) -> config.Config:
    base = ["train.batch_size=16", "train.lr=0.1", "train.epochs=2", "train.warmup_epochs=0",
            "train.schedule=constant", "train.weight_decay=0.001"]
    return config.load(None, base + list(overrides))


def _trainer(cfg: config.Config | None = None, ds: Dataset | None = None, seed: int = 0) -> Trainer:
    ds = ds or _dataset()
    return Trainer(cfg or _cfg(), _model(), ds.train, ds, device=CPU, seed=seed)


# ---------------------------------------------------------------- the flat buffer


def test_params_are_views_into_flat_in_layout_order() -> None:
    tr = _trainer()
    params = list(tr.model.named_parameters())
    assert [(n, tuple(p.shape)) for n, p in params] == tr.layout
    assert tr.flat.numel() == sum(p.numel() for _, p in params) and tr.flat.dtype == torch.float32
    offset = 0
    for _, p in params:
        assert p.data_ptr() == tr.flat.data_ptr() + offset * 4
        assert p.grad is not None and p.grad.data_ptr() == tr.grad.data_ptr() + offset * 4
        offset += p.numel()
    # Writing into flat changes the model itself.
    bias = dict(tr.model.named_parameters())["5.bias"]
    tr.flat[-3:] = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(bias.detach(), torch.tensor([1.0, 2.0, 3.0]))


def _reference_sgd(model: nn.Module, cfg: config.Config) -> torch.optim.SGD:
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": cfg.train.weight_decay},
                            {"params": rest, "weight_decay": 0.0}],
                           lr=cfg.train.lr, momentum=cfg.train.momentum, nesterov=cfg.train.nesterov)


def test_step_matches_torch_sgd_and_keeps_working_after_flat_edits() -> None:
    cfg = _cfg()
    tr = _trainer(cfg)
    ref = _model()
    opt = _reference_sgd(ref, cfg)
    batches = list(tr.batches(0))[:4]
    delta = torch.linspace(-0.01, 0.01, tr.flat.numel())
    for i, (x, y) in enumerate(batches):
        if i == 2:  # a neighbour's delta lands in flat between two steps (the swarm runtime does this)
            tr.flat.add_(delta)
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(
                    torch.nn.utils.parameters_to_vector(ref.parameters()) + delta, ref.parameters())
        logits = ref(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        grad_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ref.parameters()]))
        confidence = logits.softmax(1).amax(1).mean()
        opt.step()
        stats = tr.step(x, y)
        assert isinstance(stats, StepStats) and stats.batch_size == len(y)
        assert stats.loss == pytest.approx(loss.item(), rel=1e-5)
        assert stats.grad_norm == pytest.approx(grad_norm.item(), rel=1e-4)
        assert stats.confidence == pytest.approx(confidence.item(), rel=1e-5)
        assert 1 / 3 <= stats.confidence <= 1
    expected = torch.nn.utils.parameters_to_vector(ref.parameters()).detach()
    assert torch.allclose(tr.flat, expected, atol=1e-6)


def test_training_learns() -> None:
    tr = _trainer(_cfg("train.epochs=8", "train.schedule=onecycle", "train.warmup_epochs=1"))
    before = tr.evaluate(tr.dataset.test)
    for epoch in range(tr.epochs):
        for x, y in tr.batches(epoch):
            tr.step(x, y)
    after = tr.evaluate(tr.dataset.test)
    assert after["accuracy"] >= 0.9 > before["accuracy"] or after["accuracy"] == 1.0
    assert after["loss"] < before["loss"]
    proba = tr.predict_proba(tr.dataset.test)
    assert proba.shape == (40, 3)
    assert torch.allclose(proba.sum(1), torch.ones(40))
    acc = (proba.argmax(1) == tr.dataset.test.labels).float().mean().item()
    assert acc == pytest.approx(after["accuracy"])
    assert tr.model.training  # evaluate() puts train mode back


# ---------------------------------------------------------------- batches


def test_batches_cover_the_split_once_and_are_deterministic() -> None:
    ds = _dataset(n=37)
    tr = _trainer(ds=ds)
    assert tr.steps_per_epoch == math.ceil(37 / 16) == 3
    epoch0 = list(tr.batches(0))
    assert [len(y) for _, y in epoch0] == [16, 16, 5]  # nothing dropped
    assert torch.equal(torch.cat([y for _, y in epoch0]).sort().values, ds.train.labels.sort().values)
    seen = torch.cat([x for x, _ in epoch0])
    expected = (ds.train.images.float() / 255 - 0.3) / 0.3
    assert torch.allclose(seen.sum(), expected.sum(), rtol=1e-4)  # the same samples, normalised
    again = list(_trainer(ds=ds).batches(0))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch0, again, strict=True))
    other_epoch = list(tr.batches(1))
    other_seed = list(_trainer(ds=ds, seed=1).batches(0))
    assert not torch.equal(epoch0[0][1], other_epoch[0][1]) or not torch.equal(epoch0[0][0], other_epoch[0][0])
    assert not torch.equal(epoch0[0][0], other_seed[0][0])


def test_augmented_batches_are_deterministic_and_vary_by_epoch() -> None:
    ds = _dataset(n=32, augment=True)
    a = [x for x, _ in _trainer(ds=ds).batches(3)]
    b = [x for x, _ in _trainer(ds=ds).batches(3)]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    plain = [x for x, _ in _trainer(ds=_dataset(n=32, augment=False)).batches(3)]
    assert not all(torch.equal(u, v) for u, v in zip(a, plain, strict=True))  # crops/flips applied


def test_a_shard_trains() -> None:
    ds = _dataset(n=100)
    idx = torch.arange(0, 100, 4)
    shard = Split(ds.train.images[idx], ds.train.labels[idx])
    tr = Trainer(_cfg(), _model(), shard, ds, device=CPU, seed=0)
    assert tr.steps_per_epoch == 2
    assert sum(len(y) for _, y in tr.batches(0)) == 25


def test_extra_samples_join_the_pool_without_changing_the_epoch_length() -> None:
    ds = _dataset(n=40)
    own = Split(ds.train.images[:20], ds.train.labels[:20])
    extra = Split(ds.train.images[20:], ds.train.labels[20:] + 100)  # labels marked to tell them apart
    tr = Trainer(_cfg(), _model(), own, ds, device=CPU, seed=0)
    before = list(tr.batches(0))
    tr.set_extra(extra)
    assert tr.steps_per_epoch == 2  # the schedule keeps its length
    drawn = torch.cat([y for _, y in tr.batches(0)])
    assert len(drawn) == 32 and bool((drawn >= 100).any()) and bool((drawn < 100).any())
    tr.set_extra(None)
    after = list(tr.batches(0))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(before, after, strict=True))


# ---------------------------------------------------------------- schedule


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_lr_schedules(schedule: str) -> None:
    tr = _trainer(_cfg(f"train.schedule={schedule}", "train.warmup_epochs=1", "train.epochs=4"))
    spe, total, peak = tr.steps_per_epoch, tr.total_steps, 0.1
    lrs = [tr.lr_at(s) for s in range(total + 3)]
    assert lrs[spe - 1] == pytest.approx(peak)  # end of warm-up
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:spe - 1], lrs[1:spe], strict=True))  # warm-up rises
    if schedule == "constant":
        assert lrs[-1] == pytest.approx(peak)
    else:
        assert lrs[total - 1] < 0.1 * peak  # near zero at the end
        assert all(a >= b - 1e-12 for a, b in zip(lrs[spe:total - 1], lrs[spe + 1:total], strict=True))
        assert lrs[total + 2] == lrs[total - 1]  # flat past the end
    if schedule == "onecycle":
        assert lrs[0] > peak / 10 - 1e-9


# ---------------------------------------------------------------- checkpoints


def _run_steps(tr: Trainer, epoch: int, start: int, count: int) -> list[float]:
    losses = []
    for i, (x, y) in enumerate(tr.batches(epoch)):
        if start <= i < start + count:
            losses.append(tr.step(x, y).loss)
    return losses


def test_state_dict_round_trip_resumes_exactly() -> None:
    cfg = _cfg("train.schedule=onecycle", "train.warmup_epochs=0.5")
    ds = _dataset(augment=True)
    a = _trainer(cfg, ds)
    _run_steps(a, 0, 0, 3)
    state = copy.deepcopy(a.state_dict())
    losses_a = _run_steps(a, 0, 3, 3)

    b = _trainer(cfg, ds)
    b.load_state_dict(state)
    assert b.step_count == 3
    losses_b = _run_steps(b, 0, 3, 3)
    assert losses_a == losses_b
    assert torch.equal(a.flat, b.flat)
    assert torch.equal(a.velocity, b.velocity)
    bn_a, bn_b = a.model[1], b.model[1]
    assert torch.equal(bn_a.running_mean, bn_b.running_mean)  # buffers travel too
    # Loading kept the parameters as views into flat.
    assert next(b.model.parameters()).data_ptr() == b.flat.data_ptr()


def test_incompatible_state_is_a_checkpoint_error() -> None:
    tr = _trainer()
    state = tr.state_dict()
    state["layout"] = [("other", (1,))]
    with pytest.raises(CheckpointError, match="layout"):
        tr.load_state_dict(state)
    with pytest.raises(CheckpointError):
        tr.load_state_dict({"layout": tr.layout})


# ---------------------------------------------------------------- devices and threads


def test_set_threads_fair_share() -> None:
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        cores = len(__import__("os").sched_getaffinity(0))
        assert set_threads(0) == cores
        assert set_threads(0, peers_on_host=cores * 4) == 1
        assert set_threads(0, peers_on_host=2) == max(1, cores // 2)
    finally:
        torch.set_num_threads(before)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="^device:"):
            resolve_device("cuda")


def test_empty_split_is_rejected() -> None:
    ds = _dataset()
    empty = Split(ds.train.images[:0], ds.train.labels[:0])
    with pytest.raises(ConfigError):
        Trainer(_cfg(), _model(), empty, ds, device=CPU, seed=0)
