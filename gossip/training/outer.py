"""An outer optimizer on the swarm's averaged deltas (DiLoCo's outer step, made asynchronous).

Under averaging a peer's model moves two ways: its own optimizer's local steps (the *inner*
optimizer, ``train.*``) and the consensus: every delta folded in at 1/N, its own sent deltas
included. With ``communication.outer: nesterov`` the consensus movement is treated as a
pseudo-gradient and goes through Nesterov momentum instead of being added as it is::

    G  = what the fold (and our own sends, at their 1/N) moved the model since the last step
    m  = mu * m + G
    x += lr * (G + mu * m) - G        # the fold already added G; add what the outer step adds

``outer_lr = 1, outer_momentum = 0`` is plain averaging. The gain on a steady movement is
``lr * (1 + mu / (1 - mu))``: DiLoCo's ``lr 0.7, mu 0.9`` (measured there on deltas of 500 inner
steps) multiplies it by 7; here a delta covers ``sync_interval`` steps at most, so that gain
overshoots (README, "Consensus", for the measured effect) and a gain near 1 (e.g. ``lr 0.5,
mu 0.5``) only smooths the consensus in time. The inner steps are never touched, and neither is
the part of a sent delta that leaves our own residual.

One outer step per fold (the training thread folds once per batch, and on every poll while it
waits at the end, so the momentum drains before the final evaluation). The state (``m`` and
the pending ``G``) is checkpointed with the worker; peers' outer states are their own, like
their inner optimizers'.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

# Below this the momentum buffer is drained: the step is skipped (nothing left to carry).
DRAINED = 1e-12


class OuterOptimizer:
    def __init__(self, numel: int, device: torch.device, *, lr: float, momentum: float) -> None:
        self.lr = lr
        self.momentum = momentum
        self.pending = torch.zeros(numel, device=device)  # G since the last step
        self.buf = torch.zeros(numel, device=device)      # m
        self._before = torch.empty(numel, device=device)
        self.steps = 0

    @contextmanager
    def track(self, flat: torch.Tensor) -> Iterator[None]:
        """Whatever changes ``flat`` inside the block is consensus movement (a fold)."""
        self._before.copy_(flat)
        yield
        self.pending.add_(flat).sub_(self._before)

    def add(self, indices: torch.Tensor | None, values: torch.Tensor, weight: float) -> None:
        """Our own sent delta at the weight every neighbour gives it (sparse or dense)."""
        if indices is None:
            self.pending.add_(values.to(self.pending.dtype), alpha=weight)
        else:
            self.pending.index_add_(0, indices.long(), values.to(self.pending.dtype), alpha=weight)

    def step(self, flat: torch.Tensor) -> None:
        """Apply the outer step to what was folded since the last one (in place, no grad)."""
        with torch.no_grad():
            if not self.pending.any() and float(self.buf.abs().max()) < DRAINED:
                return
            self.buf.mul_(self.momentum).add_(self.pending)
            # x += lr * (G + mu * m) - G
            flat.add_(self.pending, alpha=self.lr - 1.0).add_(self.buf, alpha=self.lr * self.momentum)
            self.pending.zero_()
            self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"buf": self.buf.cpu().clone(), "pending": self.pending.cpu().clone(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("buf", "pending"):  # a checkpoint of another model: a one-line error, not a traceback
            if not isinstance(state[key], torch.Tensor) or state[key].shape != self.buf.shape:
                raise ValueError(f"outer optimizer state {key!r} does not fit this model")
        self.buf.copy_(state["buf"])
        self.pending.copy_(state["pending"])
        self.steps = int(state["steps"])


def make_outer(kind: str, numel: int, device: torch.device, *, lr: float, momentum: float) -> OuterOptimizer | None:
    """``communication.outer``: None for ``none`` (plain averaging, no state)."""
    if kind == "none":
        return None
    if kind == "nesterov":
        return OuterOptimizer(numel, device, lr=lr, momentum=momentum)
    raise ValueError(f"unknown communication.outer {kind!r}")
