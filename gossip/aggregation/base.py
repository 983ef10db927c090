"""The aggregation policy interface: how a peer folds its neighbours' decoded updates in.

Pure math on tensors, no I/O. Every policy (``communication.aggregation``) is a
:class:`Policy`; the runtime (:class:`gossip.runtime.worker.Worker`) drives all of them the
same way and never asks which kind it holds:

* :meth:`Policy.bind_direction` once, with the peer's live error-feedback residual;
* :meth:`Policy.fold` with every batch of updates that arrived since the last training step;
* :meth:`Policy.observe_own` with each update the peer itself sent;
* :meth:`Policy.flush` once at the end of training (whatever is still buffered goes in);
* :meth:`Policy.state_dict` / :meth:`Policy.load_state_dict` for checkpoints.

A per-update policy only implements :meth:`Policy.weights` (one weight per update, ``None``
to reject it); the default :meth:`Policy.fold` adds ``weight × w × delta`` with :func:`apply`.
Windowed policies (:mod:`gossip.aggregation.windowed`) override :meth:`fold` and
:meth:`flush` instead, and their :meth:`weights` raises: asking them for weights would
silently give plain averaging.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from gossip.config import CommunicationConfig
from gossip.protocol.wire import DecodedUpdate

Reject = Callable[[DecodedUpdate], None]


@dataclass(frozen=True)
class Local:
    """What a policy may know about the receiving peer."""

    step: int  # global step of the receiver (epoch * steps_per_epoch + batch)
    confidence: float  # receiver's recent mean max-softmax


def apply(flat: torch.Tensor, update: DecodedUpdate, weight: float) -> None:
    """``flat += weight × delta``, sparse or dense."""
    values = update.values if weight == 1.0 else update.values * weight
    if update.indices is None:
        flat.add_(values.to(flat.device))
    else:
        flat.index_add_(0, update.indices.to(flat.device), values.to(flat.device))


def _ignore(update: DecodedUpdate) -> None:
    return None


class Policy(ABC):
    """One aggregation policy; ``name`` is its ``communication.aggregation`` value.

    Defaults (a stateless per-update policy): :meth:`fold` applies :meth:`weights`,
    :meth:`flush` folds nothing, :meth:`observe_own` and :meth:`bind_direction` ignore
    their argument, :meth:`state_dict` is ``{}``. Failure semantics: a policy never raises
    on a well-formed update (the wire has validated it); it rejects (``weights`` → ``None``)
    or limits it and counts that in :attr:`stats`. Misuse raises: :meth:`load_state_dict`
    with state this policy cannot hold raises ``ValueError``.
    """

    name: ClassVar[str]

    def __init__(self, cfg: CommunicationConfig) -> None:
        self.cfg = cfg
        self.stats: dict[str, int] = {}  # what the policy did (logged as robust_summary at the end)

    @abstractmethod
    def weights(self, updates: Sequence[DecodedUpdate], local: Local) -> list[float | None]:
        """One weight per update (``None``: reject it, keep local)."""

    def fold(self, flat: torch.Tensor, updates: Sequence[DecodedUpdate], local: Local,
             weight: float = 1.0, reject: Reject = _ignore) -> int:
        """Fold ``updates`` into ``flat`` (``weight``: the runtime's mixing factor, 1/peers).

        Calls ``reject`` for every update refused outright; returns how many were folded in
        now (a windowed policy: the sender rows of the windows it closed).
        """
        if not updates:
            return 0
        folded = 0
        for update, w in zip(updates, self.weights(updates, local), strict=True):
            if w is None:
                reject(update)
                continue
            apply(flat, update, w * weight)
            folded += 1
        return folded

    def flush(self, flat: torch.Tensor, weight: float | None = None) -> int:
        """Fold in whatever is still buffered (end of training); returns the rows folded."""
        return 0

    def observe_own(self, update: DecodedUpdate, numel: int) -> None:
        """Our own update, as the neighbours decode it (a policy may keep it as a reference)."""
        return None  # default: nothing kept

    def bind_direction(self, residual: torch.Tensor) -> None:
        """Our error-feedback residual (read live, never written): a reference for judging updates."""
        return None  # default: not needed

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (plain values and tensors: ``weights_only``-safe)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"aggregation policy {self.name!r} holds no state, got keys {sorted(state)}")
