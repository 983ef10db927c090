"""Local training for one model: batches, step, evaluate, checkpoint state. No networking.

Read it top to bottom: :class:`Trainer` sets every hyperparameter from
``cfg.train`` in one block (with units), flattens the model's parameters into one
fp32 buffer, and runs plain SGD (Nesterov momentum, decoupled-from-bias weight
decay) on that buffer under a per-step learning-rate schedule.

The flat buffer is the contract with the swarm runtime: ``trainer.flat`` holds
every trainable parameter, ``model.parameters()`` are views into it in the order
of ``trainer.layout``, and the optimizer updates ``trainer.flat`` in place. So a
neighbour's sparse delta applied with ``trainer.flat.index_add_(...)`` between two
steps is immediately part of the model and of the next optimizer step.

Tuning guide (per ``train.*`` key):

* ``lr``: peak learning rate of the schedule, for the mean loss over a batch.
  With ``batch_size`` b, scale it roughly linearly with b around the tuned value.
* ``schedule``: ``onecycle`` = linear warm-up from lr/10 over ``warmup_epochs``
  then linear decay to 0 at the last step (best for short runs); ``cosine`` =
  linear warm-up from 0 then cosine to 0; ``constant`` = warm-up then flat
  (for open-ended swarm runs).
* ``label_smoothing``: 0.1-0.2 helps CIFAR in few epochs; keep 0 for MNIST.
* ``weight_decay``: L2 on weights only (matrices/filters), not on biases or norms.
* ``threads``: torch CPU threads; 0 = fair share of the cores between the peers
  on this host (see :func:`set_threads`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gossip.config import Config
from gossip.errors import CheckpointError, ConfigError
from gossip.observe.log import get_logger
from gossip.training.data import Dataset, Split, normalize, random_crop_flip
from gossip.training.models import count_macs

log = get_logger(__name__)

CROP_PAD = 4  # pixels of random translation for augmented (CIFAR-like) data


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def set_threads(n: int, peers_on_host: int = 1) -> int:
    """Set torch's intra-op threads: ``n`` if > 0, else this peer's fair share of the cores."""
    threads = n if n > 0 else max(1, available_cores() // max(1, peers_on_host))
    torch.set_num_threads(threads)
    return threads


@dataclass
class StepStats:
    loss: float  # training loss of the batch (with label smoothing)
    confidence: float  # mean max-softmax probability over the batch
    grad_norm: float  # L2 norm of the whole gradient before the optimizer step
    batch_size: int
    skipped: bool = False  # the loss or gradient was not finite: the weights did not move


NON_FINITE_WARN_EVERY = 100  # a skipped step warns on the 1st, then every 100th (the count keeps them all)


def warn_non_finite(skipped: int, stats: StepStats, **where: Any) -> None:
    """``step_non_finite`` for the ``skipped``-th step :meth:`Trainer.step` skipped, if it is one to tell."""
    if skipped == 1 or skipped % NON_FINITE_WARN_EVERY == 0:
        log.warning("step_non_finite", **where, loss=stats.loss, grad_norm=stats.grad_norm, skipped=skipped)


def _mix(seed: int, epoch: int) -> int:
    """A well-spread 63-bit generator seed for (seed, epoch)."""
    return (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (2**63)


def _bn_stats(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The BatchNorm layers' running mean and variance (floating buffers), in module order."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for attr in ("running_mean", "running_var"):
                buf = getattr(m, attr)
                if buf is not None:
                    out.append((f"{name}.{attr}" if name else attr, buf))
    return out


class Trainer:
    def __init__(self, cfg: Config, model: nn.Module, train: Split, dataset: Dataset, *,
                 device: torch.device, seed: int, lr_scale: float = 1.0, gossip_buffers: bool = False) -> None:
        t = cfg.train
        # ---- hyperparameters, all from cfg.train -------------------------------------------------
        self.epochs = t.epochs                      # passes over this trainer's split
        self.batch_size = t.batch_size              # samples per step (the last batch may be smaller)
        self.peak_lr = t.lr * lr_scale              # learning rate at the top of the schedule
        self.momentum = t.momentum                  # SGD momentum coefficient
        self.nesterov = t.nesterov
        self.weight_decay = t.weight_decay          # L2 coefficient, weights only
        self.label_smoothing = t.label_smoothing    # 0..1 of the target mass spread over classes
        self.schedule = t.schedule                  # constant | cosine | onecycle
        self.eval_batch_size = t.eval_batch_size    # samples per forward pass in evaluate()
        self.crop_pad = CROP_PAD if dataset.augment else 0  # pixels; 0 = no crop/flip augmentation
        # -----------------------------------------------------------------------------------------
        if len(train) == 0:
            raise ConfigError("data: this trainer's training split is empty")
        self.device, self.seed, self.dataset = device, seed, dataset
        self.steps_per_epoch = math.ceil(len(train) / self.batch_size)
        self.total_steps = self.epochs * self.steps_per_epoch
        self.warmup_steps = round(t.warmup_epochs * self.steps_per_epoch)
        self.step_count = 0  # optimizer steps taken: the schedule position

        # Data lives on the training device once; batches are gathered from it.
        self.images = self.own_images = train.images.to(device)
        self.labels = self.own_labels = train.labels.to(device)
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(dataset.mean, device=device).view(shape)
        self.std = torch.tensor(dataset.std, device=device).view(shape)

        # CUDA: bf16 autocast (no loss scaling needed) + cuDNN autotuning. CPU: fp32.
        cuda = device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
        if cuda:
            torch.backends.cudnn.benchmark = True
        # channels_last inputs: faster convolutions on oneDNN (CPU, measured ~1.3x) and on tensor cores.
        self.memory_format = torch.channels_last

        # ---- flat parameter buffer: params become views into it, in layout order ----------------
        # With gossip_buffers the BatchNorm running mean/var follow the parameters in the flat
        # vector (views too; BN updates them in place): their changes then travel with the deltas,
        # so the peers average them like weights. The optimizer never moves them (zero gradient).
        self.model = model.to(device)
        params = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        stats = _bn_stats(self.model) if gossip_buffers else []
        self.layout: list[tuple[str, tuple[int, ...]]] = [(name, tuple(p.shape)) for name, p in (*params, *stats)]
        numel = sum(p.numel() for _, p in (*params, *stats))
        self.flat = torch.zeros(numel, dtype=torch.float32, device=device)
        self.grad = torch.zeros_like(self.flat)  # autograd accumulates straight into views of this
        self.decay_mask = torch.zeros_like(self.flat)  # 1 where weight decay applies
        offset = 0
        for _, p in params:
            n = p.numel()
            self.flat[offset:offset + n].copy_(p.detach().reshape(-1))
            p.data = self.flat[offset:offset + n].view(p.shape)
            p.grad = self.grad[offset:offset + n].view(p.shape)
            if p.dim() > 1:
                self.decay_mask[offset:offset + n] = 1.0
            offset += n
        for name, b in stats:
            n = b.numel()
            self.flat[offset:offset + n].copy_(b.detach().reshape(-1))
            owner, _, attr = name.rpartition(".")
            self.model.get_submodule(owner)._buffers[attr] = self.flat[offset:offset + n].view(b.shape)
            offset += n
        self.velocity = torch.zeros_like(self.flat)  # SGD momentum buffer
        # A forward pass moves the BatchNorm running statistics before the loss is known: a skipped
        # step (see step) puts them back from this copy, taken before each forward (a few KB).
        self._bn = [b for _, b in _bn_stats(self.model)]
        self._bn_before = [b.clone() for b in self._bn]
        self.model.train()
        self.macs = count_macs(self.model, tuple(train.images.shape[1:]))  # per sample, one forward pass
        log.info("trainer_ready", params=numel, tensors=len(params), train_samples=len(train), peak_lr=self.peak_lr,
                 macs=self.macs,
                 steps_per_epoch=self.steps_per_epoch, device=str(device), amp=str(self.amp_dtype),
                 threads=torch.get_num_threads())

    # ---- schedule ---------------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based); flat at the end value past the end."""
        peak, warm = self.peak_lr, self.warmup_steps
        total = max(self.total_steps, warm + 1)
        step = min(step, total - 1)
        if step < warm:
            start = peak / 10 if self.schedule == "onecycle" else 0.0
            return start + (peak - start) * (step + 1) / warm
        if self.schedule == "constant":
            return peak
        frac = (step - warm) / (total - warm)  # 0 at the peak, -> 1 at the end
        if self.schedule == "cosine":
            return peak * 0.5 * (1 + math.cos(math.pi * frac))
        return peak * (1 - frac)

    # ---- data -------------------------------------------------------------------------------------

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images, self.mean, self.std)
        return x.contiguous(memory_format=self.memory_format)

    def set_extra(self, extra: Split | None) -> None:
        """Train on this split's samples too (a down peer's share), or on the own split only (None).

        Steps per epoch stay as they are, so the schedule and the data position of checkpoints
        keep their meaning: an epoch then draws its batches from a random subset of the pool.
        """
        if extra is None or len(extra) == 0:
            self.images, self.labels = self.own_images, self.own_labels
            return
        self.images = torch.cat([self.own_images, extra.images.to(self.device)])
        self.labels = torch.cat([self.own_labels, extra.labels.to(self.device)])

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's (inputs, labels) batches: the same for the same (seed, epoch) and pool."""
        gen = torch.Generator().manual_seed(_mix(self.seed, epoch))
        order = torch.randperm(len(self.labels), generator=gen).to(self.device)
        for i in range(self.steps_per_epoch):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = normalize(self.images[idx], self.mean, self.std)
            if self.crop_pad:
                x = random_crop_flip(x, self.crop_pad, gen)
            yield x.contiguous(memory_format=self.memory_format), self.labels[idx]

    # ---- one optimizer step -----------------------------------------------------------------------

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def step(self, x: torch.Tensor, y: torch.Tensor,
             extra: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> StepStats:
        """Forward, backward, SGD update of ``self.flat``, advance the schedule. ``extra(logits, x)``:
        a loss term added to the cross-entropy (codistillation's, gossip.training.distill)."""
        self.grad.zero_()
        for saved, buf in zip(self._bn_before, self._bn, strict=True):
            saved.copy_(buf)
        with self._autocast():
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
            if extra is not None:
                loss = loss + extra(logits, x)
        loss.backward()
        with torch.no_grad():
            grad_norm = torch.linalg.vector_norm(self.grad)
            confidence = logits.detach().float().softmax(dim=1).amax(dim=1).mean()
        # One host sync per step, as before, but ahead of the update: a NaN or inf taken into the
        # weights stays there (every later loss is NaN, the encoder drops every delta), so such a
        # step (a corrupt sample, an overflow) is skipped whole: weights, momentum and BatchNorm
        # statistics stay. The schedule still advances: it counts batches, and checkpoints resume
        # by data position.
        loss_v, conf_v, norm_v = torch.stack([loss.detach(), confidence, grad_norm]).tolist()
        finite = math.isfinite(loss_v) and math.isfinite(norm_v)
        with torch.no_grad():
            if finite:
                self._sgd(self.lr_at(self.step_count))
            else:
                for saved, buf in zip(self._bn_before, self._bn, strict=True):
                    buf.copy_(saved)
        self.step_count += 1
        return StepStats(loss_v, conf_v, norm_v, int(y.shape[0]), skipped=not finite)

    def _sgd(self, lr: float) -> None:
        g = self.grad
        if self.weight_decay:
            g.addcmul_(self.flat, self.decay_mask, value=self.weight_decay)
        self.velocity.mul_(self.momentum).add_(g)
        update = g.add_(self.velocity, alpha=self.momentum) if self.nesterov else self.velocity
        self.flat.add_(update, alpha=-lr)

    # ---- evaluation -------------------------------------------------------------------------------

    def _logits(self, split: Split) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), self._autocast():
                for i in range(0, len(split), self.eval_batch_size):
                    x = self._prepare(split.images[i:i + self.eval_batch_size].to(self.device))
                    y = split.labels[i:i + self.eval_batch_size].to(self.device)
                    yield self.model(x).float(), y
        finally:
            self.model.train(was_training)

    def evaluate(self, split: Split) -> dict[str, float]:
        """Accuracy (0..1) and mean cross-entropy (no smoothing) of the current weights on ``split``."""
        correct, loss_sum = 0.0, 0.0
        for logits, y in self._logits(split):
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(dim=1) == y).sum())
        n = max(1, len(split))
        return {"accuracy": correct / n, "loss": loss_sum / n}

    def predict_proba(self, split: Split) -> torch.Tensor:
        """Softmax probabilities [N, classes] on CPU (for ensembles of peers)."""
        return torch.cat([logits.softmax(dim=1).cpu() for logits, _ in self._logits(split)])

    def recalibrate_bn(self, batches: int) -> int:
        """Re-estimate BatchNorm running statistics for the current weights; returns the layers reset.

        A swarm averages weights but each peer's running mean/var were accumulated along its own
        trajectory, on its own shard: after the final flush they no longer match the weights. This
        forward-only pass (no gradient, no weight change) over ``batches`` local training batches
        replaces them with the cumulative statistics of the final weights (``momentum=None``).
        """
        layers = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                  and m.track_running_stats]
        if not layers or batches <= 0:
            return 0
        saved = [m.momentum for m in layers]
        was_training = self.model.training
        gen = torch.Generator().manual_seed(_mix(self.seed, 1 << 20))
        order = torch.randperm(len(self.labels), generator=gen).to(self.device)
        try:
            for m in layers:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the recalibration batches
            self.model.train()
            with torch.no_grad(), self._autocast():
                for i in range(min(batches, self.steps_per_epoch)):
                    idx = order[i * self.batch_size:(i + 1) * self.batch_size]
                    if len(idx) == 0:
                        break
                    self.model(self._prepare(self.images[idx]))
        finally:
            for m, momentum in zip(layers, saved, strict=True):
                m.momentum = momentum
            self.model.train(was_training)
        return len(layers)

    # ---- checkpoints ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "layout": list(self.layout),
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": {"velocity": self.velocity.cpu().clone()},
            "schedule": {"step": self.step_count},
            "rng": rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            layout = [(str(n), tuple(s)) for n, s in state["layout"]]
            if layout != self.layout:
                raise CheckpointError("checkpoint: parameter layout differs from this model")
            self.model.load_state_dict(state["model"])  # copies in place: params stay views of flat
            self.velocity.copy_(state["optimizer"]["velocity"])
            self.step_count = int(state["schedule"]["step"])
            torch.set_rng_state(state["rng"]["torch"])
            if "cuda" in state["rng"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint: incompatible trainer state ({type(exc).__name__}: {exc})") from None
