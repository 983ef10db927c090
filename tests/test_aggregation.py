"""The aggregation interface: the registry, the base class's defaults and failure semantics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gossip import aggregation, config
from gossip.aggregation import Local, Policy
from gossip.aggregation.registry import POLICIES, check_registry, config_names, make_policy
from gossip.aggregation.windowed import Windowed
from gossip.errors import ConfigError
from gossip.protocol import wire
from gossip.sim.attacks import build_update

NUMEL = 50
LIMITS = wire.Limits(numel=NUMEL, schema_hash=7, max_bytes=1 << 20, peers=16)
LOCAL = Local(step=10, confidence=0.5)


def update(sender: int, values: np.ndarray, step: int = 0, confidence: float = 0.5) -> wire.DecodedUpdate:
    msg = build_update(None, values.astype(np.float32), NUMEL)
    u = wire.unpack(wire.pack_update(msg, node_id=sender, seq=0, step=step, epoch=0, confidence=confidence,
                                     schema_hash=7), LIMITS)
    assert isinstance(u, wire.DecodedUpdate)
    return u


def comm(name: str) -> config.CommunicationConfig:
    return config.load(None, [f"communication.aggregation={name}"]).communication


def test_the_registry_is_exactly_the_configs_policy_names():
    assert set(POLICIES) == set(config_names()) and len(config_names()) == 7
    for name, cls in POLICIES.items():
        policy = make_policy(comm(name))
        assert type(policy) is cls and policy.name == name and isinstance(policy, Policy)
    assert aggregation.make_policy is make_policy


def test_the_registry_check_rejects_a_missing_an_unknown_or_a_misnamed_policy():
    with pytest.raises(AssertionError, match="missing \\['median'\\]"):
        check_registry({k: v for k, v in POLICIES.items() if k != "median"}, config_names())
    with pytest.raises(AssertionError, match="unknown \\['bogus'\\]"):
        check_registry({**POLICIES, "bogus": POLICIES["uniform"]}, config_names())
    with pytest.raises(AssertionError, match="not a Policy named 'median'"):
        check_registry({**POLICIES, "median": POLICIES["trimmed_mean"]}, config_names())
    with pytest.raises(AssertionError, match="not a Policy"):
        check_registry({**POLICIES, "median": dict}, config_names())  # type: ignore[dict-item]


def test_make_policy_refuses_an_unknown_name():
    cfg = dataclasses.replace(comm("uniform"), aggregation="krum")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'krum' is not available"):
        make_policy(cfg)


def test_the_base_class_cannot_be_built_without_weights():
    with pytest.raises(TypeError):
        Policy(comm("uniform"))  # type: ignore[abstract]


@pytest.mark.parametrize("name", ["clip", "centered_clip", "trimmed_mean", "median"])
def test_windowed_weights_raise_instead_of_plain_averaging(name):
    policy = make_policy(comm(name))
    assert isinstance(policy, Windowed)
    with pytest.raises(TypeError, match="windowed"):
        policy.weights([update(1, np.ones(NUMEL))], LOCAL)


class EvenOnly(Policy):
    """Rejects odd senders, halves the rest."""

    name = "even_only"

    def weights(self, updates, local):
        return [None if u.node_id % 2 else 0.5 for u in updates]


def test_default_fold_applies_weights_and_reports_rejections():
    policy, flat, rejected = EvenOnly(comm("uniform")), torch.zeros(NUMEL), []
    ups = [update(s, np.full(NUMEL, 1.0 + s)) for s in range(4)]
    assert policy.fold(flat, ups, LOCAL, weight=0.25, reject=rejected.append) == 2
    assert [u.node_id for u in rejected] == [1, 3]
    assert torch.allclose(flat, torch.full((NUMEL,), 0.5 * 0.25 * (1.0 + 3.0)))
    assert policy.fold(flat, [], LOCAL) == 0 and policy.flush(flat) == 0


@pytest.mark.parametrize("name", ["uniform", "confidence", "staleness"])
def test_per_update_policies_fold_like_weights_times_mix(name):
    """Their fold is ``flat += w × weight × delta`` with the policy's weights: bit for bit."""
    policy = make_policy(comm(name))
    rng = np.random.default_rng(3)
    ups = [update(s, rng.normal(0, 1, NUMEL), step=s * 3, confidence=0.2 * s) for s in range(1, 5)]
    got, want = torch.zeros(NUMEL), torch.zeros(NUMEL)
    policy.fold(got, ups, LOCAL, weight=0.25)
    for u, w in zip(ups, policy.weights(ups, LOCAL), strict=True):
        assert w is not None
        aggregation.apply(want, u, w * 0.25)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["uniform", "confidence", "staleness"])
def test_stateless_policies_round_trip_empty_state_and_refuse_foreign_state(name):
    policy = make_policy(comm(name))
    assert policy.state_dict() == {} and policy.stats == {}
    policy.load_state_dict({})
    policy.observe_own(update(0, np.ones(NUMEL)), NUMEL)  # defaults: nothing kept, nothing raised
    policy.bind_direction(torch.ones(NUMEL))
    with pytest.raises(ValueError, match="holds no state"):
        policy.load_state_dict(make_policy(comm("median")).state_dict())
