"""How a peer folds its neighbours' decoded updates into its own parameters.

Pure math on tensors, no I/O. A policy looks at a batch of decoded updates (everything that
arrived since the last training step) and returns one weight per update; ``None`` means
*reject, keep local* (the update is counted as rejected and not applied). The runtime then
adds ``weight × delta`` into the flat parameter vector with :func:`apply`.

Policies (``communication.aggregation``):

* ``uniform`` (default) — weight 1: every delta is applied exactly once on every peer, the
  same as on its sender, so all models stay ``init + Σ deltas`` and agree after the final
  flush. This is the policy that keeps peers in consensus.
* ``confidence`` — weight ∝ the sender's confidence score relative to the mean of the batch,
  clamped to ``[1/confidence_cap, confidence_cap]`` so no single peer can dominate. Trades
  exact agreement for listening more to peers that are sure.
* ``staleness`` — weight ``1 / (1 + staleness_decay × steps_behind)``: updates computed
  many steps ago (slow peers, stragglers, replays) count less.

Robust policies against lying peers register themselves in :data:`POLICIES` too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from gossip.config import CommunicationConfig
from gossip.errors import ConfigError
from gossip.protocol.wire import DecodedUpdate


@dataclass(frozen=True)
class Local:
    """What a policy may know about the receiving peer."""

    step: int  # global step of the receiver (epoch * steps_per_epoch + batch)
    confidence: float  # receiver's recent mean max-softmax


class Policy(Protocol):
    def weights(self, updates: Sequence[DecodedUpdate], local: Local) -> list[float | None]: ...


def apply(flat: torch.Tensor, update: DecodedUpdate, weight: float) -> None:
    """``flat += weight × delta``, sparse or dense."""
    values = update.values if weight == 1.0 else update.values * weight
    if update.indices is None:
        flat.add_(values.to(flat.device))
    else:
        flat.index_add_(0, update.indices.to(flat.device), values.to(flat.device))


class Uniform:
    def weights(self, updates: Sequence[DecodedUpdate], local: Local) -> list[float | None]:
        return [1.0] * len(updates)


class ConfidenceWeighted:
    def __init__(self, cap: float) -> None:
        self.cap = cap

    def weights(self, updates: Sequence[DecodedUpdate], local: Local) -> list[float | None]:
        scores = [u.confidence for u in updates] + [local.confidence]
        mean = sum(scores) / len(scores)
        if mean <= 0:
            return [1.0] * len(updates)
        return [min(self.cap, max(1 / self.cap, u.confidence / mean)) for u in updates]


class StalenessDiscounted:
    def __init__(self, decay: float) -> None:
        self.decay = decay

    def weights(self, updates: Sequence[DecodedUpdate], local: Local) -> list[float | None]:
        return [1.0 / (1.0 + self.decay * max(0, local.step - u.step)) for u in updates]


POLICIES: dict[str, Callable[[CommunicationConfig], Policy]] = {
    "uniform": lambda cfg: Uniform(),
    "confidence": lambda cfg: ConfidenceWeighted(cfg.confidence_cap),
    "staleness": lambda cfg: StalenessDiscounted(cfg.staleness_decay),
}


def make_policy(cfg: CommunicationConfig) -> Policy:
    if cfg.aggregation not in POLICIES:
        raise ConfigError(f"communication.aggregation: {cfg.aggregation!r} is not available")
    return POLICIES[cfg.aggregation](cfg)


# The robust policies (clip, trimmed_mean, median, centered_clip) register themselves here.
from gossip.aggregation import robust  # noqa: E402,F401
