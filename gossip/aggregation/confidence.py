"""``confidence``: weight ∝ the sender's confidence score relative to the batch's mean.

The mean includes the receiver's own confidence; each weight is clamped to
``[1/confidence_cap, confidence_cap]`` so no single peer can dominate. Trades exact
agreement for listening more to peers that are sure.
"""

from __future__ import annotations

from collections.abc import Sequence

from gossip.aggregation.base import Local, Policy
from gossip.config import CommunicationConfig
from gossip.protocol.wire import DecodedUpdate


class ConfidenceWeighted(Policy):
    name = "confidence"

    def __init__(self, cfg: CommunicationConfig) -> None:
        super().__init__(cfg)
        self.cap = cfg.confidence_cap

    def weights(self, updates: Sequence[DecodedUpdate], local: Local) -> list[float | None]:
        scores = [u.confidence for u in updates] + [local.confidence]
        mean = sum(scores) / len(scores)
        if mean <= 0:
            return [1.0] * len(updates)
        return [min(self.cap, max(1 / self.cap, u.confidence / mean)) for u in updates]
