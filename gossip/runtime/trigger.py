"""When to sync: the three triggers of the design card, checked after every local batch.

Tuning guide (``communication:`` keys, defaults from the design card):

* ``sync_interval: 5`` — the hard cap: sync at the latest after this many batches.
  Lower it for fresher neighbours (more, smaller messages); raise it to send less often.
  Each sync costs about ``codec.density × params`` kept elements on the wire, so bytes
  per epoch scale with ``batches / interval``.
* ``confidence_threshold: 0.7`` — sync early while this peer is unsure: the mean
  max-softmax over the batches since the last sync is below the threshold. Early in
  training this fires every batch, which spreads the first, largest deltas quickly.
  Set 0 to disable.
* ``grad_norm_threshold: 0.15`` — sync early when the loss landscape moved: the smoothed
  gradient norm (EMA over batches) changed by more than this fraction of its value at the
  last sync. Set 0 to disable; raise it if it fires on noise.

Checked in that order; the first that fires names the sync (``sync`` events carry
``trigger=...``). ``Trigger`` is pure bookkeeping, with no clock and no I/O.

``min_gap`` (1 unless :class:`gossip.runtime.adapt.Adapter` raised it because the link cannot
keep up even at ``communication.min_density``): no trigger fires before this many batches since
the last sync, and the interval cap becomes ``max(sync_interval, min_gap)``. ``hold`` (a link's
backlog is over ``communication.adapt_target_backlog_s``): nothing fires this batch; the residual
keeps growing (error feedback), so the next sync carries it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gossip.config import CommunicationConfig

SYNC_INTERVAL = "sync_interval"
CONFIDENCE = "confidence"
GRAD_NORM = "grad_norm"
FINAL = "final"
KINDS = (SYNC_INTERVAL, CONFIDENCE, GRAD_NORM, FINAL)

GRAD_NORM_EMA = 0.8  # weight of the past in the smoothed gradient norm


@dataclass
class Trigger:
    cfg: CommunicationConfig
    batches_since_sync: int = 0
    confidence_sum: float = 0.0
    grad_norm_ema: float | None = None
    grad_norm_at_sync: float | None = None
    fired: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    def observe(self, confidence: float, grad_norm: float, min_gap: int = 1, hold: bool = False) -> str | None:
        """Record one batch; return the trigger that fires now, or None to keep training
        (``hold``: the link is behind, so nothing fires; the next batch asks again)."""
        self.batches_since_sync += 1
        self.confidence_sum += confidence
        if self.grad_norm_ema is None:
            self.grad_norm_ema = grad_norm
        else:
            self.grad_norm_ema = GRAD_NORM_EMA * self.grad_norm_ema + (1 - GRAD_NORM_EMA) * grad_norm

        reason: str | None = None
        mean_confidence = self.confidence_sum / self.batches_since_sync
        if self.batches_since_sync < min_gap or hold:
            return None  # the link is behind: let the residual grow into fewer messages
        if self.batches_since_sync >= max(self.cfg.sync_interval, min_gap):
            reason = SYNC_INTERVAL
        elif mean_confidence < self.cfg.confidence_threshold:
            reason = CONFIDENCE
        elif self._grad_norm_moved():
            reason = GRAD_NORM
        if reason is not None:
            self.mark_synced(reason)
        return reason

    def _grad_norm_moved(self) -> bool:
        ref, now = self.grad_norm_at_sync, self.grad_norm_ema
        if self.cfg.grad_norm_threshold <= 0 or ref is None or now is None or ref <= 0:
            return False
        return abs(now - ref) > self.cfg.grad_norm_threshold * ref

    def mark_synced(self, reason: str) -> None:
        self.fired[reason] += 1
        self.batches_since_sync = 0
        self.confidence_sum = 0.0
        self.grad_norm_at_sync = self.grad_norm_ema

    def state_dict(self) -> dict[str, object]:
        return {
            "batches_since_sync": self.batches_since_sync,
            "confidence_sum": self.confidence_sum,
            "grad_norm_ema": self.grad_norm_ema,
            "grad_norm_at_sync": self.grad_norm_at_sync,
            "fired": dict(self.fired),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        for key, value in state.items():
            setattr(self, key, dict(value) if isinstance(value, dict) else value)
