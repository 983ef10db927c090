"""The default bound on any one update's influence, whatever the policy (``communication.norm_bound``).

The worker passes every batch of neighbour updates through :meth:`NormBound.admit` before the
policy folds them in. An update whose L2 norm exceeds ``norm_bound ×`` the reference is
rejected (reason ``norm_bound``); the reference is the smaller of

* its sender's running median norm (once that sender has ``WARMUP`` accepted updates), and
* the swarm's: the median over senders (ourselves included) of each one's running median, so
  one sender, however fast it sends, moves it by one vote only.

Before a sender has a history it is judged by the swarm's alone, whose first entries are our
own updates' norms (:meth:`NormBound.observe_own`). Before anything is known (no update sent,
none accepted) the reference is our live error-feedback residual's norm (a neighbour's update
is a part of a residual like ours); while that is still zero (no step taken yet) updates are
held and judged at the next batch, never applied unjudged.

A sender's first final update (the dense residual flush at the end, much longer than a sparse
update) is judged by its root-mean-square value against the same statistics of RMS values
instead: an element of the leftover residual is no larger than the elements selected before.
A second final from one sender is judged like any other update.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

from gossip.config import CommunicationConfig
from gossip.protocol.wire import DecodedUpdate

HISTORY = 32  # accepted norms kept per sender (and of our own updates)
WARMUP = 3    # a sender's own median counts once it has this many accepted updates
OWN = -1      # the key of our own updates in the histories
HELD_MAX = 4096  # updates held for want of any reference; beyond that they are judged as they come

Rejected = Callable[[DecodedUpdate, str], None]


def _median(history: deque[float]) -> float:
    return statistics.median(history)


class NormBound:
    """Rejects an update far larger than the running norms of accepted ones (module docstring)."""

    def __init__(self, cfg: CommunicationConfig) -> None:
        self.factor = cfg.norm_bound
        self.norms: dict[int, deque[float]] = {}  # sender (OWN: us) -> accepted L2 norms
        self.rms: dict[int, deque[float]] = {}    # sender -> accepted RMS values (norm / sqrt(nnz))
        self.finals: set[int] = set()             # senders whose final update was judged by RMS
        self.held: list[DecodedUpdate] = []
        self.residual: torch.Tensor | None = None
        self.peak = 0.0  # largest norm / limit among accepted updates (how close honest ones come)
        self.stats = {"norm_bound": 0, "norm_checked": 0}

    def bind(self, residual: torch.Tensor) -> None:
        """Our error-feedback residual (read live, never written): the reference before any other."""
        self.residual = residual

    def admit(self, updates: Sequence[DecodedUpdate], reject: Rejected) -> list[DecodedUpdate]:
        """The updates to fold in now: held ones first, then ``updates``; ``reject`` gets the others."""
        if self.factor <= 0:
            return list(updates)
        pending, self.held = [*self.held, *updates], []
        admitted: list[DecodedUpdate] = []
        for u in pending:
            verdict = self._judge(u)
            if verdict is None:
                self.held.append(u)
            elif verdict:
                admitted.append(u)
            else:
                self.stats["norm_bound"] += 1
                reject(u, "norm_bound")
        return admitted

    def observe_own(self, u: DecodedUpdate) -> None:
        """One of our own sent updates (as the neighbours decode it): the first reference of all."""
        if not u.final and u.values.numel() > 0:
            self._record(OWN, *self._size(u))

    def _judge(self, u: DecodedUpdate) -> bool | None:
        """True: accept (and record), False: reject, None: nothing to judge it by yet."""
        if u.values.numel() == 0:
            return True  # an empty update (a seq fill) adds nothing
        norm, rms = self._size(u)
        by_rms = u.final and u.node_id not in self.finals
        value, ref = (rms, self._reference(self.rms, u.node_id)) if by_rms else \
            (norm, self._reference(self.norms, u.node_id))
        if ref is None and self.residual is not None:
            ref = float(self.residual.norm())  # the dense residual: compared by L2 norm
            value = norm
        if ref is None or ref <= 0.0:
            if len(self.held) < HELD_MAX:
                return None
            ref = math.inf  # a full hold: judged as they come, by nothing (never lost)
        self.stats["norm_checked"] += 1
        limit = self.factor * ref
        if not math.isfinite(value) or value > limit:
            return False
        if by_rms:
            self.finals.add(u.node_id)
        else:
            self._record(u.node_id, norm, rms)
        if math.isfinite(limit) and limit > 0:
            self.peak = max(self.peak, value / limit)
        return True

    @staticmethod
    def _size(u: DecodedUpdate) -> tuple[float, float]:
        norm = float(u.values.float().norm())
        return norm, norm / math.sqrt(u.values.numel())

    def _record(self, sender: int, norm: float, rms: float) -> None:
        self.norms.setdefault(sender, deque(maxlen=HISTORY)).append(norm)
        self.rms.setdefault(sender, deque(maxlen=HISTORY)).append(rms)

    @staticmethod
    def _reference(histories: dict[int, deque[float]], sender: int) -> float | None:
        """min(sender's median once warmed up, median of every sender's median); None: no history."""
        medians = [_median(h) for h in histories.values() if h]
        if not medians:
            return None
        ref = statistics.median(medians)
        own = histories.get(sender)
        if own is not None and len(own) >= WARMUP:
            ref = min(ref, _median(own))
        return ref

    # ---- checkpoints (weights_only-safe: tensors and plain values)
    def state_dict(self) -> dict[str, Any]:
        return {"norms": {s: list(h) for s, h in self.norms.items()},
                "rms": {s: list(h) for s, h in self.rms.items()}, "finals": sorted(self.finals),
                "held": [_update_state(u) for u in self.held], "peak": self.peak, "stats": dict(self.stats)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.norms = {int(s): deque(h, maxlen=HISTORY) for s, h in state["norms"].items()}
        self.rms = {int(s): deque(h, maxlen=HISTORY) for s, h in state["rms"].items()}
        self.finals = {int(s) for s in state["finals"]}
        self.held = [DecodedUpdate(**d) for d in state["held"]]
        self.peak = float(state["peak"])
        self.stats = {k: int(v) for k, v in state["stats"].items()}


def _update_state(u: DecodedUpdate) -> dict[str, Any]:
    return {"node_id": u.node_id, "seq": u.seq, "step": u.step, "epoch": u.epoch, "confidence": u.confidence,
            "final": u.final, "indices": u.indices, "values": u.values, "wire_bytes": u.wire_bytes,
            "from_id": u.from_id}
