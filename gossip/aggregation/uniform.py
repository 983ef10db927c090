"""``uniform`` (the default): every neighbour's delta with weight 1.

Every delta is applied exactly once on every peer, the same as on its sender, so all models
stay ``init + Σ deltas`` and agree after the final flush. This is the policy that keeps
peers in consensus.
"""

from __future__ import annotations

from collections.abc import Sequence

from gossip.aggregation.base import Local, Policy
from gossip.protocol.wire import DecodedUpdate


class Uniform(Policy):
    name = "uniform"

    def weights(self, updates: Sequence[DecodedUpdate], local: Local) -> list[float | None]:
        return [1.0] * len(updates)
