"""The registry of aggregation policies: ``communication.aggregation`` name -> :class:`Policy` class.

Explicit (no import side effects): :data:`POLICIES` lists every policy module's class, and
:func:`check_registry` (run when this module is imported) fails unless its names are exactly
the config's ``Literal`` of policy names, so a policy added on one side only is caught at once.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping

from gossip.aggregation.base import Policy
from gossip.aggregation.centered_clip import CenteredClip
from gossip.aggregation.clip import NormClip
from gossip.aggregation.confidence import ConfidenceWeighted
from gossip.aggregation.median import Median
from gossip.aggregation.staleness import StalenessDiscounted
from gossip.aggregation.trimmed_mean import TrimmedMean
from gossip.aggregation.uniform import Uniform
from gossip.config import CommunicationConfig
from gossip.errors import ConfigError

_CLASSES: tuple[type[Policy], ...] = (
    Uniform, ConfidenceWeighted, StalenessDiscounted, NormClip, CenteredClip, TrimmedMean, Median)
POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in _CLASSES}


def config_names() -> tuple[str, ...]:
    """The policy names ``communication.aggregation`` accepts (its ``Literal``)."""
    return typing.get_args(typing.get_type_hints(CommunicationConfig)["aggregation"])


def check_registry(policies: Mapping[str, type[Policy]], names: Iterable[str]) -> None:
    """Raise unless ``policies`` maps exactly ``names``, each to a class of that ``name``."""
    wanted, have = set(names), set(policies)
    if wanted != have:
        raise AssertionError(f"aggregation registry out of sync with the config: missing "
                             f"{sorted(wanted - have)}, unknown {sorted(have - wanted)}")
    for key, cls in policies.items():
        if not (isinstance(cls, type) and issubclass(cls, Policy)) or cls.name != key:
            raise AssertionError(f"aggregation registry: {key!r} -> {cls!r} is not a Policy named {key!r}")


def make_policy(cfg: CommunicationConfig) -> Policy:
    """The policy ``cfg.aggregation`` names, built from ``cfg``; ConfigError for an unknown name."""
    cls = POLICIES.get(cfg.aggregation)
    if cls is None:
        raise ConfigError(f"communication.aggregation: {cfg.aggregation!r} is not available "
                          f"(one of {', '.join(POLICIES)})")
    return cls(cfg)


check_registry(POLICIES, config_names())
