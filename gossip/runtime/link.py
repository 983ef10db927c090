"""One link to a neighbour: its socket, bucket, queues, and the counters that account for every byte.

Counters (per link: :meth:`Link.stats`, in ``link_stats()`` and the result's ``links``; summed
by :meth:`gossip.runtime.transport.Transport.totals`). Message bytes are the bytes of the
messages the node hands over (fragment headers not included):

* ``bytes_queued`` / ``messages_queued``: accepted by ``Transport.send`` (not refused);
* ``bytes_sent`` / ``messages_sent``: taken by ZeroMQ from us (an awaited send, never
  fire-and-forget) on a link whose connection was up, or that came up later; ZeroMQ holds at most
  ``SOCKET_HWM`` messages or fragments per link, so this is what left the process up to that;
  a message counts as sent when its last fragment is;
* ``wire_bytes_sent``: the shaper's estimate of the bytes ``bytes_sent`` put on the wire (ZMTP
  framing, fragment headers, TCP/IP/Ethernet headers per segment: :mod:`gossip.runtime.shaper`),
  what the bucket charged;
* ``bytes_unsent`` / ``messages_unsent``: accepted and not sent (yet): in the queue, the delay
  line, or (once the transport closed) with ZeroMQ for a neighbour that was not connected; final
  after ``Transport.close`` (logged in ``transport_closed``);
* ``dropped``: messages refused or lost, = ``dropped_queue_full`` (``SEND_QUEUE`` messages already
  waiting for a stalled neighbour: refused by ``send``, not queued) + ``dropped_fault``
  (``link.drop``, simulated);
* ``to_departed``: messages queued while the neighbour's connection, once up, was down (they go
  if it comes back, else end in ``unsent``);
* ``fragments_sent``; ``bytes_received`` / ``messages_received`` (message bytes from this
  neighbour; a fragmented message counts once, when whole).
* ``reconnects``: fresh connections after :mod:`gossip.runtime.linkwatch` found the link carrying
  nothing; ``lost_on_reconnect``: pieces ZeroMQ still held for the dropped connection (counted
  as sent; the receiver's resend requests recover their updates).

Without fault injection, at any moment: queued = sent + unsent (bytes and messages). The one
thing ZeroMQ does not tell: whether it wrote what it holds (at most ``SOCKET_HWM`` pieces per
link) before its linger expired at close; if it did not, ``Transport.bytes_at_risk`` says how
much that may be (logged in ``transport_linger_expired``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq.asyncio

from gossip.runtime.shaper import TokenBucket

SEND_QUEUE = 256  # messages waiting per link before new ones are dropped
SOCKET_HWM = 4  # messages (or fragments) ZeroMQ holds per link: what bytes_sent may run ahead
DELAY_LINE = 1024  # pieces waiting out link.latency_ms per link (the bucket wait bounds it first)
Piece = tuple[list[Any], int, bool]  # (frames, message bytes in it, last piece of its message)


def identity(peer_id: int) -> bytes:
    return b"p%d" % peer_id


def parse_identity(raw: bytes) -> int | None:
    """The peer a routing identity ``p<id>`` or ``p<id>:<suffix>`` names (self-declared), or None."""
    head = raw.split(b":", 1)[0]
    if head[:1] == b"p" and head[1:].isdigit() and len(head) < 8:
        return int(head[1:])
    return None


@dataclass
class Link:
    peer: int
    socket: zmq.asyncio.Socket
    bucket: TokenBucket
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(SEND_QUEUE))
    delayed: asyncio.Queue[tuple[float, Piece]] = field(default_factory=lambda: asyncio.Queue(DELAY_LINE))
    bytes_queued: int = 0
    bytes_sent: int = 0
    wire_bytes_sent: float = 0.0
    bytes_received: int = 0
    messages_queued: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    fragments_sent: int = 0
    dropped_queue_full: int = 0
    dropped_fault: int = 0
    to_departed: int = 0
    up: bool = False  # the connection to the neighbour is established (the socket's monitor)
    was_up: bool = False
    pending: int = 0  # message bytes accepted and not yet taken by ZeroMQ
    pending_messages: int = 0
    sent_while_down: int = 0  # taken by ZeroMQ while no connection was up: delivered only once it is
    messages_while_down: int = 0
    next_fragmented: int = 0
    reconnects: int = 0  # fresh connections after gossip.runtime.linkwatch found this one lost
    lost_on_reconnect: int = 0  # pieces ZeroMQ still held for the old connection
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=SOCKET_HWM))  # last pieces' sizes

    @property
    def dropped(self) -> int:
        return self.dropped_queue_full + self.dropped_fault

    def stats(self) -> dict[str, int]:
        return {"bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received, "dropped": self.dropped,
                "bytes_queued": self.bytes_queued, "wire_bytes_sent": round(self.wire_bytes_sent),
                "bytes_unsent": self.pending, "messages_queued": self.messages_queued,
                "messages_sent": self.messages_sent, "messages_received": self.messages_received,
                "messages_unsent": self.pending_messages, "fragments_sent": self.fragments_sent,
                "dropped_queue_full": self.dropped_queue_full, "dropped_fault": self.dropped_fault,
                "to_departed": self.to_departed, "reconnects": self.reconnects,
                "lost_on_reconnect": self.lost_on_reconnect}
