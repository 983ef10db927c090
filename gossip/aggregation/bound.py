"""The default bound on any one update's influence, whatever the policy (``communication.norm_bound``).

The worker passes every batch of neighbour updates through :meth:`NormBound.admit` before the
policy folds them in. An update whose L2 norm exceeds ``norm_bound ×`` the reference is
rejected (reason ``norm_bound``); the reference is the smaller of

* its sender's recent norm (the largest of its last ``HISTORY``, once it has sent ``WARMUP``), and
* the swarm's: the upper median over senders (ourselves included) of each one's recent norm
  (the smaller of two), so one sender, however fast it sends, moves it by one vote only, and
  never past the honest senders' while they are a majority. Upper, not lower: peers that
  started seconds apart are at different points of the learning-rate schedule, and the one
  ahead sends updates several times the others' (measured, MNIST, 4 peers), all honest.

Recent norms, not a long median: honest norms grow several-fold within a few updates (a
learning-rate warm-up). A rejected update is remembered at the limit it broke, so an honest
sender whose norms grew faster than that catches up within a few updates instead of being
refused for good (an insider climbs the same way, but stays under the swarm's reference).

Poisoning from below is refused too: an update of norm zero adds nothing and is accepted
without being recorded (one harmless all-zero update once made the swarm's reference 0, and
every honest update after it was held, then refused: a victim that trained alone, measured in
``tests/test_hostile.py``), and once we have sent updates of our own the reference never falls
under ``1 / SWARM_CEILING`` of our own recent norm, so a neighbour sending tiny updates cannot
make the bound refuse everybody else's.

Before a sender has a history it is judged by the swarm's alone, whose first entries are our
own updates' norms (:meth:`NormBound.observe_own`). Before anything is known (no update sent,
none accepted) the reference is our live error-feedback residual's norm (a neighbour's update
is a part of a residual like ours); while that is still zero (no step taken yet) updates are
held and judged at the next batch, never applied unjudged (at most ``HELD_MAX``).

Early updates are allowed ``EARLY_BOOST ×`` more: the first ``EARLY`` judged, and each
sender's first ``WARMUP``. In the first steps norms grow several-fold per update, and peers
that started a second apart are judged against each other's first, tiny updates. Measured on
MNIST (4 peers, 1 epoch, 6 runs): honest updates reached 47x the reference early and 7x
afterwards, and up to 22x mid-run on a lossy link (a long gap between syncs), hence the
default factor 64 (and 512 early); an absurd update (1e6x) is refused
all the same.

An update over its limit by less than ``DEFER_SPAN ×`` is deferred, not refused: re-judged at
each later batch (up to ``DEFER_TRIES``, at most ``DEFER_MAX`` waiting) and applied once it is
within the limit *of that time*, so the bound itself never loosens; what is still over at the end
(:meth:`NormBound.settle`) or after its tries is refused. Why: a refused honest update is a
permanent disagreement between peers (every other peer applied it). Measured in
``tests/test_hostile.py``: a peer that started a second after its neighbour refused the
neighbour's second update (9.7 against a limit of 6.0, judged by its own first, tiny updates) and
ended 0.8 points away from that neighbour; another peer had refused the same update.

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

HISTORY = 8   # recent norms kept per sender (and of our own updates): 40 steps at sync_interval 5
WARMUP = 16   # a sender's own recent norm counts once it has sent this many: its learning-rate
              # warm-up grows its norms faster than its own recent ones (a late starter's above all)
OWN = -1      # the key of our own updates in the histories
EARLY, EARLY_BOOST = 30, 8.0  # the first 30 updates judged (and each sender's first WARMUP) get 8x
SWARM_CEILING = 8.0  # a warmed-up sender's reference may exceed the swarm's by at most this much
HELD_MAX = 256  # updates held for want of any reference (memory); beyond that they are refused
DEFER_SPAN = 64.0  # an update over its limit by less than this factor is re-judged later, not refused
DEFER_TRIES = 200  # batches a deferred update is re-judged at before it is refused
DEFER_MAX = 32     # deferred updates waiting at once (memory); beyond that they are refused

Rejected = Callable[[DecodedUpdate, str, str], None]  # (update, reason, detail)


class NormBound:
    """Rejects an update far larger than the running norms of accepted ones (module docstring)."""

    def __init__(self, cfg: CommunicationConfig) -> None:
        self.factor = cfg.norm_bound
        self.early = (EARLY, WARMUP)  # (updates judged, updates of a sender) with the early allowance
        self.norms: dict[int, deque[float]] = {}  # sender (OWN: us) -> accepted L2 norms
        self.rms: dict[int, deque[float]] = {}    # sender -> accepted RMS values (norm / sqrt(nnz))
        self.finals: set[int] = set()             # senders whose final update was judged by RMS
        self.seen: dict[int, int] = {}            # sender -> updates recorded (accepted or at the limit)
        self.held: list[DecodedUpdate] = []
        self.deferred: list[tuple[DecodedUpdate, int]] = []  # (update over its limit, tries left)
        self.residual: torch.Tensor | None = None
        self.last = (0.0, 0.0)  # (value, limit) of the update judged last
        self.peak = 0.0  # largest norm / limit among accepted updates (how close honest ones come)
        self.stats = {"norm_bound": 0, "norm_checked": 0, "norm_deferred": 0, "norm_deferred_applied": 0}

    def bind(self, residual: torch.Tensor) -> None:
        """Our error-feedback residual (read live, never written): the reference before any other."""
        self.residual = residual

    def admit(self, updates: Sequence[DecodedUpdate], reject: Rejected) -> list[DecodedUpdate]:
        """The updates to fold in now: held ones first, then ``updates``; ``reject`` gets the others."""
        if self.factor <= 0:
            return list(updates)
        admitted = self._retry(reject, last_call=False)
        pending, self.held = [*self.held, *updates], []
        for u in pending:
            verdict = self._judge(u)
            if verdict is None:
                self.held.append(u)
            elif verdict:
                admitted.append(u)
            else:
                value, limit = self.last
                if not u.final and 0.0 < limit < math.inf:  # remembered at the limit it broke
                    self._record(u.node_id, limit, limit / math.sqrt(u.values.numel()))
                if (not u.final and math.isfinite(value) and limit > 0.0 and value <= DEFER_SPAN * limit
                        and len(self.deferred) < DEFER_MAX):
                    self.stats["norm_deferred"] += 1
                    self.deferred.append((u, DEFER_TRIES))
                else:
                    self._refuse(u, reject)
        return admitted

    def settle(self, reject: Rejected) -> list[DecodedUpdate]:
        """At the end: the deferred updates within their limit now (to fold in); the rest refused."""
        return self._retry(reject, last_call=True) if self.factor > 0 else []

    def _retry(self, reject: Rejected, last_call: bool) -> list[DecodedUpdate]:
        waiting, self.deferred, admitted = self.deferred, [], []
        for u, tries in waiting:
            if self._judge(u):
                self.stats["norm_deferred_applied"] += 1
                admitted.append(u)
            elif last_call or tries <= 1:
                self._refuse(u, reject)
            else:
                self.deferred.append((u, tries - 1))
        return admitted

    def _refuse(self, u: DecodedUpdate, reject: Rejected) -> None:
        self.stats["norm_bound"] += 1
        value, limit = self.last if self.last[1] > 0 else (float(u.values.float().norm()), 0.0)
        reject(u, "norm_bound", f"{'rms' if u.final else 'norm'} {value:.4g} > limit {limit:.4g}")

    def observe_own(self, u: DecodedUpdate) -> None:
        """One of our own sent updates (as the neighbours decode it): the first reference of all."""
        norm, rms = self._size(u) if u.values.numel() > 0 else (0.0, 0.0)
        if not u.final and norm > 0.0:
            self._record(OWN, norm, rms)

    def _judge(self, u: DecodedUpdate) -> bool | None:
        """True: accept (and record), False: reject, None: nothing to judge it by yet."""
        if u.values.numel() == 0:
            return True  # an empty update (a seq fill) adds nothing
        norm, rms = self._size(u)
        if norm == 0.0:
            return True  # all zeros: adds nothing, and must not become anybody's reference
        by_rms = u.final and u.node_id not in self.finals
        value, ref = (rms, self._reference(self.rms, u.node_id)) if by_rms else \
            (norm, self._reference(self.norms, u.node_id))
        if ref is None and self.residual is not None:
            ref = float(self.residual.norm())  # the dense residual: compared by L2 norm
            value = norm
        if ref is None or ref <= 0.0:
            if len(self.held) < HELD_MAX:
                return None
            self.last = (value, 0.0)  # a full hold: 256 updates before our first step is a flood
            return False
        early = self.stats["norm_checked"] < self.early[0] or self.seen.get(u.node_id, 0) < self.early[1]
        limit = self.factor * ref * (EARLY_BOOST if early else 1.0)
        self.stats["norm_checked"] += 1
        self.last = (value, limit)
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
        self.seen[sender] = self.seen.get(sender, 0) + 1
        self.norms.setdefault(sender, deque(maxlen=HISTORY)).append(norm)
        self.rms.setdefault(sender, deque(maxlen=HISTORY)).append(rms)

    def _reference(self, histories: dict[int, deque[float]], sender: int) -> float | None:
        """The swarm's upper median of recent norms; once the sender is warmed up, the larger of that
        and its own recent norm, but never above ``SWARM_CEILING x`` the swarm's; never under
        ``1 / SWARM_CEILING`` of our own recent norm. None: no history.

        The larger, not the smaller: an honest peer ahead of the others in its learning-rate warm-up
        (it started earlier) sends updates many times the swarm's median while they grow smoothly
        against its own (measured: 73x the swarm's on a lossy MNIST run, where the smaller of the two
        refused 30 consecutive honest updates). The ceiling keeps an insider that climbs against its
        own history within a fixed multiple of what the honest majority sends.
        """
        recent = [max(h) for h in histories.values() if h]
        if not recent:
            return None
        swarm = statistics.median_high(recent) if len(recent) >= 3 else min(recent)
        ours = histories.get(OWN)
        if ours:  # a floor that no neighbour's tiny updates can lower
            swarm = max(swarm, max(ours) / SWARM_CEILING)
        own = histories.get(sender)
        if own is not None and self.seen.get(sender, 0) >= WARMUP:
            return min(max(swarm, max(own)), SWARM_CEILING * swarm)
        return swarm

    # ---- checkpoints (weights_only-safe: tensors and plain values)
    def state_dict(self) -> dict[str, Any]:
        return {"norms": {s: list(h) for s, h in self.norms.items()},
                "rms": {s: list(h) for s, h in self.rms.items()}, "finals": sorted(self.finals),
                "seen": dict(self.seen),
                "held": [_update_state(u) for u in self.held], "peak": self.peak, "stats": dict(self.stats),
                "deferred": [_update_state(u) for u, _ in self.deferred],
                "deferred_tries": [t for _, t in self.deferred]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.norms = {int(s): deque(h, maxlen=HISTORY) for s, h in state["norms"].items()}
        self.rms = {int(s): deque(h, maxlen=HISTORY) for s, h in state["rms"].items()}
        self.finals = {int(s) for s in state["finals"]}
        self.seen = {int(s): int(n) for s, n in state["seen"].items()}
        self.held = [DecodedUpdate(**d) for d in state["held"]]
        self.deferred = [(DecodedUpdate(**d), int(t)) for d, t in
                         zip(state.get("deferred", []), state.get("deferred_tries", []), strict=True)]
        self.peak = float(state["peak"])
        self.stats = {**self.stats, **{k: int(v) for k, v in state["stats"].items()}}


def _update_state(u: DecodedUpdate) -> dict[str, Any]:
    return {"node_id": u.node_id, "seq": u.seq, "step": u.step, "epoch": u.epoch, "confidence": u.confidence,
            "final": u.final, "indices": u.indices, "values": u.values, "wire_bytes": u.wire_bytes,
            "from_id": u.from_id}


