"""The aggregation interface: the registry, the base class's defaults and failure semantics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gossip import aggregation, config
from gossip.aggregation import Local, Policy
from gossip.aggregation.bound import EARLY, EARLY_BOOST, WARMUP, NormBound
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


# ---------------------------------------------------------------- the default norm bound (gossip.aggregation.bound)


def bounded_update(sender: int, norm: float, seq: int = 0, k: int = 10, final: bool = False) -> wire.DecodedUpdate:
    """A sparse update of ``k`` equal values with L2 norm ``norm`` (dense when ``k`` is NUMEL)."""
    values = torch.full((k,), norm / k**0.5)
    indices = None if k == NUMEL else torch.arange(k, dtype=torch.int64) * (NUMEL // k)
    return wire.DecodedUpdate(node_id=sender, seq=seq, step=0, epoch=0, confidence=0.5, final=final,
                              indices=indices, values=values, wire_bytes=100, from_id=sender)


def bound(factor: float = 8.0, early: bool = False) -> NormBound:
    """A NormBound past its early updates (``early``: a fresh one, with the early allowance)."""
    cfg = config.load(None, [f"communication.norm_bound={factor}"]).communication
    b = NormBound(cfg)
    if not early:
        b.early = (0, 0)
    return b


def test_norm_bound_is_on_by_default_and_leaves_a_growing_honest_swarm_alone():
    assert config.load(None, []).communication.norm_bound == 64.0
    b, rejected = bound(early=True), []
    b.observe_own(bounded_update(0, 0.1))
    for seq in range(60):  # norms growing 1.5x per update for 15 updates (a warm-up), then flat, noisy
        for sender in (1, 2, 3):
            norm = 0.1 * 1.5 ** min(seq, 15) * (1 + 0.3 * ((seq + sender) % 3))
            b.admit([bounded_update(sender, norm, seq)], lambda u, r, d: rejected.append(u))
        b.observe_own(bounded_update(0, 0.1 * 1.5 ** min(seq, 15)))
    assert rejected == [] and b.stats["norm_bound"] == 0 and b.peak < 0.5


def test_norm_bound_rejects_an_outlier_with_its_reason_counted():
    b, rejected = bound(), []
    b.observe_own(bounded_update(0, 1.0))
    ups = [bounded_update(1, 1.2, 0), bounded_update(2, 127 * 1e6, 0), bounded_update(3, 0.8, 0)]
    kept = b.admit(ups, lambda u, r, d: rejected.append((u.node_id, r, d)))
    assert [u.node_id for u in kept] == [1, 3]
    assert rejected == [(2, "norm_bound", rejected[0][2])] and "limit" in rejected[0][2]
    assert b.stats["norm_bound"] == 1
    assert bound(0.0).admit(ups, lambda u, r, d: rejected.append(u)) == ups  # 0: off


def test_early_updates_get_the_early_allowance():
    """The first EARLY judged and each sender's first WARMUP: a neighbour ahead of us in a warm-up."""
    assert 8.0 * EARLY_BOOST > 40.0 > 8.0 and bound(early=True).early == (EARLY, WARMUP)
    early, late = bound(early=True), bound()
    for b in (early, late):
        b.observe_own(bounded_update(0, 1.0))
    assert early.admit([bounded_update(1, 40.0)], lambda u, r, d: None)
    assert late.admit([bounded_update(1, 40.0)], lambda u, r, d: None) == []
    assert early.admit([bounded_update(3, 1e6)], lambda u, r, d: None) == []  # absurd: refused all the same


def test_an_insider_climbing_slowly_stays_under_the_honest_swarm():
    b = bound()
    b.observe_own(bounded_update(0, 1.0))
    kept = []
    for seq in range(40):
        for sender in (1, 2):
            b.admit([bounded_update(sender, 1.0, seq)], lambda u, r, d: None)
        kept += b.admit([bounded_update(9, 7.0 ** min(seq, 30), seq)], lambda u, r, d: None)
        b.observe_own(bounded_update(0, 1.0))
    assert kept and max(float(u.values.norm()) for u in kept) <= 8.0 + 1e-5


def test_a_sender_ahead_of_the_swarm_is_judged_by_its_own_norms_within_a_ceiling():
    """A warmed-up honest sender whose updates outgrew the swarm's (it is ahead in its warm-up) is
    judged against its own recent norms, but never above SWARM_CEILING x the swarm's."""
    from gossip.aggregation.bound import SWARM_CEILING

    b = bound()  # factor 8
    for seq in range(WARMUP):
        b.observe_own(bounded_update(0, 10.0))
        for sender in (1, 2):
            b.admit([bounded_update(sender, 10.0, seq)], lambda u, r, d: None)
        assert b.admit([bounded_update(3, 40.0, seq)], lambda u, r, d: None)  # 4x the swarm, honest
    # 300 is over the swarm's limit (8 x 10 = 80) but within 8 x its own recent norm (320): kept
    assert b.admit([bounded_update(3, 300.0, WARMUP)], lambda u, r, d: None) and b.stats["norm_bound"] == 0
    # its own history now reaches 300, yet the reference stops at the ceiling: 8 x (8 x 10) = 640
    ceiling = 8.0 * SWARM_CEILING * 10.0
    assert b.admit([bounded_update(3, ceiling * 0.95, WARMUP + 1)], lambda u, r, d: None)
    assert b.admit([bounded_update(3, ceiling * 1.1, WARMUP + 2)], lambda u, r, d: None) == []
    assert b.stats["norm_deferred"] == 1 and b.settle(lambda u, r, d: None) == [] and b.stats["norm_bound"] == 1


