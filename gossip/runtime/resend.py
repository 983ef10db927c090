"""Selective retransmission (NACK): an update dropped on a lossy link is asked for again.

Why it matters: an originator subtracts exactly what it sends from its error-feedback
residual, so an update lost on the way is information the receiver's model never gets.
The receiver knows exactly what it lacks (the ledger's per-origin floor and seen set, and
``Done.last_seq`` for the tail), so it asks the originator for those seqs only.

**Receiver** (:class:`Asker`, driven by the node's tick, i.e. every ``dashboard.interval_s``
and at least once a second): for each direct neighbour that is not down, the seqs missing
among its newest ``KEEP_UPDATES`` (:meth:`gossip.runtime.ledger.Ledger.missing`) that have stayed
missing for ``GRACE_S`` go into one ``ResendRequest`` (at most ``wire.MAX_RESEND_SEQS``,
oldest first). A seq still missing is asked again after ``REASK_S``, at most ``MAX_ASKS``
times; after that, and for anything older than the window, the last resort stays the
give-up after ``timeouts.silence_s`` (``updates_lost``). A resent update that arrives twice
(the original was only late, or the link duplicated it) is dropped by the ledger like any
duplicate, so nothing is applied twice.

**Sender** (:class:`Buffer`): keeps the exact Envelope bytes of its own last
``KEEP_UPDATES`` updates (and at most ``KEEP_BYTES`` of them) and answers a request for
its own updates with those it still has, to the requester only. Each requester has a
token bucket of ``RATE_PER_S`` updates/s (burst ``BURST``): a flood of requests, honest
or hostile, costs at most that many resends plus ``MAX_RESEND_SEQS`` look-ups per frame.
Resends go through the same shaped link (``link.bandwidth``, bounded queue) as everything
else.

**Relay topologies**: only direct neighbours are asked, and only for their own updates.
A gap in a farther peer's updates is left to the relay paths (every neighbour relays each
new update, so one lost copy usually has another way in) and to the give-up. A request
naming another origin is refused (counted), never forwarded.

**A late joiner** that adopted a neighbour's state counts the updates that state holds as
seen (:meth:`gossip.runtime.ledger.Ledger.skip_below`), so it never asks for them: applying them
again would count them twice.

Tuning:

* ``GRACE_S`` — how long a gap may just be reordering. Shorter recovers sooner but asks for
  updates that were only late (harmless duplicates, wasted bandwidth); on links with latency
  jitter above it, raise it.
* ``KEEP_UPDATES`` / ``KEEP_BYTES`` — how far back a loss can be recovered, against memory.
  At the fastest trigger (every batch) a peer sends a few dozen updates a second, so 256
  covers several seconds: many re-asks, far more than a lossy link needs.
* ``RATE_PER_S`` / ``BURST`` — the most any one neighbour can make us resend.

Counters (in the peer's result and telemetry): ``resend_requested`` (seqs we asked for),
``resend_recovered`` (asked-for seqs that then arrived), ``resent`` (our updates sent again),
``resend_refused`` (not resent: rate limit, full link queue, or another origin's),
``resend_missing`` (asked for, but no longer or never buffered).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gossip.observe.log import get_logger
from gossip.protocol import wire
from gossip.runtime.ledger import Ledger

log = get_logger(__name__)

# Own updates kept for resending (also the receiver's look-back window: older gaps are given up).
# At the fastest trigger a peer sends a few dozen updates/s, so this covers several re-asks.
KEEP_UPDATES = 256
# ... and at most this many bytes of them: a large model's updates (or its final dense flush)
# must not turn the buffer into hundreds of MB; the newest update is always kept.
KEEP_BYTES = 64 << 20
# A gap younger than this may be a reordered message still on its way: do not ask yet.
GRACE_S = 0.3
# A seq still missing this long after we asked (the request or the answer was lost too) is asked again.
REASK_S = 1.0
# Asks per seq before leaving it to the give-up: a sender that restarted no longer has it.
# At a 10% loss per message, five rounds all failing is a 1-in-4000 event.
MAX_ASKS = 5
# Resends per second per requester, and the burst: recovers a burst of losses within a second
# while capping what a flood of requests can cost (and it still passes the link's shaper).
RATE_PER_S = 100.0
BURST = 2 * wire.MAX_RESEND_SEQS


# ---------------------------------------------------------------- sender side


@dataclass
class Answer:
    found: list[bytes]  # the buffered bytes we may send now
    refused: int        # buffered, but over the requester's rate
    missing: int        # not (or no longer) buffered


class Buffer:
    """Our own recent packed updates by seq, and a token bucket per requester."""

    def __init__(self, keep: int = KEEP_UPDATES, keep_bytes: int = KEEP_BYTES,
                 rate_per_s: float = RATE_PER_S, burst: float = BURST) -> None:
        self.keep_updates, self.keep_bytes = keep, keep_bytes
        self.rate_per_s, self.burst = rate_per_s, burst
        self._sent: OrderedDict[int, bytes] = OrderedDict()
        self._bytes = 0
        self._tokens: dict[int, tuple[float, float]] = {}  # requester -> (tokens, when counted)

    def __len__(self) -> int:
        return len(self._sent)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def keep(self, seq: int, data: bytes) -> None:
        old = self._sent.pop(seq, None)
        self._bytes += len(data) - (len(old) if old is not None else 0)
        self._sent[seq] = data
        while len(self._sent) > self.keep_updates or (self._bytes > self.keep_bytes and len(self._sent) > 1):
            _, gone = self._sent.popitem(last=False)
            self._bytes -= len(gone)

    def _allowance(self, requester: int, now: float) -> float:
        tokens, then = self._tokens.get(requester, (self.burst, now))
        return min(self.burst, tokens + max(0.0, now - then) * self.rate_per_s)

    def answer(self, requester: int, seqs: Iterable[int], now: float) -> Answer:
        """What to resend to ``requester`` now; each update sent takes one of its tokens."""
        allowance = self._allowance(requester, now)
        found: list[bytes] = []
        refused = missing = 0
        for seq in seqs:
            data = self._sent.get(seq)
            if data is None:
                missing += 1
            elif len(found) < math.floor(allowance):
                found.append(data)
            else:
                refused += 1
        self._tokens[requester] = (allowance - len(found), now)
        return Answer(found, refused, missing)


# ---------------------------------------------------------------- receiver side


@dataclass
class _Gap:
    noticed: float              # when we first saw it missing
    asked: float = -math.inf    # when we last asked for it
    asks: int = 0


@dataclass
class Asker:
    """Which missing seqs to ask for, and when (grace, re-ask interval, ask limit)."""

    grace_s: float = GRACE_S
    reask_s: float = REASK_S
    max_asks: int = MAX_ASKS
    _gaps: dict[int, dict[int, _Gap]] = field(default_factory=dict)

    def due(self, origin: int, missing: Iterable[int], now: float) -> list[int]:
        """Of ``missing`` (oldest first), the seqs to ask for now; at most MAX_RESEND_SEQS."""
        old = self._gaps.get(origin, {})
        gaps = {s: old.get(s) or _Gap(now) for s in missing}  # forgets gaps that were filled
        self._gaps[origin] = gaps
        out: list[int] = []
        for seq, gap in gaps.items():
            if len(out) == wire.MAX_RESEND_SEQS:
                break
            if gap.asks < self.max_asks and now - gap.noticed >= self.grace_s and now - gap.asked >= self.reask_s:
                gap.asked, gap.asks = now, gap.asks + 1
                out.append(seq)
        return out

    def filled(self, origin: int, seq: int) -> bool:
        """Note that ``seq`` arrived; True when we had asked for it."""
        gap = self._gaps.get(origin, {}).pop(seq, None)
        return gap is not None and gap.asks > 0


# ---------------------------------------------------------------- one peer's both sides

Send = Callable[[int, bytes], bool]  # Transport.send: False when the link's queue is full


class Resender:
    """A peer's retransmission: buffer what it sends, answer requests, ask for its gaps."""

    def __init__(self, peer_id: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.peer_id = peer_id
        self.clock = clock
        self.buffer = Buffer()
        self.asker = Asker()
        self.counts = dict.fromkeys(
            ("resend_requested", "resend_recovered", "resent", "resend_refused", "resend_missing"), 0)

    def sent(self, seq: int, data: bytes) -> None:
        self.buffer.keep(seq, data)

    def arrived(self, origin: int, seq: int) -> None:
        if self.asker.filled(origin, seq):
            self.counts["resend_recovered"] += 1

    def answer(self, req: wire.ResendRequest, send: Send) -> None:
        """Resend what ``req`` asks of us (its requester is already checked against the link)."""
        if req.origin != self.peer_id:
            self.counts["resend_refused"] += len(req.seqs)
            log.debug("resend_refused", requester=req.node_id, origin=req.origin, seqs=len(req.seqs),
                      reason="not_our_update")
            return
        ans = self.buffer.answer(req.node_id, req.seqs, self.clock())
        sent = sum(send(req.node_id, data) for data in ans.found)
        self.counts["resent"] += sent
        self.counts["resend_refused"] += ans.refused + len(ans.found) - sent
        self.counts["resend_missing"] += ans.missing
        log.debug("update_resent", requester=req.node_id, asked=len(req.seqs), resent=sent,
                  refused=ans.refused + len(ans.found) - sent, missing=ans.missing)

    def ask(self, ledger: Ledger, origins: Iterable[int], send: Send) -> None:
        """One round: a ResendRequest to each of ``origins`` with gaps past the grace."""
        now = self.clock()
        for origin in origins:
            missing = ledger.missing(origin, window=KEEP_UPDATES)
            seqs = self.asker.due(origin, missing, now)
            if not seqs:
                continue
            send(origin, wire.pack_resend_request(node_id=self.peer_id, origin=origin, seqs=seqs))
            self.counts["resend_requested"] += len(seqs)
            log.debug("resend_requested", origin=origin, seqs=len(seqs), first=seqs[0], last=seqs[-1])
