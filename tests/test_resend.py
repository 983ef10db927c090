"""Selective retransmission (gossip.runtime.resend): the sender's buffer and rate limit, the receiver's
asking rules, and a real swarm on lossy links that loses (almost) no update."""

from __future__ import annotations

import faultkit as fk
import pytest

from gossip.protocol import wire
from gossip.runtime import resend
from gossip.runtime.ledger import Ledger

LIMITS = wire.Limits(numel=10, schema_hash=0, max_bytes=1 << 20, peers=4)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Link:
    """Transport.send's contract: queue up to ``room`` messages, then refuse."""

    def __init__(self, room: int = 10**6) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.room = room

    def __call__(self, nbr: int, data: bytes) -> bool:
        if len(self.sent) >= self.room:
            return False
        self.sent.append((nbr, data))
        return True


def request(seqs, node_id: int = 1, origin: int = 0) -> wire.ResendRequest:
    return wire.ResendRequest(node_id=node_id, origin=origin, seqs=tuple(seqs))


def test_buffer_keeps_the_newest_by_count_and_bytes():
    buf = resend.Buffer(keep=3, keep_bytes=100)
    for seq in range(5):
        buf.keep(seq, b"x%d" % seq)
    assert len(buf) == 3
    assert buf.answer(1, [0, 1, 2, 3, 4], 0.0).found == [b"x2", b"x3", b"x4"]
    buf.keep(5, bytes(97))
    assert len(buf) == 2 and buf.nbytes == 99  # x4 and the new one
    buf.keep(6, bytes(500))  # over the byte bound alone: the newest is kept anyway
    assert len(buf) == 1 and buf.nbytes == 500


def test_buffer_rate_limits_each_requester_separately():
    buf = resend.Buffer(keep=200, rate_per_s=10, burst=20)
    for seq in range(200):
        buf.keep(seq, b"u")
    first = buf.answer(1, range(64), now=0.0)
    assert (len(first.found), first.refused, first.missing) == (20, 44, 0)
    assert len(buf.answer(1, range(64), now=0.0).found) == 0
    assert len(buf.answer(2, range(64), now=0.0).found) == 20  # another requester has its own bucket
    assert len(buf.answer(1, range(64), now=1.0).found) == 10  # refilled at rate_per_s
    assert len(buf.answer(1, range(64), now=100.0).found) == 20  # never above the burst
    assert buf.answer(1, [500, 501], now=200.0).missing == 2


def test_asker_waits_the_grace_reasks_and_gives_up_asking():
    ask = resend.Asker(grace_s=0.3, reask_s=1.0, max_asks=2)
    assert ask.due(1, [2, 3], now=0.0) == []  # maybe only reordered
    assert ask.due(1, [2, 3], now=0.35) == [2, 3]
    assert ask.due(1, [2, 3], now=0.9) == []  # asked recently
    assert ask.filled(1, 3) and not ask.filled(1, 7)
    assert ask.due(1, [2], now=1.4) == [2]
    assert ask.due(1, [2], now=5.0) == []  # max_asks reached: left to the give-up
    assert ask.due(1, list(range(100, 300)), now=6.0) == []
    assert ask.due(1, list(range(100, 300)), now=6.5) == list(range(100, 100 + wire.MAX_RESEND_SEQS))


def test_resender_answers_only_for_its_own_updates_and_counts():
    clock, link = Clock(), Link(room=3)
    r = resend.Resender(0, clock=clock)
    for seq in range(10):
        r.sent(seq, b"update-%d" % seq)
    r.answer(request([1, 2, 500]), link)
    assert link.sent == [(1, b"update-1"), (1, b"update-2")]
    r.answer(request([3, 4]), link)  # the link's queue takes one more
    r.answer(request([5], origin=2), link)  # somebody else's update: not ours to answer
    assert r.counts["resent"] == 3 and r.counts["resend_missing"] == 1
    assert r.counts["resend_refused"] == 2


def test_resender_asks_a_neighbour_for_its_gaps():
    clock, link = Clock(), Link()
    r = resend.Resender(0, clock=clock)
    led = Ledger(0, 3, now=0.0)
    for seq in (0, 3):
        led.first_time(1, seq)
    r.ask(led, [1, 2], link)
    assert link.sent == []
    clock.now += resend.GRACE_S + 0.01
    r.ask(led, [1, 2], link)
    (nbr, data), = link.sent
    assert nbr == 1 and wire.unpack(data, LIMITS) == request([1, 2], node_id=0, origin=1)
    led.first_time(1, 2)
    r.arrived(1, 2)
    assert r.counts == {**r.counts, "resend_requested": 2, "resend_recovered": 1}


# ---------------------------------------------------------------- real peers on lossy links


@pytest.mark.slow
def test_lossy_links_lose_no_update(data_root, tmp_path):
    """10% of messages dropped on every link of a 3-peer swarm: the receivers ask for what is
    missing and get it resent, so every peer applies (almost) every update of every other peer
    exactly once, and whatever it did not apply it counted as lost (nothing vanishes silently)."""
    cfg = fk.make_cfg(**{"peers": 3, "link.drop": 0.1, "data.limit_train": 3000, "data.limit_test": 1000,
                         "train.epochs": 1})
    _, procs = fk.start_swarm(tmp_path, cfg)
    assert fk.wait_all(procs) == {0: 0, 1: 0, 2: 0}
    results = {p: fk.result(tmp_path, p) for p in range(3)}
    assert sum(r["resent"] for r in results.values()) > 0
    assert sum(r["resend_recovered"] for r in results.values()) > 0
    for p, r in results.items():
        owed = {o: results[o]["next_seq"] for o in results if o != p}
        applied = {int(o): n for o, n in r["applied_by_origin"].items()}
        assert all(applied.get(o, 0) <= n for o, n in owed.items()), f"peer {p} applied an update twice"
        unapplied = sum(n - applied.get(o, 0) for o, n in owed.items())
        assert unapplied == r["updates_lost"], f"peer {p}: {unapplied} not applied, {r['updates_lost']} counted lost"
        assert r["updates_lost"] <= 0.02 * sum(owed.values())  # without resending: ~10%
