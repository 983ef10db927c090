"""Robust aggregation policies on real decoded updates (and, slow, a lock-step swarm under attack)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gossip import aggregation as aggregate
from gossip import config
from gossip.aggregation import Local, clip
from gossip.aggregation.windowed import Windowed
from gossip.protocol import wire
from gossip.runtime import checkpoint
from gossip.sim.attacks import build_update

NUMEL = 400
ROBUST = ("clip", "trimmed_mean", "median", "centered_clip")
LIMITS = wire.Limits(numel=NUMEL, schema_hash=7, max_bytes=1 << 20, peers=16)


def update(sender: int, values: np.ndarray, indices: np.ndarray | None = None, seq: int = 0,
           final: bool = False) -> wire.DecodedUpdate:
    """A real DecodedUpdate: packed to protobuf bytes and validated like a neighbour's."""
    msg = build_update(indices, values.astype(np.float32), NUMEL)
    data = wire.pack_update(msg, node_id=sender, seq=seq, step=0, epoch=0, confidence=0.5,
                            schema_hash=7, final=final)
    u = wire.unpack(data, LIMITS)
    assert isinstance(u, wire.DecodedUpdate)
    return u


def policy(name: str, **comm):
    cfg = config.load(None, [f"communication.aggregation={name}", "communication.trim_ratio=0.3",
                             *[f"communication.{k}={v}" for k, v in comm.items()]])
    return aggregate.make_policy(cfg.communication)


def fold_now(name: str, updates: list[wire.DecodedUpdate], **comm) -> torch.Tensor:
    """What the policy adds to a zero model for one window holding ``updates``."""
    flat = torch.zeros(NUMEL)
    p = policy(name, **comm)
    p.fold(flat, updates, Local(step=0, confidence=0.5))
    p.flush(flat)
    return flat


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


@pytest.fixture
def honest():
    rng = np.random.default_rng(0)
    h = rng.normal(0, 1, NUMEL)
    return h, [h + rng.normal(0, 0.3, NUMEL) for _ in range(6)]


@pytest.mark.parametrize("name", ROBUST)
def test_registered_and_built_by_make_policy(name):
    assert name in aggregate.POLICIES
    assert isinstance(policy(name), Windowed)


@pytest.mark.parametrize("name", ROBUST)
def test_identical_honest_updates_add_up_like_plain_gossip(name):
    x = np.linspace(-1, 1, NUMEL)
    got = fold_now(name, [update(s, x) for s in range(5)])
    assert torch.allclose(got, torch.from_numpy(5 * x).float(), atol=1e-5)


@pytest.mark.parametrize("name", ROBUST)
def test_honest_noise_costs_little(name, honest):
    h, rows = honest
    total = torch.from_numpy(np.sum(rows, axis=0)).float()
    got = fold_now(name, [update(s, r) for s, r in enumerate(rows)])
    assert cos(got, total) > 0.9
    assert 0.6 < float(got.norm() / total.norm()) < 1.2


@pytest.mark.parametrize("name", ROBUST)
@pytest.mark.parametrize("attack", ["sign_flip", "huge_noise", "inflated"])
def test_two_liars_of_eight_cannot_turn_or_blow_up_the_sum(name, attack, honest):
    h, rows = honest
    rng = np.random.default_rng(1)
    liars = {"sign_flip": [-4 * h, -4 * h], "huge_noise": [rng.normal(0, 50, NUMEL) for _ in range(2)],
             "inflated": [10 * h, 10 * h]}[attack]
    ups = [update(s, r) for s, r in enumerate(rows)] + [update(10 + i, r) for i, r in enumerate(liars)]
    plain = torch.from_numpy(np.sum(rows + liars, axis=0)).float()  # what plain gossip adds
    got = fold_now(name, ups)
    honest_sum = torch.from_numpy(np.sum(rows, axis=0)).float()
    if attack == "sign_flip":
        assert cos(plain, honest_sum) < 0  # plain gossip is turned around
    assert cos(got, honest_sum) > 0.7
    assert float(got.norm()) < 2.0 * float(honest_sum.norm())


def test_clip_drops_updates_against_our_own_direction(honest):
    """After our own updates point along h, a flipped neighbour update is dropped, an honest one kept."""
    h, rows = honest
    p = policy("clip")
    flat = torch.zeros(NUMEL)
    p.bind_direction(torch.from_numpy(h).float())
    local = Local(step=0, confidence=0.5)
    p.fold(flat, [update(1, -rows[0])], local)
    assert float(flat.abs().sum()) == 0.0 and p.stats["opposed"] == 1
    p.fold(flat, [update(2, rows[1])], local)
    assert cos(flat, torch.from_numpy(rows[1]).float()) > 0.999 and p.stats["opposed"] == 1
    sparse = np.arange(0, NUMEL, 7)  # judged on the elements it touches only
    p.fold(flat, [update(3, -h[sparse], sparse)], local)
    assert p.stats["opposed"] == 2


