"""``centered_clip``: robust aggregation per update, applied on arrival (no added delay).

Karimireddy et al., 2021, per update: the update ``x`` on its elements ``S`` is replaced by
``c[S] + clip(x - c[S], τ)`` with τ = ``clip_norm`` or ``CC_FACTOR`` × the median of the recent
deviations. The center ``c`` is a running per-element average of the values accepted lately
(entries older than ``STALE_STEPS`` local steps count as 0). An honest update close to what the
swarm has been sending passes unchanged; a flipped, noisy or inflated one is pulled back to the
center. (Centering on the peer's own sent values instead was tried: one honest peer drifted,
77.7 % vs ~90 %.)

Final updates (the dense residual flush at the end) are windowed
(:mod:`gossip.aggregation.windowed`): centered clipping over the rows, ``CC_ITERATIONS`` times,
around their coordinate-wise median.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Any

import torch

from gossip.aggregation.base import Local
from gossip.aggregation.windowed import Windowed, median_rows, scale_rows
from gossip.config import CommunicationConfig
from gossip.protocol.wire import DecodedUpdate

DEV_HISTORY = 64     # recent deviation norms remembered (all senders)
CC_FACTOR = 1.5      # tau = this x the median recent deviation
CC_ITERATIONS = 3    # centered clipping over a window of final updates
CC_REF_WEIGHT = 0.5  # weight of a new accepted value in the running reference
STALE_STEPS = 20     # reference entries older than this many local steps count as 0


class CenteredClip(Windowed):
    name = "centered_clip"
    per_update = True

    def __init__(self, cfg: CommunicationConfig) -> None:
        super().__init__(cfg)
        self.ref: torch.Tensor | None = None       # running per-element reference update
        self.ref_step: torch.Tensor | None = None  # local step each entry was last refreshed
        self.devs: deque[float] = deque(maxlen=DEV_HISTORY)

    def apply_one(self, flat: torch.Tensor, u: DecodedUpdate, local: Local) -> None:
        if self.ref is None or self.ref_step is None:
            self.ref = torch.zeros(flat.numel())
            self.ref_step = torch.full((flat.numel(),), -(10**9), dtype=torch.int64)
        idx = torch.arange(flat.numel()) if u.indices is None else u.indices
        fresh = self.ref_step[idx] >= local.step - STALE_STEPS
        center = torch.where(fresh, self.ref[idx], torch.zeros(()))
        dev = u.values.float() - center
        dist = float(dev.norm())
        self.devs.append(dist)
        tau = self.cfg.clip_norm if self.cfg.clip_norm > 0 else CC_FACTOR * statistics.median(self.devs)
        if dist > tau:
            dev = dev * (tau / dist)
            self.stats["limited"] += 1
        accepted = center + dev
        flat.index_add_(0, idx.to(flat.device), (accepted * self.weight).to(flat.device))
        self.ref[idx] = (1 - CC_REF_WEIGHT) * center + CC_REF_WEIGHT * accepted
        self.ref_step[idx] = local.step

    def combine(self, rows: torch.Tensor, present: int, union: torch.Tensor) -> torch.Tensor:
        v = median_rows(rows)
        dist = (rows - v).norm(dim=1)
        tau = self.cfg.clip_norm if self.cfg.clip_norm > 0 else CC_FACTOR * float(dist.median())
        if tau <= 0:  # a majority of identical rows: the median is the answer
            return v * rows.shape[0]
        for _ in range(CC_ITERATIONS):
            clipped, limited = scale_rows(rows - v, tau)
            v = v + clipped.mean(dim=0)
        self.stats["limited"] += limited
        return v * rows.shape[0]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ref": self.ref, "ref_step": self.ref_step, "devs": list(self.devs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.ref, self.ref_step = state["ref"], state["ref_step"]
        self.devs = deque(state["devs"], maxlen=DEV_HISTORY)
