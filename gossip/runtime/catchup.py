"""State transfer: a peer that is far behind loads a neighbour's published state.

Both sides of a ``StateRequest``:

* **asking** (:class:`CatchUp`): a late joiner, or a resumed peer a quarter of an epoch behind
  its most advanced neighbour (it missed whatever was sent while it was down), asks that
  neighbour for its state, collects the StateChunks and adopts
  them: its parameters, and the neighbour's position (epoch, step, LR schedule). The state
  says which updates of every origin it holds (``StateChunk.applied``: the source's own up to
  its ``seq``, the others' as folded in); updates that arrive while we wait are held, and on
  adoption exactly those the state does not hold are applied, the rest counted as
  ``skipped_before_state``; what the state holds and has not reached us yet is marked seen
  (dropped as a duplicate when it comes), and a gap below what we have seen is asked for
  again like any other (gossip.runtime.resend).
* **answering** (:class:`StateServer`): the published state is ``flat - residual`` (what the
  swarm has seen of us). Whoever owns the model answers, so the loop never waits for the
  training lock (a batch may hold it for seconds, and the loop must keep its heartbeats):
  while the training thread runs (from the start of catching up to the end of training) the
  loop posts :class:`~gossip.runtime.bridge.StateAsked` and the thread answers between
  batches; before and after, nothing else touches the model, and the loop answers at once.
  Either way the chunks cross the bridge as a :class:`~gossip.runtime.bridge.StateReply`.

Who is a late joiner is judged on the step each neighbour had *when it met us* (every heartbeat
says it: ``step_when_met``), a full epoch or more, not on its step now: with epochs of a fraction
of a second, peers that met at the start may be an epoch apart by the time a lost answer comes
round, and Hellos queued in ZeroMQ before we listened (step 0) reach a late joiner first. So a
fresh peer waits for the heartbeats that answer its Hello: until every neighbour it heard has
answered, one answer shows it a full epoch behind, ``ANSWER_GRACE_S`` after the first answer, or
``PROGRESS_WAIT_S`` at most.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch

from gossip.observe.log import get_logger
from gossip.protocol import wire
from gossip.runtime.bridge import StateAsked, ToThread
from gossip.runtime.ledger import Ledger
from gossip.runtime.outcome import Counters
from gossip.runtime.worker import Worker

log = get_logger(__name__)

# At startup, how long to wait for each heard neighbour's step (are we behind?). A neighbour that
# is itself starting says its step in its Hello (no wait); one that is training answers our Hello
# with a heartbeat once its reconnect to us (up to 1 s) is through, and beats every second anyway.
PROGRESS_WAIT_S = 3.0
# Once one neighbour has answered, the others get this long: a peer that never answers (not a
# peer of ours, or one stuck) must not hold our start for PROGRESS_WAIT_S.
ANSWER_GRACE_S = 0.3
POLL_S = 0.02


class Meeting(Protocol):
    """What the dispatcher knows of the neighbours (gossip.runtime.dispatch.Dispatcher)."""

    heard: set[int]                 # said anything valid
    neighbour_step: dict[int, int]  # step now (heartbeats; a Hello's until the first one)
    they_met_us: dict[int, int]     # step when it met us (heartbeats only)


def pick_source(own_step: int, neighbour_step: dict[int, int], heard: set[int], steps_per_epoch: int,
                *, resume: bool) -> int | None:
    """The neighbour to load the state of, or None when we are not far enough behind."""
    ahead = {p: s for p, s in neighbour_step.items() if p in heard}
    if not ahead:
        return None
    source = max(ahead, key=lambda p: ahead[p])
    lag = max(1, steps_per_epoch // 4) if resume else steps_per_epoch
    return source if ahead[source] - own_step >= lag else None


class CatchUp:
    def __init__(self, peer_id: int, ledger: Ledger, counters: Counters, send: Callable[[int, bytes], bool],
                 *, numel: int, schema_hash: int) -> None:
        self.peer_id = peer_id
        self.ledger = ledger
        self.counters = counters
        self.send = send
        self.numel = numel
        self.schema_hash = schema_hash
        self.active = False  # waiting for a neighbour's state: updates are recorded, not applied
        self.source: int | None = None
        self.chunks: dict[int, wire.StateChunk] = {}
        self.held: list[wire.DecodedUpdate] = []  # arrived while we wait: applied unless the state has them

    # ------------------------------------------------------------ the inbound side (dispatcher)
    def offer(self, sender: int, chunk: wire.StateChunk) -> None:
        """A StateChunk came in: kept only while we wait for that very neighbour's state."""
        if self.active and sender == self.source == chunk.node_id:
            self.chunks[chunk.offset] = chunk

    def hold(self, update: wire.DecodedUpdate) -> None:
        """An update that arrived while we wait for the state (already recorded as seen)."""
        self.held.append(update)

    def complete(self) -> bool:
        return sum(c.values.numel() for c in self.chunks.values()) == self.numel

    # ------------------------------------------------------------ the flow
    async def run(self, worker: Worker, bridge: Any, meeting: Meeting, *, resume: bool, timeout_s: float) -> None:
        """Catch up if we are far behind (see the module docstring); gives up after ``timeout_s``."""
        # a resumed peer judges the neighbours' steps now (it met them long ago); a fresh one, theirs
        # when they met it (neither a lost answer nor a stale Hello makes it a late joiner)
        steps = meeting.neighbour_step if resume else meeting.they_met_us
        own, spe = worker.progress.global_step, worker.trainer.steps_per_epoch
        deadline = time.monotonic() + PROGRESS_WAIT_S
        first: float | None = None
        while meeting.heard - set(meeting.they_met_us) and time.monotonic() < deadline:
            if meeting.they_met_us:
                first = time.monotonic() if first is None else first
                if (pick_source(own, steps, meeting.heard, spe, resume=resume) is not None
                        or time.monotonic() - first >= ANSWER_GRACE_S):
                    break
            await asyncio.sleep(0.05)
        source = pick_source(own, steps, meeting.heard, spe, resume=resume)
        if source is None:
            return
        log.info("catch_up_start", source=source, their_step=meeting.neighbour_step.get(source, steps[source]),
                 met_at=meeting.they_met_us.get(source), own_step=own)
        self.active, self.source = True, source
        self.send(source, wire.pack_state_request(node_id=self.peer_id, schema_hash=self.schema_hash))
        deadline = time.monotonic() + timeout_s
        try:
            while not self.complete():
                if time.monotonic() > deadline or bridge.stop.is_set():
                    log.warning("catch_up_failed", source=source, chunks=len(self.chunks))
                    return
                await asyncio.sleep(POLL_S)
            for item in self.adopt(worker, bridge.drain()):
                bridge.to_thread(item)  # the thread answers them with the state just adopted
        finally:
            self.active = False

    def adopt(self, worker: Worker, queued: list[ToThread]) -> list[ToThread]:
        """Load the collected state into ``worker`` (not running); returns what the thread must
        still take: the StateAsked among ``queued``, and the updates (queued or held) that the
        state does not hold, in arrival order."""
        tr = worker.trainer
        first = self.chunks.get(0) or next(iter(self.chunks.values()))
        with torch.no_grad():
            for chunk in self.chunks.values():
                tr.flat[chunk.offset:chunk.offset + chunk.values.numel()].copy_(chunk.values)
            worker.feedback.residual.zero_()  # what we had not sent is in the neighbour's state or lost
        holds: dict[int, list[int]] = {o: [0] for o in self.ledger.views}  # origin -> [floor, *above]
        holds.update({o: [floor, *above] for o, floor, above in first.applied if self.ledger.known(o)})
        holds[first.node_id] = [first.seq + 1]  # the source's own, exactly
        worker.applied.load_state_dict(holds)  # the worker folds in exactly what the state lacks
        self.ledger.load_state_dict(holds)     # seen: the state's, and (below) what came meanwhile
        updates = [u for u in (*queued, *self.held) if isinstance(u, wire.DecodedUpdate)]
        fresh = [u for u in updates if not worker.applied.seen(u.node_id, u.seq)]
        for u in updates:
            self.ledger.first_time(u.node_id, u.seq)
        keep: list[ToThread] = [item for item in queued if isinstance(item, StateAsked)]
        self.counters.skipped_before_state += len(updates) - len(fresh)
        self.held = []
        spe = tr.steps_per_epoch
        worker.start_epoch = first.epoch
        worker.start_step = min(spe, max(0, first.step - first.epoch * spe))
        tr.step_count = worker.progress.global_step = first.step
        log.info("state_adopted", source=self.source, epoch=first.epoch, step=first.step,
                 skipped_updates=self.counters.skipped_before_state, applied_after=len(fresh))
        return [*keep, *fresh]


