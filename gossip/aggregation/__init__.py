"""How a peer folds its neighbours' decoded updates into its own parameters.

One policy per module behind :class:`~gossip.aggregation.base.Policy`; the registry
(:mod:`gossip.aggregation.registry`) maps ``communication.aggregation`` to its class::

    policy = make_policy(cfg.communication)
    policy.fold(flat, updates, Local(step, confidence), weight=1 / peers)
"""

from gossip.aggregation.base import Local, Policy, apply
from gossip.aggregation.registry import POLICIES, make_policy

__all__ = ["POLICIES", "Local", "Policy", "apply", "make_policy"]
