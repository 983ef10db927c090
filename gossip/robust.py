"""Robust aggregation: fold neighbours' updates so that a few lying peers cannot wreck the model.

``communication.aggregation`` = ``clip`` | ``trimmed_mean`` | ``median`` | ``centered_clip``
(registered in :data:`gossip.aggregate.POLICIES` when this module is imported).

Semantics over sparse, asynchronous updates (the same for all four):

* **Windows.** Updates are buffered and folded in once per window of
  ``communication.sync_interval`` local steps — the trigger guarantees that every honest
  sender. At the end of training whatever is buffered is folded in by
  :meth:`Windowed.flush`; a checkpoint holds the buffer (:meth:`Windowed.state_dict`).
* **Rows.** In a window, each sender's updates are summed into one *row* over the union
  ``U`` of all indices in the window; a sender that did not touch an element contributes
  0 there (it has not moved that element in this window). ``n`` is the number of
  senders expected: the most distinct senders seen in any of the last
  ``EXPECT_WINDOWS`` windows; senders missing from this window are rows of zeros.
* **Sum semantics.** Plain gossip adds every row (``Σ rows``, see :mod:`gossip.aggregate`).
  A robust policy adds ``n × robust_mean(rows)`` instead, which equals ``Σ rows`` when
  nothing is clipped or trimmed. So without attackers a robust policy changes little,
  except where it trims honest outliers (the price measured by ``python -m gossip.bench
  robust``).

Policies (``robust_mean`` above):

* ``clip`` — each row scaled to norm at most τ, then summed. τ = ``clip_norm`` if set,
  else ``CLIP_FACTOR`` × the median row norm of the window (a minority of liars cannot
  move the median). Bounds each liar's harm to one honest-sized step per window.
* ``trimmed_mean`` — coordinate-wise: drop the ``⌊trim_ratio × n⌋`` largest and smallest
  values of every element, average the rest. Set ``trim_ratio ≥ attackers / n``. Sparse
  updates rarely overlap, and an element only one sender touched is trimmed away, so this
  loses honest signal (more the sparser the codec).
* ``median`` — coordinate-wise median (mean of the two middle values for even ``n``).
  Most robust per element, most lossy for sparse updates (needs a majority to touch an
  element).
* ``centered_clip`` — Karimireddy et al. (2021): start at the coordinate-wise median ``v``,
  then ``CC_ITERATIONS`` times ``v += mean_i((x_i - v) · min(1, τ / ‖x_i - v‖))`` with
  τ = ``clip_norm`` or ``CC_FACTOR`` × the median distance to the start. Mean-like for
  honest rows (keeps sparse signal), bounded pull for outliers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import torch

from gossip.aggregate import POLICIES, Local
from gossip.config import CommunicationConfig
from gossip.log import get_logger
from gossip.wire import DecodedUpdate

log = get_logger(__name__)

EXPECT_WINDOWS = 8   # n = most distinct senders seen in any of the last this-many windows
CLIP_FACTOR = 1.0    # clip: τ = this × the median row norm of the window
CC_FACTOR = 1.0      # centered_clip: τ = this × the median distance of the rows to the start
CC_ITERATIONS = 3


def _median_rows(rows: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median over rows; the mean of the two middle values when even."""
    n = rows.shape[0]
    ordered = rows.sort(dim=0).values
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