class StateServer:
    """Answers neighbours' StateRequests through whoever owns the model (module docstring).

    A state is the whole parameter vector, so one requester is answered at most once per
    ``security.state_answer_interval_s``; the requests in between are counted and dropped.
    """

    def __init__(self, worker: Worker, bridge: Any, *, interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.worker = worker
        self.bridge = bridge
        self.thread_owns = False
        self.clock = clock
        self.interval_s = interval_s
        self.answered_at: dict[int, float] = {}  # requester -> when its last request was taken
        self.refused = 0

    def asked(self, requester: int) -> None:
        now = self.clock()
        if now - self.answered_at.get(requester, -math.inf) < self.interval_s:
            self.refused += 1
            log.debug("state_request_refused", by=requester, reason="answered_recently")
            return
        self.answered_at[requester] = now
        log.info("state_requested", by=requester)
        self._route(requester)

    def thread_starts(self) -> None:
        """From now on the training thread answers (call before it can touch the model)."""
        self.thread_owns = True

    def thread_ended(self) -> None:
        """The thread is gone: answer here what it left unanswered, and from now on."""
        self.thread_owns = False
        for item in self.bridge.drain():
            if isinstance(item, StateAsked):
                self._route(item.requester)

    def _route(self, requester: int) -> None:
        if not self.thread_owns and self._answer_now(requester):
            return
        self.bridge.to_thread(StateAsked(requester))

    def _answer_now(self, requester: int) -> bool:
        lock: threading.Lock = self.worker.state_lock
        if not lock.acquire(blocking=False):  # cannot happen while the thread is not running
            return False
        try:
            self.worker.answer_state(requester)
        finally:
            lock.release()
        return True
