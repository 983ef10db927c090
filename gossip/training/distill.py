"""Codistillation: every peer keeps its own model and learns from its neighbours' predictions.

Averaging deltas turns a swarm into one model; under ``communication.mode: codistill`` the
peers stay different (each starts from its own initial weights and trains on its own shard)
and the swarm's answer is their ensemble (:mod:`gossip.experiments.ensemble`). Each peer
fits, besides its labels, the mean prediction of its neighbours' models on the *same* batch
(Anil et al. 2018, "Large scale distributed neural network training through online
distillation"; Deep Mutual Learning, Zhang et al. 2018)::

    loss = CE(student(x), y) + w(t) * T^2 * KL( mean_k softmax(teacher_k(x) / T) || softmax(student(x) / T) )

The teachers are the neighbours' latest model snapshots (``ModelSnapshot`` on the wire,
``distill.snapshots_per_epoch`` per peer per epoch), run here without gradients. Tuning guide:

* ``distill.weight`` (1.0, as in Deep Mutual Learning): how much the peers pull towards each
  other. 0 is independent training (an ensemble of strangers); large values make the peers
  agree, which is the averaging swarm's failure (the ensemble stops adding anything).
* ``distill.temperature`` (1.0): above 1 spreads the teachers' mass over the wrong classes
  ("dark knowledge"); the T^2 factor keeps the gradient scale independent of it.
* ``distill.warmup_epochs`` (0.5): the weight ramps from 0, because young teachers know
  nothing worth copying ("burn-in" in Anil et al.).
* ``distill.snapshots_per_epoch`` (4): bytes per epoch = this x parameters x 1 byte (int8)
  x neighbours, per peer. Staler teachers (fewer snapshots) were enough in Anil et al.
* ``distill.stale_epochs`` (2): a teacher not refreshed for this many of our epochs (a
  neighbour that went down) is dropped; until then its last snapshot keeps teaching.

Teachers run in training mode (their BatchNorm layers normalise with the batch's own
statistics), so a snapshot carries the parameters only. A snapshot whose L2 norm exceeds
``communication.norm_bound`` x our own model's norm, or that is all zeros, is refused with a
counted reason: one hostile teacher must not dictate our targets (and its weight is at most
1/neighbours of the distillation term anyway). The teachers' weights, versions and ages are in
the peer's checkpoint (:meth:`Distiller.state_dict`), so a resumed peer learns from the same.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gossip.config import Config
from gossip.observe.log import get_logger

log = get_logger(__name__)


@dataclass
class Teacher:
    model: nn.Module
    version: int  # the sender's snapshot counter
    step: int  # the sender's global step at the snapshot
    received_at: int  # our global step when it arrived


class Distiller:
    """The teachers of one peer and the distillation term (module docstring)."""

    def __init__(self, cfg: Config, model: nn.Module, flat: torch.Tensor, steps_per_epoch: int) -> None:
        d = cfg.distill
        self.temperature = d.temperature
        self.weight = d.weight
        self.warmup_steps = max(0, round(d.warmup_epochs * steps_per_epoch))
        self.stale_steps = max(1, round(d.stale_epochs * steps_per_epoch))
        self.norm_bound = cfg.communication.norm_bound
        self.every = max(1, round(steps_per_epoch / d.snapshots_per_epoch))  # batches between snapshots
        self._template = model
        self._flat = flat
        self.teachers: dict[int, Teacher] = {}
        self.refused: dict[str, int] = {}
        self.applied = 0  # snapshots taken as teachers

    # ------------------------------------------------------------ snapshots in
    def offer(self, sender: int, version: int, step: int, values: torch.Tensor, now_step: int) -> str | None:
        """Take a neighbour's snapshot as its teacher; the refusal reason, or None when taken."""
        old = self.teachers.get(sender)
        if old is not None and version <= old.version:
            return self._refuse("stale_snapshot")  # reordered or repeated: we hold a newer one
        norm = float(torch.linalg.vector_norm(values))
        own = float(torch.linalg.vector_norm(self._flat))
        if not math.isfinite(norm) or norm == 0.0:
            return self._refuse("empty_snapshot")
        if self.norm_bound > 0 and own > 0 and norm > self.norm_bound * own:
            return self._refuse("norm_bound")
        teacher = old.model if old is not None else self._new_model()
        _load_flat(teacher, values.to(self._flat.device))
        self.teachers[sender] = Teacher(teacher, version, step, now_step)
        self.applied += 1
        return None

    def _refuse(self, reason: str) -> str:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return reason

    def _new_model(self) -> nn.Module:
        model = copy.deepcopy(self._template)
        for p in model.parameters():
            p.requires_grad_(False)
        model.train()  # batch statistics: a snapshot carries no BatchNorm buffers
        return model

    def forget_stale(self, now_step: int) -> list[int]:
        """Drop the teachers not refreshed for ``distill.stale_epochs``; returns whose."""
        gone = [p for p, t in self.teachers.items() if now_step - t.received_at > self.stale_steps]
        for p in gone:
            del self.teachers[p]
            log.info("teacher_dropped", peer=p, reason="stale")
        return gone

    # ------------------------------------------------------------ the term
    def weight_at(self, step: int) -> float:
        if self.warmup_steps == 0:
            return self.weight
        return self.weight * min(1.0, step / self.warmup_steps)

    def term(self, step: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """The extra loss for ``Trainer.step`` at global step ``step``, or None (no teacher yet,
        or still warming up from 0)."""
        w = self.weight_at(step)
        if w == 0.0 or not self.teachers:
            return None
        models = [t.model for t in self.teachers.values()]
        temp = self.temperature

        def extra(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                target = torch.stack([(m(x).float() / temp).softmax(dim=1) for m in models]).mean(dim=0)
            student = F.log_softmax(logits.float() / temp, dim=1)
            return w * temp * temp * F.kl_div(student, target, reduction="batchmean")

        return extra

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, object]:
        return {"teachers": {p: {"flat": _flat_of(t.model).cpu(), "version": t.version, "step": t.step,
                                 "received_at": t.received_at} for p, t in self.teachers.items()},
                "refused": dict(self.refused), "applied": self.applied}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.teachers = {}
        teachers = state.get("teachers", {})
        assert isinstance(teachers, dict)
        for p, t in teachers.items():
            model = self._new_model()
            _load_flat(model, t["flat"].to(self._flat.device))
            self.teachers[int(p)] = Teacher(model, int(t["version"]), int(t["step"]), int(t["received_at"]))
        refused = state.get("refused", {})
        self.refused = dict(refused) if isinstance(refused, dict) else {}
        applied = state.get("applied", 0)
        self.applied = int(applied) if isinstance(applied, int) else 0


def _params(model: nn.Module) -> list[nn.Parameter]:
    return list(model.parameters())  # the trainer's layout order (named_parameters, all trainable)


def _load_flat(model: nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in _params(model):
            n = p.numel()
            p.copy_(flat[offset:offset + n].view_as(p))
            offset += n


def _flat_of(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in _params(model)])