class Windowed:
    """Buffers updates per sender for one window, then folds ``combine(rows)`` into the model."""

    name = "windowed"

    def __init__(self, cfg: CommunicationConfig) -> None:
        self.cfg = cfg
        self.window_steps = cfg.sync_interval
        self.buffer: dict[int, list[DecodedUpdate]] = {}
        self.opened_at: int | None = None
        self.recent_senders: deque[int] = deque(maxlen=EXPECT_WINDOWS)
        self.stats = {"windows": 0, "rows": 0, "rows_limited": 0}

    # a Policy for code that only asks for weights: everything at 1 (not robust); the
    # worker calls fold() instead
    def weights(self, updates: Sequence[DecodedUpdate], local: Local) -> list[float | None]:
        return [1.0] * len(updates)

    def fold(self, flat: torch.Tensor, updates: Sequence[DecodedUpdate], local: Local) -> int:
        """Buffer ``updates``; close the window when it is ``sync_interval`` steps old. Returns rows folded."""
        for u in updates:
            self.buffer.setdefault(u.node_id, []).append(u)
            if self.opened_at is None:
                self.opened_at = local.step
        if self.opened_at is not None and local.step - self.opened_at >= self.window_steps:
            return self.flush(flat)
        return 0

    def flush(self, flat: torch.Tensor) -> int:
        """Fold in everything buffered now (end of training, or a window that is due)."""
        if not self.buffer:
            self.opened_at = None
            return 0
        senders = sorted(self.buffer)
        self.recent_senders.append(len(senders))
        n = max(self.recent_senders)
        index_lists = []
        for s in senders:
            for u in self.buffer[s]:
                index_lists.append(torch.arange(flat.numel()) if u.indices is None else u.indices)
        union, inverse = torch.unique(torch.cat(index_lists), return_inverse=True)
        rows = torch.zeros(n, union.numel(), dtype=torch.float32)
        pos = 0
        for r, s in enumerate(senders):
            for u in self.buffer[s]:
                k = u.values.numel()
                rows[r].index_add_(0, inverse[pos:pos + k], u.values.float())
                pos += k
        delta = self.combine(rows, len(senders))
        if union.numel() == flat.numel():
            flat.add_(delta.to(flat.device))
        else:
            flat.index_add_(0, union.to(flat.device), delta.to(flat.device))
        self.stats["windows"] += 1
        self.stats["rows"] += len(senders)
        self.buffer.clear()
        self.opened_at = None
        return len(senders)

    def combine(self, rows: torch.Tensor, present: int) -> torch.Tensor:
        """What to add to the model over the union: rows[:present] are senders, the rest zeros."""
        raise NotImplementedError

    # ---- checkpoints (weights_only-safe: tensors and plain values)
    def state_dict(self) -> dict[str, Any]:
        return {
            "opened_at": self.opened_at, "recent_senders": list(self.recent_senders), "stats": dict(self.stats),
            "buffer": [{"node_id": u.node_id, "seq": u.seq, "step": u.step, "epoch": u.epoch,
                        "confidence": u.confidence, "final": u.final, "indices": u.indices,
                        "values": u.values, "wire_bytes": u.wire_bytes}
                       for s in sorted(self.buffer) for u in self.buffer[s]],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opened_at = state["opened_at"]
        self.recent_senders = deque(state["recent_senders"], maxlen=EXPECT_WINDOWS)
        self.stats = dict(state["stats"])
        self.buffer = {}
        for d in state["buffer"]:
            self.buffer.setdefault(int(d["node_id"]), []).append(DecodedUpdate(**d))


class NormClip(Windowed):
    name = "clip"

    def combine(self, rows: torch.Tensor, present: int) -> torch.Tensor:
        norms = rows[:present].norm(dim=1)
        tau = self.cfg.clip_norm if self.cfg.clip_norm > 0 else CLIP_FACTOR * float(norms.median())
        scale = (tau / norms.clamp_min(1e-12)).clamp(max=1.0)
        self.stats["rows_limited"] += int((scale < 1.0).sum())
        return (rows[:present] * scale[:, None]).sum(dim=0)


class TrimmedMean(Windowed):
    name = "trimmed_mean"

    def combine(self, rows: torch.Tensor, present: int) -> torch.Tensor:
        n = rows.shape[0]
        b = min(int(self.cfg.trim_ratio * n), (n - 1) // 2)
        ordered = rows.sort(dim=0).values
        self.stats["rows_limited"] += 2 * b
        return ordered[b:n - b].mean(dim=0) * n


class Median(Windowed):
    name = "median"

    def combine(self, rows: torch.Tensor, present: int) -> torch.Tensor:
        return _median_rows(rows) * rows.shape[0]


class CenteredClip(Windowed):
    name = "centered_clip"

    def combine(self, rows: torch.Tensor, present: int) -> torch.Tensor:
        v = _median_rows(rows)
        dist = (rows - v).norm(dim=1)
        tau = self.cfg.clip_norm if self.cfg.clip_norm > 0 else CC_FACTOR * float(dist.median())
        if tau <= 0:  # a majority of identical rows (e.g. all zeros): the median is the answer
            return v * rows.shape[0]
        for _ in range(CC_ITERATIONS):
            dev = rows - v
            scale = (tau / dev.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
            v = v + (dev * scale[:, None]).mean(dim=0)
        self.stats["rows_limited"] += int((scale < 1.0).sum())
        return v * rows.shape[0]


POLICIES.update({
    "clip": NormClip,
    "trimmed_mean": TrimmedMean,
    "median": Median,
    "centered_clip": CenteredClip,
})
