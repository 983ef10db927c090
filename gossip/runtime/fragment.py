"""Fragments: a message longer than one burst, cut for the shaper and put back together.

On the wire a fragment is a two-frame ZeroMQ message, a serialized ``Fragment`` header
(proto/gossip.proto) then the raw bytes of its piece; a whole message stays one frame. A link
sends one message's fragments in order and back to back, so a receiver keeps at most one
message in reassembly per neighbour, and :class:`Reassembler` is strict about it: a fragment
must continue the open message exactly (same ``message_id``, ``count`` and ``total``; the next
``index``; ``offset`` = bytes so far; never past ``total``) or start a new one at index 0, and
a message may not exceed ``security.max_message_bytes`` nor 65536 fragments. Anything else is
counted by reason in :attr:`Reassembler.rejected` (and the open message dropped), never
raised; a two-frame message whose first frame is no valid header (:func:`header_of`) is left
to the dispatcher. A message left incomplete (its sender gone, a reconnect lost a piece) is dropped
after ``link.reassembly_timeout_s`` or when its sender starts another message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from gossip._proto import gossip_pb2 as pb
from gossip.observe.log import get_logger

log = get_logger(__name__)

MAX_FRAGMENTS = 1 << 16


def split(data: bytes, piece: int, message_id: int) -> Iterator[tuple[bytes, memoryview]]:
    """The (header, piece) frames of ``data`` cut every ``piece`` bytes (zero-copy views)."""
    view = memoryview(data)
    count = -(-len(data) // piece)
    for index in range(count):
        offset = index * piece
        header = pb.Fragment(message_id=message_id, index=index, count=count, total=len(data),
                             offset=offset).SerializeToString()
        yield header, view[offset:offset + piece]


def header_of(frame: bytes, max_bytes: int) -> pb.Fragment | None:
    """``frame`` as a fragment header within the static bounds, or None: then the two-frame
    message is no fragment and goes to the dispatcher like any other (rejected as ``bad_frames``)."""
    try:
        h = pb.Fragment.FromString(frame)
    except (DecodeError, RuntimeError, ValueError):
        return None
    if not 2 <= h.count <= MAX_FRAGMENTS or not h.count <= h.total <= max_bytes or h.index >= h.count:
        return None
    return h


@dataclass
class _Open:
    message_id: int
    count: int
    total: int
    started: float
    parts: list[bytes] = field(default_factory=list)
    size: int = 0


class Reassembler:
    """Whole messages out of one peer's incoming fragments, per neighbour, within strict bounds."""

    def __init__(self, max_bytes: int, timeout_s: float, clock: Callable[[], float] = time.monotonic,
                 on_reject: Callable[[str, int | None, str], None] | None = None) -> None:
        self.max_bytes = max_bytes  # per neighbour: at most one open message, at most this long
        self.timeout_s = timeout_s
        self.clock = clock
        self.on_reject = on_reject  # also told of every rejection (the node counts them by reason)
        self.open: dict[int, _Open] = {}
        self.rejected: dict[str, int] = {}  # reason -> fragments (or open messages) dropped
        self.messages = 0  # whole messages put back together
        self._swept = 0.0

    @property
    def pending_bytes(self) -> int:
        return sum(o.size for o in self.open.values())

    def offer(self, sender: int, h: pb.Fragment, data: bytes) -> bytes | None:
        """Take one fragment (its header from :func:`header_of`) from ``sender``; the whole message
        once its last piece is in."""
        now = self.clock()
        self.expire(now)
        cur = self.open.get(sender)
        if h.index == 0:
            if cur is not None:  # the previous message never finished: its rest is lost
                self._drop(sender, "fragment_incomplete")
            cur = self.open[sender] = _Open(h.message_id, h.count, h.total, now)
        elif cur is None:
            self.reject("fragment_orphan", sender, f"index {h.index} without index 0")
            return None
        elif (h.message_id, h.count, h.total) != (cur.message_id, cur.count, cur.total):
            self._drop(sender, "fragment_inconsistent")
            return None
        if h.index != len(cur.parts) or h.offset != cur.size:
            self._drop(sender, "fragment_order")
            return None
        last = h.index == cur.count - 1
        end = cur.size + len(data)
        if not data or end > cur.total or (last and end != cur.total):
            self._drop(sender, "fragment_length")
            return None
        cur.parts.append(data)
        cur.size = end
        if not last:
            return None
        del self.open[sender]
        self.messages += 1
        return b"".join(cur.parts)

    def interrupt(self, sender: int) -> None:
        """``sender`` sent a whole message: any message it left open will never finish."""
        if sender in self.open:
            self._drop(sender, "fragment_incomplete")

    def expire(self, now: float) -> None:
        """Drop open messages older than the timeout (checked at most once a second)."""
        if now - self._swept < 1.0:
            return
        self._swept = now
        for sender in [s for s, o in self.open.items() if now - o.started > self.timeout_s]:
            self._drop(sender, "fragment_timeout")

    def _drop(self, sender: int, reason: str) -> None:
        cur = self.open.pop(sender)
        self.reject(reason, sender, f"message {cur.message_id}: {len(cur.parts)}/{cur.count} fragments")

    def reject(self, reason: str, sender: int | None, detail: str) -> None:
        n = self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a flood costs a few lines
            log.warning("fragment_rejected", reason=reason, sender=sender, count=n, detail=detail)
        if self.on_reject is not None:
            self.on_reject(reason, sender, detail)