def test_clip_drops_a_flipped_final_flush(honest):
    """Final (dense) updates are windowed: a sign-flipped row is dropped there too."""
    h, rows = honest
    p = policy("clip")
    p.bind_direction(torch.from_numpy(h).float())
    flat = torch.zeros(NUMEL)
    finals = [update(s, r, seq=1, final=True) for s, r in enumerate(rows[:3], start=1)]
    p.fold(flat, [*finals, update(9, -5 * h, seq=1, final=True)], Local(step=0, confidence=0.5))
    p.flush(flat)
    assert p.stats["opposed"] == 1
    assert cos(flat, torch.from_numpy(np.sum(rows[:3], axis=0)).float()) > 0.99


def test_clip_gives_a_distrusted_senders_share_to_the_trusted_ones(honest):
    h, rows = honest
    p = policy("clip")
    p.bind_direction(torch.from_numpy(h).float())
    local = Local(step=0, confidence=0.5)
    flat = torch.zeros(NUMEL)
    for seq in range(4):
        p.fold(flat, [update(1, rows[seq], seq=seq), update(2, rows[seq + 1], seq=seq),
                      update(9, -rows[seq], seq=seq)], local)
    assert p.stats["opposed"] == 3 and p.stats["distrusted"] == 1  # the 4th check makes it distrusted
    assert p.trust_boost() == pytest.approx(4 / 3)  # (3 senders + us) / (2 trusted + us)


def test_clip_distrusts_by_the_mean_cosine_not_single_verdicts():
    """A sender that alternates weak agreement with strong opposition is opposed only half the
    time (no majority) but distrusted by its mean cosine; an honest sender with one opposed
    update among agreeing ones stays trusted."""
    p = policy("clip")
    own = np.zeros(NUMEL, dtype=np.float32)
    own[:2] = 1.0
    p.bind_direction(torch.from_numpy(own))
    good = np.zeros(NUMEL, dtype=np.float32)
    good[:3] = [1.0, 1.0, 0.5]
    weak = np.zeros(NUMEL, dtype=np.float32)
    weak[:3] = [0.1, 0.0, 1.0]  # cosine with ours about +0.07
    local = Local(step=0, confidence=0.5)
    flat = torch.zeros(NUMEL)
    for seq in range(clip.DISTRUST_MIN):
        p.fold(flat, [update(1, -good if seq % 2 else weak, seq=seq),
                      update(2, -good if seq == 1 else good, seq=seq)], local)
    assert p.stats["opposed"] == 2  # seq 1 of both senders
    assert p.stats["distrusted"] == 1  # sender 1's 4th update: mean cosine below DISTRUST_MEAN_COS
    assert p.trust_boost() == pytest.approx(3 / 2)


def test_clip_trust_and_final_reference_survive_a_checkpoint(honest):
    """A distrusted sender stays distrusted after a restart, and our final flush stays the reference."""
    h, rows = honest
    p = policy("clip")
    p.bind_direction(torch.from_numpy(h).float())
    for seq in range(clip.DISTRUST_MIN):
        p.fold(torch.zeros(NUMEL), [update(9, -rows[seq], seq=seq)], Local(step=0, confidence=0.5))
    p.observe_own(update(0, -h, seq=5, final=True), NUMEL)  # our final flush points the other way
    q = policy("clip")
    q.load_state_dict(p.state_dict())
    q.bind_direction(torch.from_numpy(h).float())
    assert q.trust_boost() == pytest.approx(2 / 1)
    q.fold(torch.zeros(NUMEL), [update(9, h, seq=4)], Local(step=0, confidence=0.5))  # agrees, once
    assert q.stats["distrusted"] == p.stats["distrusted"] + 1
    flat = torch.zeros(NUMEL)
    q.fold(flat, [update(s, r, seq=1, final=True) for s, r in enumerate([h, -h], start=1)], Local(step=0, confidence=0.5))
    q.flush(flat)
    assert cos(flat, torch.from_numpy(-h).float()) > 0.99  # judged by the final, not the live residual


def test_sparse_semantics_missing_is_zero():
    """Every sender also touches one element nobody else touches: median drops those, centered_clip keeps them."""
    ups = [update(s, np.array([1 + 0.1 * s, 1 + 0.1 * s, 1.0]), np.array([3, 50, 100 + s])) for s in range(5)]
    med = fold_now("median", ups)
    cc = fold_now("centered_clip", ups)
    assert med[3] == pytest.approx(5 * 1.2) and float(med[100:105].abs().sum()) == 0.0
    assert cc[3] == pytest.approx(5 * 1.2, rel=0.05)
    assert all(float(cc[100 + s]) > 0.7 for s in range(5))


def test_window_closes_when_every_known_sender_is_in_or_when_old():
    p = policy("median", sync_interval=3)
    flat = torch.zeros(NUMEL)
    x = np.ones(NUMEL)
    p.fold(flat, [update(1, x, seq=0), update(2, x, seq=0)], Local(step=0, confidence=0.5))  # both known now
    assert p.fold(flat, [update(1, x, seq=1)], Local(step=1, confidence=0.5)) == 0
    assert p.fold(flat, [], Local(step=2, confidence=0.5)) == 0
    before = flat.clone()
    assert p.fold(flat, [update(2, x, seq=1)], Local(step=2, confidence=0.5)) == 2  # sender 2 is in
    assert torch.allclose(flat - before, torch.full((NUMEL,), 2.0))
    assert p.fold(flat, [update(1, x, seq=2)], Local(step=3, confidence=0.5)) == 0
    assert p.fold(flat, [], Local(step=6, confidence=0.5)) == 1  # 3 steps old: closed without sender 2
    # padded to a majority of the 2 known senders with a zero row: median of (1, 0) = 0.5, times 2
    assert torch.allclose(flat - before, torch.full((NUMEL,), 3.0))