def test_norm_bound_holds_what_it_cannot_judge_yet_and_never_applies_it_unjudged():
    b, residual = bound(), torch.zeros(NUMEL)
    b.bind(residual)
    assert b.admit([bounded_update(1, 0.5), bounded_update(2, 1e6)], lambda u, r, d: None) == []
    residual += 0.2  # one step taken: our dense residual is the reference (norm ~1.41)
    rejected = []
    kept = b.admit([], lambda u, r, d: rejected.append(u.node_id))
    assert [u.node_id for u in kept] == [1] and rejected == [2] and b.held == []


def test_a_final_flush_is_judged_by_its_rms_once_per_sender():
    b = bound()
    b.observe_own(bounded_update(0, 1.0, k=10))
    for sender in (1, 2):
        b.admit([bounded_update(sender, 1.0, k=10)], lambda u, r, d: None)
    dense = bounded_update(1, 1.0 * (NUMEL / 10) ** 0.5, seq=1, k=NUMEL, final=True)  # same RMS, 5x the norm
    rejected = []
    assert b.admit([dense], lambda u, r, d: rejected.append(u)) == [dense]
    again = bounded_update(1, 1.0 * (NUMEL / 10) ** 0.5 * 5, seq=2, k=NUMEL, final=True)  # judged by norm now
    assert b.admit([again], lambda u, r, d: rejected.append(u)) == [] and rejected == [again]


def test_zero_or_tiny_updates_cannot_make_the_bound_refuse_everybody():
    """A neighbour's all-zero update is applied but never becomes a reference (one once set the
    swarm's reference to 0, and every honest update after it was held, then refused), and tiny
    ones cannot pull the reference under 1 / SWARM_CEILING of our own recent norm."""
    from gossip.aggregation.bound import SWARM_CEILING

    for poison in (0.0, 1e-30):
        b, rejected = bound(factor=SWARM_CEILING), []
        note = rejected.append
        b.observe_own(bounded_update(0, 1.0))
        for seq in range(20):
            b.admit([bounded_update(3, poison, seq)], lambda u, r, d, note=note: note(u.node_id))
        kept = b.admit([bounded_update(1, 0.9, 0), bounded_update(2, 0.5, 0)],
                       lambda u, r, d, note=note: note(u.node_id))
        assert [u.node_id for u in kept] == [1, 2] and 1 not in rejected and 2 not in rejected, poison
        assert b.admit([bounded_update(1, 100.0, 1)], lambda u, r, d: None) == []  # still a bound
    b = bound()
    b.observe_own(bounded_update(0, 0.0))  # our own zero update is no reference either
    assert b.norms == {}


def test_an_update_a_little_over_its_limit_waits_and_is_applied_once_within_it():
    """A neighbour ahead of us in its warm-up: its update is over the limit our own tiny norms set,
    is deferred (not refused: every other peer applied it), and applied once our norms have grown;
    one still over at the end, or far over, is refused."""
    from gossip.aggregation.bound import DEFER_SPAN, DEFER_TRIES

    b, rejected = bound(factor=8.0), []
    note = rejected.append
    b.observe_own(bounded_update(0, 0.01))
    far = bounded_update(2, 0.08 * DEFER_SPAN * 2, 0)  # over the limit (0.08) by more than DEFER_SPAN
    assert b.admit([bounded_update(1, 0.3, 0), far], lambda u, r, d, note=note: note(u.node_id)) == []
    assert rejected == [2] and b.stats["norm_deferred"] == 1
    for _ in range(3):
        b.observe_own(bounded_update(0, 0.5))  # our warm-up: the limit is 8 x 0.5 now
    kept = b.admit([], lambda u, r, d, note=note: note(u.node_id))
    assert [(u.node_id, u.seq) for u in kept] == [(1, 0)] and b.deferred == []
    assert b.stats["norm_deferred_applied"] == 1 and rejected == [2]
    b.admit([bounded_update(3, 100.0, 0)], lambda u, r, d, note=note: note(u.node_id))  # 25x over: waits
    assert b.settle(lambda u, r, d, note=note: note(u.node_id)) == [] and rejected == [2, 3]
    b.admit([bounded_update(3, 100.0, 1)], lambda u, r, d, note=note: note(u.node_id))
    for _ in range(DEFER_TRIES):  # or after its tries
        b.admit([], lambda u, r, d, note=note: note(u.node_id))
    assert rejected == [2, 3, 3] and b.deferred == []


def test_norm_bound_state_round_trips_exactly(tmp_path):
    b = bound()
    b.bind(torch.zeros(NUMEL))
    b.admit([bounded_update(4, 1.0)], lambda u, r, d: None)  # held: nothing to judge it by
    b.observe_own(bounded_update(0, 1.0))
    for seq in range(5):
        b.admit([bounded_update(1, 1.0 + seq, seq), bounded_update(2, 50.0 * seq, seq)], lambda u, r, d: None)
    path = tmp_path / "bound.pt"
    torch.save(b.state_dict(), path)
    c = bound()
    c.load_state_dict(torch.load(path, weights_only=True))
    assert c.state_dict().keys() == b.state_dict().keys() and c.stats == b.stats and c.peak == b.peak
    assert c.norms == b.norms and c.rms == b.rms and [u.seq for u in c.held] == [u.seq for u in b.held]
    assert [(u.seq, t) for u, t in c.deferred] == [(u.seq, t) for u, t in b.deferred] and b.deferred
    probe = [bounded_update(1, 30.0, 9), bounded_update(2, 3.0, 9), bounded_update(3, 5.0, 9)]
    assert [u.node_id for u in c.admit(probe, lambda u, r, d: None)] == \
        [u.node_id for u in b.admit(probe, lambda u, r, d: None)]
