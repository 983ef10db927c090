"""The peer's loop-side parts, in process: no sockets, no subprocesses, a fake clock where time matters.

Dispatcher (spoofing, duplicates, relay), Membership (two-phase finish, liveness, lost updates),
CatchUp (adopting a state from chunks), StateServer (who answers a StateRequest), and a real
Peer loop around a real Worker whose batch holds the training lock for 3 s: the heartbeats must
not stall while a StateRequest waits for that batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gossip import config
from gossip._proto import gossip_pb2 as pb
from gossip.errors import ProtocolError
from gossip.protocol import wire
from gossip.protocol.codec.dense import encode_dense
from gossip.runtime.bridge import FINISHED, Bridge, StateAsked
from gossip.runtime.catchup import CatchUp, StateServer, pick_source
from gossip.runtime.dispatch import Dispatcher
from gossip.runtime.ledger import Ledger
from gossip.runtime.membership import Membership
from gossip.runtime.outcome import Counters
from gossip.runtime.progress import Progress
from gossip.runtime.resend import Resender
from gossip.runtime.testing import Clock, MemoryLink
from gossip.sim.attacks import build_update

NUMEL, HASH, PEERS, SILENCE = 50, 0x1234, 4, 5.0
LIMITS = wire.Limits(numel=NUMEL, schema_hash=HASH, max_bytes=1 << 20, peers=PEERS)


def update(origin: int, seq: int, *, via: int | None = None) -> bytes:
    """Origin's update ``seq`` (values = seq + 1 at indices 0..2), relayed by ``via`` if given."""
    msg = build_update(np.arange(3, dtype=np.int64), np.full(3, seq + 1.0, dtype=np.float32), NUMEL)
    data = wire.pack_update(msg, node_id=origin, seq=seq, step=seq, epoch=0, confidence=0.5, schema_hash=HASH)
    return data if via is None else wire.relay(data, from_id=via)


class Parts:
    """Peer 0's loop-side parts around a recording link, with a fake clock."""

    def __init__(self, neighbours=(1, 2), relay: bool = False) -> None:
        self.clock = Clock()
        self.ledger = Ledger(0, PEERS, self.clock())
        self.counters = Counters()
        self.link = MemoryLink(neighbours)
        self.delivered: list[wire.DecodedUpdate] = []
        self.finished: list[bool] = []
        self.asked: list[int] = []
        self.fatal: list[Exception] = []
        self.greeted: list[int] = []
        self.membership = Membership(0, self.ledger, self.link.broadcast, self.counters, silence_s=SILENCE,
                                     on_all_delivered=lambda: self.finished.append(True), clock=self.clock)
        self.catchup = CatchUp(0, self.ledger, self.counters, self.link.send, numel=NUMEL, schema_hash=HASH)
        self.dispatcher = Dispatcher(
            0, list(neighbours), relay=relay, limits=LIMITS, config_hash="ours", ledger=self.ledger,
            counters=self.counters, membership=self.membership, catchup=self.catchup,
            resend=Resender(0, self.clock), link=self.link, deliver=self.delivered.append,
            ask_state=self.asked.append, on_fatal=self.fatal.append, clock=self.clock, greet=self.greeted.append,
            on_step=lambda: self.step_news.append(dict(self.dispatcher.neighbour_step)))
        self.step_news: list[dict[int, int]] = []

    def handle(self, sender, *frames: bytes) -> None:
        self.dispatcher.handle(sender, list(frames))

    def done(self, origin: int, last_seq: int, complete: bool = False) -> None:
        self.handle(origin, wire.pack_done(node_id=origin, last_seq=last_seq, complete=complete))


# ---------------------------------------------------------------- dispatcher