def test_same_sender_twice_in_a_window_is_one_row():
    x = np.ones(NUMEL)
    got = fold_now("median", [update(1, x, seq=0), update(1, x, seq=1), update(2, 2 * x)])
    assert torch.allclose(got, torch.full((NUMEL,), 4.0))  # rows 2x and 2x: median 2, times 2 senders


def test_a_lone_liar_in_a_window_is_padded_away():
    """Five senders are known; a window holding only a liar's update is padded to a majority of zeros."""
    p = policy("median", sync_interval=1)
    flat = torch.zeros(NUMEL)
    p.fold(flat, [update(s, np.ones(NUMEL)) for s in range(5)], Local(step=0, confidence=0.5))
    before = flat.clone()
    p.fold(flat, [update(9, 100 * np.ones(NUMEL))], Local(step=1, confidence=0.5))
    p.fold(flat, [], Local(step=2, confidence=0.5))
    assert torch.equal(before, flat)


def test_weight_scales_what_is_folded_in():
    x = np.ones(NUMEL)
    for name in ROBUST:
        p = policy(name)
        flat = torch.zeros(NUMEL)
        p.fold(flat, [update(s, x) for s in range(4)], Local(0, 0.5), weight=0.25)
        p.flush(flat)
        assert torch.allclose(flat, torch.ones(NUMEL), atol=1e-5), name


def test_dense_final_updates_mix_with_sparse_ones():
    ups = [update(s, np.ones(NUMEL), final=True) for s in range(3)]
    ups.append(update(3, np.array([2.0]), np.array([5])))
    got = fold_now("trimmed_mean", ups)  # rows [1, 1, 1, 0] per element: trim one each end, mean 1, times 4
    assert torch.allclose(got, torch.full((NUMEL,), 4.0))


def test_fixed_clip_norm_is_honoured():
    got = fold_now("clip", [update(1, 100 * np.ones(NUMEL))], clip_norm=2.0)
    assert float(got.norm()) == pytest.approx(2.0, rel=1e-4)


@pytest.mark.parametrize("name", ROBUST)
def test_buffered_window_survives_a_checkpoint(name):
    p = policy(name)
    x = np.arange(NUMEL, dtype=np.float64) / NUMEL
    p.fold(torch.zeros(NUMEL), [update(s, x) for s in (1, 2, 3)], Local(0, 0.5))  # three senders known
    finals = [update(1, x, seq=1, final=True), update(2, -x[::7], np.arange(0, NUMEL, 7), seq=1, final=True)]
    p.fold(torch.zeros(NUMEL), finals, Local(1, 0.5))  # held: sender 3's final is missing
    state = checkpoint.decode(checkpoint.encode({"format": checkpoint.FORMAT, "policy": p.state_dict()}))
    q = policy(name)
    q.load_state_dict(state["policy"])
    a, b = torch.zeros(NUMEL), torch.zeros(NUMEL)
    p.flush(a)
    q.flush(b)
    assert torch.equal(a, b) and float(a.abs().sum()) > 0


# ---------------------------------------------------------------- a swarm under attack (in-process)


@pytest.mark.slow
def test_robust_aggregation_saves_a_swarm_from_sign_flippers(data_root):
    """8 peers, 2 of them sign-flippers, in the lock-step swarm of gossip.experiments.bench_robust (small)."""
    from gossip.experiments.bench_robust import run_cell
    from gossip.training.data import load_dataset
    from gossip.training.trainer import set_threads

    set_threads(1)
    base = ["peers=8", "model.name=mnist_tiny", "data.limit_train=8000", "data.limit_test=1000",
            "train.epochs=1", "train.batch_size=16", "train.lr=0.05", "train.threads=1"]
    dataset = load_dataset(config.load(None, base).data)
    attack = ["security.attack=sign_flip", "security.attackers=[0,1]"]

    def acc(*extra):
        return run_cell(config.load(None, [*base, *extra]), dataset, jitter=2)["honest_mean"]

    clean, attacked = acc(), acc(*attack)
    clipped = acc(*attack, "communication.aggregation=clip")
    centered = acc(*attack, "communication.aggregation=centered_clip")
    print(f"clean {clean:.4f} attacked {attacked:.4f} clip {clipped:.4f} centered_clip {centered:.4f}")
    assert attacked < clean - 0.1  # two liars of eight wreck plain gossip
    for defended in (clipped, centered):  # each wins back most of the damage (measured: 0.83, 0.85 of 0.92)
        assert defended - attacked > 0.6 * (clean - attacked)
