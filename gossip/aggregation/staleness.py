"""``staleness``: weight ``1 / (1 + staleness_decay × steps_behind)``.

Updates computed many steps before the receiver's current step (slow peers, stragglers,
replays) count less; an update from the receiver's future counts fully.
"""

from __future__ import annotations

from collections.abc import Sequence

from gossip.aggregation.base import Local, Policy
from gossip.config import CommunicationConfig
from gossip.protocol.wire import DecodedUpdate


class StalenessDiscounted(Policy):
    name = "staleness"

    def __init__(self, cfg: CommunicationConfig) -> None:
        super().__init__(cfg)
        self.decay = cfg.staleness_decay

    def weights(self, updates: Sequence[DecodedUpdate], local: Local) -> list[float | None]:
        return [1.0 / (1.0 + self.decay * max(0, local.step - u.step)) for u in updates]
