"""Who is still in the swarm, and when this peer may leave it.

* **Two-phase finish** (see :mod:`gossip.runtime.ledger`): when our training thread has sent
  its last update we say ``Done(last_seq)``; once every live peer's updates up to its own
  ``last_seq`` have arrived we tell the thread (FINISHED) and say ``Done(complete)``; we keep
  relaying until every live peer is complete (:meth:`Membership.linger`).
* **Repeat Done**: every heartbeat after our Done, say it again (a lossy link may eat one).
* **Liveness**: a peer silent for ``timeouts.silence_s`` is marked down; nobody waits for it.
* **Give up lost updates**: a finished peer whose missing updates have not come for
  ``timeouts.silence_s`` (no new update nor Done from it) is not waited for any longer.
* **A partition is not the end**: when every other peer goes silent at once (marked down within
  ``PARTITION_SPREAD_S`` of each other, none left), this peer does not declare itself done for
  up to ``timeouts.partition_wait_s``: the link may come back (a peer heard again is up again,
  and the resend machinery asks for what is missing; once one peer is back the others of the
  partition get ``REJOIN_GRACE_S`` to be heard too). ``finish_reason`` says how it ended:
  ``all_delivered``, ``peers_down`` (some peers were given up as down), ``updates_lost``
  (a finished peer's missing updates were given up) or ``gave_up_after_partition``.

No sockets and no real time here: it gets a ``broadcast`` callable and a clock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from gossip.observe.log import get_logger
from gossip.protocol import wire
from gossip.runtime.ledger import Ledger
from gossip.runtime.outcome import Counters

log = get_logger(__name__)

Broadcast = Callable[..., int]  # Transport.broadcast(data, exclude=()) -> frames queued
LINGER_POLL_S = 0.05
PARTITION_SPREAD_S = 3.0  # peers marked down within this many seconds of each other went silent "at once"
# Once the first peer of a partition is heard again, the others get this long to be heard too before
# they count as crashed: each reconnects on its own (ZeroMQ's 1 s backoff) and beats once a second.
REJOIN_GRACE_S = 5.0


class Membership:
    def __init__(self, peer_id: int, ledger: Ledger, broadcast: Broadcast, counters: Counters, *,
                 silence_s: float, on_all_delivered: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic, t_start: float | None = None,
                 partition_wait_s: float = 0.0) -> None:
        self.peer_id = peer_id
        self.ledger = ledger
        self.broadcast = broadcast
        self.counters = counters
        self.silence_s = silence_s
        self.on_all_delivered = on_all_delivered  # the node tells its training thread FINISHED
        self.clock = clock
        self.t_start = clock() if t_start is None else t_start  # lost updates are counted from here
        self.own_done = False        # our thread sent its last update
        self.delivered_sent = False  # we said Done(complete): everything from every live peer is here
        self.last_seq = -1           # our last update's seq (-1: none)
        self.last_news: dict[int, float] = {}  # when each origin last sent a new update or Done
        self.partition_wait_s = partition_wait_s
        self.down_at: dict[int, float] = {}  # when each peer now down was marked down
        self.partitioned_since: float | None = None  # every peer went silent at once: wait for the link
        self.partition_gave_up = False
        self.rejoining: set[int] = set()  # the partition healed: these of it are not heard yet
        self.rejoin_until = 0.0
        self.finish_reason: str | None = None

    # ------------------------------------------------------------ events
    def news(self, origin: int, now: float) -> None:
        """``origin`` sent something new (an update or a first Done): its lost updates may still come."""
        self.last_news[origin] = now

    def training_done(self, last_seq: int) -> None:
        self.own_done, self.last_seq = True, last_seq
        self.broadcast(self._done(complete=False))
        log.info("training_done", last_seq=last_seq, waiting_for=self.ledger.waiting_for())
        self.check_finish()

    def on_done(self, done: wire.Done) -> bool:
        """Record a (validated) Done of another peer; True the first time it says this."""
        if done.complete:  # carries last_seq too: every earlier Done may have been lost on the way
            self.ledger.mark_done(done.node_id, done.last_seq)
        first = (self.ledger.mark_complete(done.node_id) if done.complete
                 else self.ledger.mark_done(done.node_id, done.last_seq))
        if first:
            self.news(done.node_id, self.clock())
            log.info("peer_complete" if done.complete else "peer_done", peer=done.node_id,
                     last_seq=done.last_seq)
        return first

    def check_finish(self) -> None:
        if self.own_done and not self.delivered_sent and self.ledger.all_delivered():
            if (self.partitioned_since is not None and not self.partition_gave_up) or self.rejoining:
                return  # cut off, not abandoned: wait for the link (check_partition)
            self.delivered_sent = True
            self.finish_reason = ("gave_up_after_partition" if self.partition_gave_up
                                  else "peers_down" if self.ledger.down()
                                  else "updates_lost" if self.counters.updates_lost else "all_delivered")
            self.on_all_delivered()
            self.broadcast(self._done(complete=True))
            log.info("all_delivered", seconds=round(self.clock() - self.t_start, 3),
                     finish_reason=self.finish_reason, peers_down=self.ledger.down())

    # ------------------------------------------------------------ the clock
    def check_down(self, now: float) -> list[int]:
        """Mark peers silent for ``silence_s`` down (nobody waits for them); returns them."""
        down = self.ledger.check_down(now, self.silence_s)
        for peer in down:
            self.down_at[peer] = now
            log.warning("peer_down", peer=peer, silent_s=self.silence_s)
        self.check_partition(now)
        for _ in down:
            self.check_finish()
        return down

    def check_partition(self, now: float) -> None:
        """Notice a partition (every peer silent at once), its end, or that we waited long enough."""
        views = self.ledger.views
        for peer in [p for p in self.down_at if not views[p].down]:
            del self.down_at[peer]  # heard again
        if self.rejoining:
            self.rejoining &= set(self.down_at)
            if not self.rejoining or now >= self.rejoin_until:
                if self.rejoining:
                    log.warning("partition_left_down", peers=sorted(self.rejoining), grace_s=REJOIN_GRACE_S)
                self.rejoining = set()
                self.check_finish()
        if self.partitioned_since is not None:
            if len(self.down_at) < len(views):
                log.info("partition_healed", seconds=round(now - self.partitioned_since, 3),
                         back=sorted(p for p in views if p not in self.down_at))
                self.partitioned_since = None
                # the others were cut off by the same event: their connections come back one by one
                self.rejoining, self.rejoin_until = set(self.down_at), now + REJOIN_GRACE_S
            elif not self.partition_gave_up and now - self.partitioned_since >= self.partition_wait_s:
                self.partition_gave_up = True
                log.warning("partition_gave_up", waited_s=round(now - self.partitioned_since, 3))
                self.check_finish()
        elif (self.partition_wait_s > 0 and not self.partition_gave_up and views
              and len(self.down_at) == len(views)
              and max(self.down_at.values()) - min(self.down_at.values()) <= PARTITION_SPREAD_S):
            self.partitioned_since = now
            log.warning("partition_suspected", peers=sorted(views), wait_s=self.partition_wait_s)

    def heartbeat(self, now: float) -> None:
        """Once a heartbeat: after our Done, repeat it and give up updates that will not come."""
        if self.own_done:
            self.repeat_done()
            self.give_up_lost(now)

    def repeat_done(self) -> None:
        """Say Done again every heartbeat: one lost on a lossy link must not hang anybody."""
        self.broadcast(self._done(complete=self.delivered_sent))

    def give_up_lost(self, now: float) -> None:
        """Updates of a finished peer still missing after ``silence_s`` are lost: stop waiting.

        Not while every peer is silent and ``partition_wait_s`` is set: that is a partition
        forming (check_partition), and what is missing comes once the link is back."""
        views = self.ledger.views
        if self.partition_wait_s > 0 and views and all(now - v.last_heard > self.silence_s for v in views.values()):
            return
        for peer in self.ledger.waiting_for():
            if self.ledger.views[peer].last_seq is None:
                continue
            if now - self.last_news.get(peer, self.t_start) > self.silence_s:
                missing = self.ledger.give_up(peer)
                self.counters.updates_lost += missing
                log.warning("updates_lost", peer=peer, missing=missing)
        self.check_finish()

    async def linger(self, stop: threading.Event, finish_s: float) -> None:
        """Keep relaying until every live peer has everything (two-phase finish, see ledger)."""
        deadline = self.clock() + finish_s
        while not stop.is_set() and not self.ledger.all_complete():
            if self.clock() > deadline:
                log.warning("finish_timeout", waiting_for=[p for p, v in self.ledger.views.items()
                                                           if not (v.down or v.complete)])
                break
            await asyncio.sleep(LINGER_POLL_S)

    def _done(self, *, complete: bool) -> bytes:
        return wire.pack_done(node_id=self.peer_id, last_seq=self.last_seq, complete=complete)
