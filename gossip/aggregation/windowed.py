"""Buffered (windowed) policies: coordinate-wise statistics need one value per sender.

Updates are buffered per sender until every sender seen so far has contributed, or the window
is ``communication.sync_interval`` local steps old (the trigger makes every honest peer send at
least that often). In a window each sender's updates are summed into one *row* over the union
``U`` of their elements; a sender that did not touch an element contributes 0 there. A window
with fewer rows than a majority of the known senders is padded with zero rows, so a lone liar
in a window cannot pass on its own. The subclass's :meth:`Windowed.combine` says what the
window adds over ``U`` (:mod:`gossip.aggregation.trimmed_mean`, :mod:`gossip.aggregation.median`).

Per-update robust policies (``per_update``: :mod:`gossip.aggregation.clip`,
:mod:`gossip.aggregation.centered_clip`) apply non-final updates on arrival
(:meth:`Windowed.apply_one`) and window only the final updates (the dense residual flush at
the end): those are held until every known sender's final is in (or the end of training).

A windowed policy must be driven through :meth:`Windowed.fold` / :meth:`Windowed.flush`;
its :meth:`Windowed.weights` raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gossip.aggregation.base import Local, Policy, Reject, _ignore
from gossip.config import CommunicationConfig
from gossip.protocol.wire import DecodedUpdate


def median_rows(rows: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median over rows; the mean of the two middle values when even."""
    n = rows.shape[0]
    ordered = rows.sort(dim=0).values
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def scale_rows(rows: torch.Tensor, tau: float) -> tuple[torch.Tensor, int]:
    """Rows with their norms capped at ``tau``, and how many were scaled down."""
    norms = rows.norm(dim=1)
    scale = (tau / norms.clamp_min(1e-12)).clamp(max=1.0)
    return rows * scale[:, None], int((scale < 1.0).sum())


def _update_state(u: DecodedUpdate) -> dict[str, Any]:
    return {"node_id": u.node_id, "seq": u.seq, "step": u.step, "epoch": u.epoch, "confidence": u.confidence,
            "final": u.final, "indices": u.indices, "values": u.values, "wire_bytes": u.wire_bytes}


class Windowed(Policy):
    """Buffers updates per sender for one window, then folds ``combine(rows)`` into the model."""

    per_update = False  # True: non-final updates go to apply_one on arrival, only finals are windowed

    def __init__(self, cfg: CommunicationConfig) -> None:
        super().__init__(cfg)
        self.max_age = cfg.sync_interval
        self.buffer: dict[int, list[DecodedUpdate]] = {}
        self.opened_at: int | None = None
        self.known: set[int] = set()  # every sender seen so far
        self.weight = 1.0  # the runtime's mixing weight per update (1/peers)
        self.stats = {"windows": 0, "rows": 0, "limited": 0}

    def weights(self, updates: Sequence[DecodedUpdate], local: Local) -> list[float | None]:
        raise TypeError(f"aggregation policy {self.name!r} is windowed: fold updates with fold(), not weights()")

    def fold(self, flat: torch.Tensor, updates: Sequence[DecodedUpdate], local: Local,
             weight: float = 1.0, reject: Reject = _ignore) -> int:
        """Apply or buffer ``updates``; close the window when due. Returns the rows folded now.

        Nothing is rejected outright (``reject`` is not called): what a robust policy drops or
        limits is counted in :attr:`stats`.
        """
        self.weight = weight
        for u in updates:
            self.known.add(u.node_id)
            if self.per_update and not u.final:
                self.apply_one(flat, u, local)
                continue
            self.buffer.setdefault(u.node_id, []).append(u)
            if self.opened_at is None:
                self.opened_at = local.step
        if self.buffer and self._due(local):
            return self.flush(flat)
        return 0

    def _due(self, local: Local) -> bool:
        if self.per_update:  # only finals are buffered: wait for every known sender's
            finals = {s for s, us in self.buffer.items() if any(u.final for u in us)}
            return finals >= self.known
        assert self.opened_at is not None
        return len(self.buffer) >= len(self.known) or local.step - self.opened_at >= self.max_age

    def quorum(self) -> int:
        return len(self.known) // 2 + 1

    def apply_one(self, flat: torch.Tensor, u: DecodedUpdate, local: Local) -> None:
        """A non-final update on arrival (``per_update`` policies only)."""
        raise NotImplementedError(f"{type(self).__name__} sets per_update but has no apply_one")

    def flush(self, flat: torch.Tensor, weight: float | None = None) -> int:
        """Fold in everything buffered now (a window that is due, or the end of training)."""
        if weight is not None:
            self.weight = weight
        if not self.buffer:
            return 0
        senders = sorted(self.buffer)
        ups = [u for s in senders for u in self.buffer[s]]
        index_lists = [torch.arange(flat.numel()) if u.indices is None else u.indices for u in ups]
        union, inverse = torch.unique(torch.cat(index_lists), return_inverse=True)
        rows = torch.zeros(max(len(senders), self.quorum()), union.numel(), dtype=torch.float32)
        pos = 0
        for r, s in enumerate(senders):
            for u in self.buffer[s]:
                k = u.values.numel()
                rows[r].index_add_(0, inverse[pos:pos + k], u.values.float())
                pos += k
        delta = self.combine(rows, len(senders), union) * self.weight
        if union.numel() == flat.numel():
            flat.add_(delta.to(flat.device))
        else:
            flat.index_add_(0, union.to(flat.device), delta.to(flat.device))
        self.stats["windows"] += 1
        self.stats["rows"] += len(senders)
        self.buffer.clear()
        self.opened_at = None
        return len(senders)

    def combine(self, rows: torch.Tensor, present: int, union: torch.Tensor) -> torch.Tensor:
        """What to add over ``union`` (flat indices): rows[:present] are senders, any further rows are zeros."""
        raise NotImplementedError(f"{type(self).__name__} has no combine")

    # ---- checkpoints (weights_only-safe: tensors and plain values)
    def state_dict(self) -> dict[str, Any]:
        return {"opened_at": self.opened_at, "known": sorted(self.known), "stats": dict(self.stats),
                "weight": self.weight,
                "buffer": [_update_state(u) for s in sorted(self.buffer) for u in self.buffer[s]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opened_at = state["opened_at"]
        self.weight = float(state.get("weight", 1.0))
        self.known = set(state["known"])
        self.stats = dict(state["stats"])
        self.buffer = {}
        for d in state["buffer"]:
            self.buffer.setdefault(int(d["node_id"]), []).append(DecodedUpdate(**d))