def test_spoofed_identities_are_rejected_and_counted():
    p = Parts()
    p.handle(2, update(1, 0))  # from_id 1 on peer 2's link
    p.handle(1, update(2, 0, via=1))  # a full mesh: peer 1 may not speak for peer 2
    p.handle(1, wire.pack_state_request(node_id=2, schema_hash=HASH))
    p.handle(1, wire.pack_resend_request(node_id=2, origin=0, seqs=[0]))
    p.handle(1, update(0, 0, via=1))  # our own id as the origin
    p.handle(1, wire.relay(wire.pack_snapshot(encode_dense(torch.ones(NUMEL)), node_id=2, version=0, step=0,
                                              epoch=0, schema_hash=HASH), from_id=1))  # a teacher in 2's name
    p.handle(3, update(3, 0))  # not a neighbour
    p.handle(None, update(1, 0))  # no identity at all
    p.handle(1, update(1, 0), update(1, 1))  # two frames
    p.handle(1, b"\xff garbage")
    assert p.counters.rejected == {"spoofed_node_id": 5, "bad_node_id": 1, "unknown_sender": 2,
                                   "bad_frames": 1, "parse_error": 1}
    assert p.delivered == [] and p.asked == [] and p.link.sent == []
    p.handle(1, wire.pack_state_request(node_id=1, schema_hash=HASH))
    assert p.asked == [1]  # the genuine request goes to the state server


def test_a_neighbours_own_update_tells_its_step_and_a_relayed_one_does_not():
    """The lead bound's news: an update a neighbour originated says its step at encoding (every
    sync, where heartbeats come once a second); an older one (a resent copy) never moves it back."""
    p = Parts(neighbours=(1, 2), relay=True)
    p.handle(1, wire.pack_heartbeat(node_id=1, step=3, epoch=0))
    p.handle(1, update(1, 7))  # update(origin, seq) encodes at step = seq
    assert p.dispatcher.neighbour_step == {1: 7} and p.step_news == [{1: 7}]
    p.handle(1, update(1, 5))  # older: no news
    p.handle(1, update(2, 40, via=1))  # peer 2's update relayed by 1: says nothing of 1's step
    assert p.dispatcher.neighbour_step == {1: 7} and p.step_news == [{1: 7}]
    p.handle(2, update(2, 9))
    assert p.dispatcher.neighbour_step == {1: 7, 2: 9} and len(p.step_news) == 2
    p.handle(1, wire.pack_heartbeat(node_id=1, step=2, epoch=0))  # a restarted neighbour: heartbeats tell the truth
    assert p.dispatcher.neighbour_step[1] == 2
    # when each step last moved (a step that stands still for the silence period holds nobody)
    moved = p.dispatcher.step_moved_at[1]
    p.clock.advance(3)
    p.handle(1, wire.pack_heartbeat(node_id=1, step=2, epoch=0))  # the same step: no movement
    assert p.dispatcher.step_moved_at[1] == moved
    p.handle(1, wire.pack_heartbeat(node_id=1, step=3, epoch=0))
    assert p.dispatcher.step_moved_at[1] == moved + 3
    p.clock.advance(1)
    p.handle(1, update(1, 8))
    assert p.dispatcher.step_moved_at[1] == moved + 4 and p.dispatcher.neighbour_step[1] == 8


def test_duplicates_are_dropped_and_new_updates_delivered_once():
    p = Parts()
    for frame in (update(1, 0), update(1, 1), update(1, 0), update(2, 0), update(1, 1)):
        p.handle(1 if wire.unpack(frame, LIMITS).node_id == 1 else 2, frame)
    assert [(u.node_id, u.seq) for u in p.delivered] == [(1, 0), (1, 1), (2, 0)]
    assert p.counters.duplicates == 2 and not p.counters.rejected
    assert p.link.sent == []  # a full mesh relays nothing


def test_a_copy_of_a_recorded_update_is_never_decoded(monkeypatch):
    """Relays bring most updates more than once on a sparse topology: a copy is a duplicate from
    its envelope alone (and a sign of life), while a new one, or a copy from a stranger, is decoded."""
    p = Parts(neighbours=(1, 2, 3), relay=True)
    calls = []
    real = wire.decode_update
    monkeypatch.setattr(wire, "decode_update", lambda *a: calls.append(1) or real(*a))
    p.handle(1, update(2, 4, via=1))
    p.handle(3, update(2, 4, via=3))  # the same update around the cycle
    assert len(calls) == 1 and p.counters.duplicates == 1 and 3 in p.dispatcher.heard
    p.handle(None, update(2, 4, via=1))  # no identity: the full path rejects it
    assert p.counters.rejected == {"unknown_sender": 1} and len(calls) == 2 and p.counters.duplicates == 1
    assert [(u.node_id, u.seq) for u in p.delivered] == [(2, 4)]


