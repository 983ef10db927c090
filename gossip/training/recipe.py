"""The swarm's step: per-peer batch and learning rate from the centralized recipe (``train.*``).

Averaging N peers' deltas makes the swarm behave like one model at the *effective* batch
``N x per-peer batch`` with ``1/N`` of the steps per sample. Two ways to keep the centralized
problem, both in ``communication:``:

* ``global_batch: true``: ``train.batch_size`` is the swarm's global batch; a peer steps on
  ``batch_size / N``, so a swarm epoch has as many steps as a centralized one and the effective
  batch equals the centralized batch (no learning-rate change is needed);
* ``lr_rule: linear | sqrt``: keep the per-peer batch, and scale the learning rate by the ratio of
  effective to centralized batch (linear, Goyal et al. 2017) or its square root (Hoffer et al. 2017;
  gentler for compressed, delayed averaging). ``lr_scale`` multiplies on top (a hand-tuned factor).
  ``peer_batch: B`` fixes the per-peer batch instead of ``train.batch_size``: with ``lr_rule:
  sqrt`` and ``train.batch_size`` the centralized batch, the step follows the swarm's size
  (``python -m gossip.bench scale`` runs 8 and 16 peers so).

Centralized runs (``peers == 1`` or the baseline) are unchanged, and so are codistilling peers
(``communication.mode: codistill``): each trains a model of its own, nothing is averaged, so
each takes the centralized recipe's batch and learning rate as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gossip.config import Config


@dataclass(frozen=True)
class SwarmStep:
    batch_size: int  # samples per local step of one peer
    lr_factor: float  # train.lr is multiplied by this (lr_scale included)
    effective_batch: int  # peers x batch_size: what one averaged step of the swarm covers


def swarm_step(cfg: Config) -> SwarmStep:
    n, comm, batch = cfg.peers, cfg.communication, cfg.train.batch_size
    if n <= 1:
        return SwarmStep(batch, comm.lr_scale, batch)
    if comm.mode == "codistill":
        return SwarmStep(batch, 1.0, batch)
    per_peer = comm.peer_batch or (max(1, round(batch / n)) if comm.global_batch else batch)
    ratio = n * per_peer / batch
    rule = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[comm.lr_rule]
    return SwarmStep(per_peer, comm.lr_scale * rule, n * per_peer)