def test_a_bug_behind_one_frame_is_counted_and_the_next_frame_is_handled(monkeypatch):
    p = Parts()
    real = p.dispatcher._on_update
    monkeypatch.setattr(p.dispatcher, "_on_update", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    p.handle(1, update(1, 0))  # must not raise: the receive loop would end with it
    assert p.counters.rejected == {"internal_error": 1}
    monkeypatch.setattr(p.dispatcher, "_on_update", real)
    p.handle(1, update(1, 1))
    assert [(u.node_id, u.seq) for u in p.delivered] == [(1, 1)]


def test_shortest_paths_relay_skips_neighbours_no_farther_from_the_origin_unless_a_peer_is_down():
    p = Parts(neighbours=(1, 2, 3), relay=True)
    p.dispatcher.relay_to = {2: (3,), 1: (2, 3), 3: ()}
    p.handle(1, update(2, 0, via=1))
    assert [n for n, _ in p.link.sent] == [3]  # 1 sent it; 2 is the origin; 3 is farther: only 3
    p.handle(2, update(3, 0, via=2))
    assert len(p.link.sent) == 1  # origin 3: nobody of ours is farther
    p.ledger.views[1].down = True  # a path may be missing: flood
    p.handle(2, update(3, 1, via=2))
    assert [n for n, _ in p.link.sent[1:]] == [1]


def test_relay_readdresses_to_the_other_neighbours_only():
    p = Parts(neighbours=(1, 2, 3), relay=True)
    p.handle(1, update(2, 4, via=1))  # origin 2's update, relayed to us by 1
    assert [(u.node_id, u.seq) for u in p.delivered] == [(2, 4)]
    assert [n for n, _ in p.link.sent] == [3]  # not back to the sender, nor to the origin
    out = wire.unpack(p.link.sent[0][1], LIMITS)
    assert (out.node_id, out.seq, out.from_id, out.hops) == (2, 4, 0, 2)
    assert torch.equal(out.values, p.delivered[0].values)
    assert p.counters.updates_sent == 1
    p.handle(3, update(2, 4, via=3))  # the same update around the cycle: a duplicate, not relayed
    p.handle(3, update(0, 0, via=3))  # our own update coming back: dropped silently
    assert len(p.link.sent) == 1 and p.counters.duplicates == 1 and not p.counters.rejected


def test_a_different_model_is_fatal_and_updates_wait_while_catching_up():
    p = Parts()
    hello = dict(node_id=1, config_hash="ours", address="tcp://x:1", epochs=1)
    p.handle(1, wire.pack_hello(schema_hash=HASH, **hello))
    assert p.fatal == []
    p.handle(1, wire.pack_hello(schema_hash=HASH + 1, **hello))
    assert len(p.fatal) == 1 and "different model" in str(p.fatal[0])
    p.catchup.active = True
    p.handle(1, update(1, 0))
    assert p.delivered == [] and [(u.node_id, u.seq) for u in p.catchup.held] == [(1, 0)]


# ---------------------------------------------------------------- membership


def test_two_phase_finish():
    p = Parts(neighbours=(1, 2, 3))
    p.membership.training_done(last_seq=4)
    done = wire.unpack(p.link.sent[-1][1], LIMITS)
    assert isinstance(done, wire.Done) and (done.last_seq, done.complete) == (4, False)
    p.done(1, -1)
    p.done(2, 1)  # two updates of peer 2 still to come
    p.done(3, -1)
    assert not p.finished
    p.handle(2, update(2, 0))
    assert not p.finished
    p.handle(2, update(2, 1))
    assert p.finished == [True]  # FINISHED to the thread, once
    complete = wire.unpack(p.link.sent[-1][1], LIMITS)
    assert isinstance(complete, wire.Done) and complete.complete and complete.last_seq == 4
    assert not p.ledger.all_complete()
    for peer in (1, 2, 3):
        p.done(peer, -1 if peer != 2 else 1, complete=True)
    assert p.ledger.all_complete()
    stop = threading.Event()
    asyncio.run(asyncio.wait_for(p.membership.linger(stop, finish_s=60), 2))  # returns at once
    p.membership.heartbeat(p.clock())
    assert wire.unpack(p.link.sent[-1][1], LIMITS) == wire.Done(node_id=0, last_seq=4, complete=True)  # repeated


def test_a_silent_peer_is_marked_down_and_not_waited_for():
    p = Parts(neighbours=(1, 2, 3))
    p.membership.training_done(last_seq=-1)
    p.done(1, -1)
    p.done(2, -1)
    p.clock.advance(SILENCE - 1)
    assert p.membership.check_down(p.clock()) == [] and not p.finished
    p.handle(1, wire.pack_heartbeat(node_id=1, step=0, epoch=0))
    p.handle(2, wire.pack_heartbeat(node_id=2, step=0, epoch=0))
    p.clock.advance(2)
    assert p.membership.check_down(p.clock()) == [3]  # silent for SILENCE + 1 s
    assert p.ledger.views[3].down and p.finished == [True]


def test_lost_updates_are_given_up_after_the_silence():
    p = Parts()
    p.membership.training_done(last_seq=-1)
    p.done(1, -1)
    p.membership.on_done(wire.Done(node_id=3, last_seq=-1, complete=False))  # heard through a relay
    p.handle(2, update(2, 0))
    p.done(2, 3)  # seqs 1..3 were lost on the way
    p.membership.heartbeat(p.clock.advance(SILENCE - 1))
    assert p.counters.updates_lost == 0 and not p.finished
    p.membership.heartbeat(p.clock.advance(2))
    assert p.counters.updates_lost == 3 and p.finished == [True]
    repeated = [wire.unpack(d, LIMITS) for _, d in p.link.sent]
    assert sum(isinstance(m, wire.Done) and not m.complete for m in repeated) >= 2 * 2  # said again


# ---------------------------------------------------------------- catching up


def test_pick_source_wants_a_full_epoch_or_a_quarter_after_a_resume():
    steps = {1: 130, 2: 90}
    assert pick_source(20, steps, {1, 2}, 100, resume=False) == 1
    assert pick_source(40, steps, {1, 2}, 100, resume=False) is None
    assert pick_source(100, steps, {1, 2}, 100, resume=True) == 1
    assert pick_source(0, steps, {2}, 100, resume=False) is None  # only heard neighbours count


def test_a_late_joiner_is_judged_on_the_step_a_neighbour_met_it_at():
    """Peers that met at the start are never a late joiner's source, however far one has run since
    (a lost answer on a 0.3-s epoch); a stale Hello (step 0, queued before we listened) does not
    hide a neighbour that was an epoch along when it met us."""
    p = Parts()
    hello = dict(node_id=1, schema_hash=HASH, config_hash="ours", address="tcp://x:1", epochs=1)
    p.handle(1, wire.pack_hello(step=0, **hello))  # stale: queued by ZeroMQ before we listened
    assert p.dispatcher.neighbour_step == {1: 0} and p.dispatcher.they_met_us == {}
    p.handle(1, wire.pack_heartbeat(node_id=1, step=40, epoch=0))  # stale too: sent before it heard us (0)
    assert p.dispatcher.they_met_us == {}
    p.handle(1, wire.pack_heartbeat(node_id=1, step=300, epoch=2, step_when_met=291))  # the answer: met at 290
    p.handle(1, wire.pack_hello(step=0, **hello))  # a late Hello does not undo what a heartbeat said
    assert p.dispatcher.neighbour_step == {1: 300} and p.dispatcher.they_met_us == {1: 290}
    p.handle(2, wire.pack_hello(step=0, **{**hello, "node_id": 2}))
    p.handle(2, wire.pack_heartbeat(node_id=2, step=400, epoch=3, step_when_met=1))  # met us at its start (step 0)
    assert pick_source(0, p.dispatcher.they_met_us, {1, 2}, 100, resume=False) == 1
    assert pick_source(0, {2: 0}, {1, 2}, 100, resume=False) is None  # 400 now, but we met at 0
    assert pick_source(0, p.dispatcher.neighbour_step, {1, 2}, 100, resume=True) == 2  # resumed: steps now
    assert p.greeted == [1, 1, 2]  # each Hello is answered with our own step (a heartbeat)


def test_our_heartbeats_say_the_step_we_met_each_neighbour_at():
    """We record our own step at first hearing, and again when a neighbour comes back from down."""
    step = [7]
    p = Parts()
    p.dispatcher.own_step = lambda: step[0]
    p.handle(1, wire.pack_heartbeat(node_id=1, step=0, epoch=0))
    step[0] = 50
    p.handle(1, wire.pack_heartbeat(node_id=1, step=1, epoch=0))  # already met: unchanged
    p.handle(2, wire.pack_heartbeat(node_id=2, step=0, epoch=0))
    assert p.dispatcher.met_at == {1: 7, 2: 50}
    p.ledger.views[1].down = True  # marked down by silence, then heard again: maybe restarted
    step[0] = 90
    p.handle(1, wire.pack_heartbeat(node_id=1, step=2, epoch=0))
    assert p.dispatcher.met_at == {1: 90, 2: 50}


def test_a_neighbours_stall_report_is_kept_with_when_it_came():
    p = Parts()
    p.handle(1, wire.pack_heartbeat(node_id=1, step=3, epoch=0, stalled_ms=1500))
    p.clock.advance(2.0)
    p.handle(2, wire.pack_heartbeat(node_id=2, step=3, epoch=0))
    assert p.dispatcher.stalled == {1: (1.5, 1000.0), 2: (0.0, 1002.0)}


def test_a_fresh_peer_waits_for_heartbeats_not_hellos_before_it_decides():
    """Hellos alone (step 0, maybe stale) do not end the wait; the heartbeat that says the
    neighbour met us a full epoch along makes us load its state."""
    p = Parts()
    hello = dict(node_id=1, schema_hash=HASH, config_hash="ours", address="tcp://x:1", epochs=1)
    worker = fake_worker(steps_per_epoch=10)
    bridge = SimpleNamespace(stop=threading.Event(), drain=list, to_thread=lambda item: None)

    async def main():
        p.handle(1, wire.pack_hello(step=0, **hello))
        task = asyncio.create_task(p.catchup.run(worker, bridge, p.dispatcher, resume=False, timeout_s=0.5))
        await asyncio.sleep(0.3)
        assert not task.done() and not p.catchup.active  # still waiting for a heartbeat
        p.handle(1, wire.pack_heartbeat(node_id=1, step=25, epoch=2))  # queued before it heard us: no news
        await asyncio.sleep(0.1)
        assert not task.done() and not p.catchup.active
        p.handle(1, wire.pack_heartbeat(node_id=1, step=25, epoch=2, step_when_met=21))
        await asyncio.sleep(0.2)
        assert p.catchup.active and p.catchup.source == 1  # asked for its state
        await task  # nobody answers here: gives up after timeout_s

    asyncio.run(asyncio.wait_for(main(), 5))
    requests = [wire.unpack(data, LIMITS) for nbr, data in p.link.sent if nbr == 1]
    assert any(isinstance(m, wire.StateRequest) for m in requests)


def fake_worker(numel: int = NUMEL, steps_per_epoch: int = 10) -> SimpleNamespace:
    trainer = SimpleNamespace(flat=torch.zeros(numel), steps_per_epoch=steps_per_epoch, step_count=0)
    return SimpleNamespace(trainer=trainer, feedback=SimpleNamespace(residual=torch.ones(numel)),
                           applied=Ledger(0, PEERS, 0.0), progress=Progress(), start_epoch=0, start_step=0)


def test_catch_up_adopts_the_state_from_chunks():
    p = Parts()
    source = torch.arange(NUMEL, dtype=torch.float32)
    # the source holds its own up to seq 7, peer 2's below 4 and its 6, nothing of peer 3
    packed = wire.pack_state_chunks(source, node_id=1, seq=7, step=25, epoch=2, schema_hash=HASH, chunk_bytes=64,
                                    applied={0: [3], 1: [0], 2: [4, 6], 3: [0]})
    chunks = [wire.unpack(c, LIMITS) for c in packed]
    assert len(chunks) > 1 and chunks[0].applied == ((0, 3, ()), (2, 4, (6,)), (3, 0, ()))  # not its own id
    assert all(c.applied == () for c in chunks[1:])
    p.handle(1, update(1, 2))  # heard before the state: delivered, then queued for the thread
    p.catchup.active, p.catchup.source = True, 1
    for frame, origin in ((update(2, 3), 2), (update(2, 5), 2), (update(2, 6), 2), (update(1, 8), 1)):
        p.handle(origin, frame)  # while we wait: held, not delivered
    assert [(u.node_id, u.seq) for u in p.delivered] == [(1, 2)]
    for c in chunks[:-1]:
        p.catchup.offer(1, c)
        p.catchup.offer(2, c)  # not the neighbour asked: ignored
    assert not p.catchup.complete()
    p.catchup.offer(1, chunks[-1])
    assert p.catchup.complete()
    w = fake_worker()
    queued = [*p.delivered, StateAsked(2)]
    keep = p.catchup.adopt(w, queued)
    # exactly what the state lacks goes to the thread: peer 2's 5 and the source's 8
    assert [(k.node_id, k.seq) if isinstance(k, wire.DecodedUpdate) else k for k in keep] == [
        StateAsked(2), (2, 5), (1, 8)]
    assert p.counters.skipped_before_state == 3  # (1, 2), (2, 3), (2, 6)
    assert torch.equal(w.trainer.flat, source) and not w.feedback.residual.any()
    assert (w.start_epoch, w.start_step, w.progress.global_step, w.trainer.step_count) == (2, 5, 25, 25)
    assert w.applied.state_dict() == {1: [8], 2: [4, 6], 3: [0]}  # the thread folds 5 and 8 itself
    assert p.ledger.state_dict() == {1: [9], 2: [4, 5, 6], 3: [0]}  # seen: the state's and what came
    p.catchup.active = False
    p.handle(2, update(2, 2))  # in the state, arriving late: a duplicate, never applied
    p.handle(2, update(2, 4))  # neither in the state nor seen: applied
    assert p.counters.duplicates == 1 and [(u.node_id, u.seq) for u in p.delivered[1:]] == [(2, 4)]


def test_a_state_that_lists_its_holdings_badly_is_rejected():
    flat = torch.zeros(NUMEL)
    for applied in ({2: [5, 5]}, {2: [5, 7, 6]}, {2: [5, *range(6, 6 + wire.MAX_STATE_ABOVE + 1)]}):
        chunk = wire.pack_state_chunks(flat, node_id=1, seq=0, step=0, epoch=0, schema_hash=HASH)[0]
        env = pb.Envelope.FromString(chunk)
        del env.state_chunk.applied[:]
        for o, (floor, *above) in applied.items():
            env.state_chunk.applied.add(origin=o, floor=floor, above=above)
        with pytest.raises(ProtocolError):
            wire.unpack(env.SerializeToString(), LIMITS)
    env = pb.Envelope.FromString(wire.pack_state_chunks(flat, node_id=1, seq=0, step=0, epoch=0,
                                                             schema_hash=HASH)[0])
    env.state_chunk.applied.add(origin=1, floor=3)  # the sender's own: only StateChunk.seq says that
    with pytest.raises(ProtocolError):
        wire.unpack(env.SerializeToString(), LIMITS)
    env.state_chunk.applied[0].origin = 9  # not a peer
    with pytest.raises(ProtocolError):
        wire.unpack(env.SerializeToString(), LIMITS)


def test_state_server_answers_through_whoever_owns_the_model():
    answered: list[int] = []
    worker = SimpleNamespace(state_lock=threading.Lock(), answer_state=answered.append)
    bridge = SimpleNamespace(items=[], to_thread=lambda item: bridge.items.append(item),
                             drain=lambda: [bridge.items.pop(0) for _ in list(bridge.items)])
    server = StateServer(worker, bridge)
    server.asked(1)  # no thread yet: the loop answers at once
    assert answered == [1] and bridge.items == []
    server.thread_starts()
    server.asked(2)
    assert answered == [1] and bridge.items == [StateAsked(2)]  # the thread answers between batches
    bridge.items.append(FINISHED)
    server.thread_ended()  # what the thread left is answered here
    assert answered == [1, 2] and bridge.items == []
    server.asked(3)
    assert answered == [1, 2, 3]


# ---------------------------------------------------------------- the loop never waits for a batch


class TimedLink(MemoryLink):
    def __init__(self, neighbours) -> None:
        super().__init__(neighbours)
        self.links = dict.fromkeys(self.neighbours)
        self.epoch = 0
        self.beats: list[float] = []

    def send(self, nbr: int, data: bytes) -> bool:
        if isinstance(wire.unpack(data, self.limits), wire.Heartbeat):
            self.beats.append(time.monotonic())
        return super().send(nbr, data)


@pytest.mark.parametrize("blocking", [False, True], ids=["bridge", "old_lock_in_loop"])
def test_a_state_request_during_a_long_batch_does_not_stall_heartbeats(data_root, tmp_path, blocking):
    from gossip.runtime import factory
    from gossip.runtime.node import Peer
    from gossip.training.data import load_dataset
    from gossip.training.partition import partition
    from gossip.training.trainer import set_threads

    set_threads(1)
    cfg = config.load(None, ["peers=2", "model.name=mnist_tiny", "data.limit_train=512", "data.limit_test=64",
                             "train.batch_size=32", "train.epochs=1", "dashboard.interval_s=0.1",
                             "timeouts.silence_s=60"])
    dataset = load_dataset(cfg.data)
    shards = partition(dataset.train.labels, cfg.peers, cfg.data, cfg.seed)
    long_batch, batch_over = threading.Event(), threading.Event()

    async def main():
        peer = Peer(cfg, 0, tmp_path)
        peer.bridge = bridge = Bridge(asyncio.get_running_loop())
        worker = factory.build_worker(cfg, 0, dataset, shards[0], bridge)
        real = worker.train_batch

        def train_batch(x, y, step):
            if step == 2:  # inside Worker.run's state_lock, as every batch
                long_batch.set()
                time.sleep(3.0)
                batch_over.set()
            return real(x, y, step)

        worker.train_batch = train_batch
        link = TimedLink([1])
        link.limits = wire.Limits(numel=worker.layout.numel, schema_hash=worker.layout.schema_hash,
                                  max_bytes=1 << 26, peers=2)
        peer.assemble(worker, bridge, link)
        if blocking:  # what the loop did before: answer under the training lock, from the loop
            def asked(requester):
                with worker.state_lock:
                    worker.answer_state(requester)
            peer.dispatcher.ask_state = asked
        peer.states.thread_starts()
        tasks = [asyncio.create_task(peer._tick()), asyncio.create_task(peer._outbox())]
        train = asyncio.create_task(asyncio.to_thread(worker.run))
        await asyncio.to_thread(long_batch.wait, 10)
        t0 = time.monotonic()
        peer.dispatcher.handle(1, [wire.pack_state_request(node_id=1, schema_hash=worker.layout.schema_hash)])
        await asyncio.to_thread(batch_over.wait, 10)
        await asyncio.sleep(1.2)
        t1 = time.monotonic()
        bridge.stop.set()
        await train
        for task in tasks:
            task.cancel()
        return link, t0, t1

    link, t0, t1 = asyncio.run(main())
    before = max((b for b in link.beats if b <= t0), default=t0)
    points = [before, *(b for b in link.beats if t0 < b <= t1), t1]
    gap = max(b - a for a, b in zip(points, points[1:], strict=False))
    chunks = [wire.unpack(d, link.limits) for n, d in link.sent if n == 1]
    assert any(isinstance(c, wire.StateChunk) for c in chunks)  # the request was answered, after the batch
    if blocking:
        assert gap > 2.0  # the harness sees a stalled loop
    else:
        assert gap < 1.5, f"heartbeats stalled for {gap:.2f} s while a batch held the training lock"


def test_a_neighbour_that_never_answers_does_not_hold_the_start():
    """Once one neighbour answered (met us at its start: nobody is ahead), a silent one (an insider
    that only says Hello) gets ANSWER_GRACE_S, not the whole PROGRESS_WAIT_S."""
    from gossip.runtime import catchup as cu
    p = Parts()
    hello = dict(schema_hash=HASH, config_hash="ours", address="tcp://x:1", epochs=1)
    worker = fake_worker(steps_per_epoch=10)
    bridge = SimpleNamespace(stop=threading.Event(), drain=list, to_thread=lambda item: None)

    async def main() -> float:
        p.handle(1, wire.pack_hello(node_id=1, step=0, **hello))
        p.handle(2, wire.pack_hello(node_id=2, step=0, **hello))  # never answers
        p.handle(1, wire.pack_heartbeat(node_id=1, step=3, epoch=0, step_when_met=1))
        t0 = time.monotonic()
        await p.catchup.run(worker, bridge, p.dispatcher, resume=False, timeout_s=0.5)
        return time.monotonic() - t0

    waited = asyncio.run(asyncio.wait_for(main(), 5))
    assert cu.ANSWER_GRACE_S <= waited < cu.PROGRESS_WAIT_S / 2 and not p.catchup.active
    assert not any(isinstance(wire.unpack(d, LIMITS), wire.StateRequest) for _, d in p.link.sent)
