"""ZeroMQ links between neighbours, each behind a token-bucket bandwidth shaper.

Sockets (all owned by the asyncio loop, ``zmq.asyncio``):

* one ROUTER **inbox** per peer, bound at :func:`gossip.runtime.topology.inbox_address`; the
  routing identity of each frame says which neighbour sent it (``b"p<id>"``);
* one DEALER per neighbour, connected to that neighbour's inbox, fed by its own queue
  and task so a slow or dead neighbour never delays the others.

Socket options, on purpose: ``MAXMSGSIZE`` (the inbox drops any peer that sends a frame
over ``security.max_message_bytes``, before we parse a byte), ``SNDHWM``/``RCVHWM``
(bounded memory when a neighbour stalls: past ``SEND_QUEUE`` queued messages new ones are
dropped and counted), ``LINGER`` (a graceful stop gets ``LINGER_S`` to flush), and
``ROUTER_HANDOVER`` (a restarted peer takes over its identity).

Shaping: each link is a :class:`TokenBucket` at ``link.bandwidth`` plus a fixed
``link.latency_ms``. Bytes are counted when handed to ZeroMQ, per neighbour and per epoch.
``link.drop/duplicate/reorder`` inject faults on the sending side, for tests.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from gossip.config import Config, parse_bandwidth
from gossip.errors import PeerError
from gossip.observe.log import get_logger
from gossip.runtime import curve, topology

log = get_logger(__name__)

SEND_QUEUE = 256  # messages waiting per link before new ones are dropped
SOCKET_HWM = 64  # messages ZeroMQ buffers per link
LINGER_S = 1.0
BURST_S = 0.002  # a link may send this many seconds' worth of bytes back to back


def identity(peer_id: int) -> bytes:
    return b"p%d" % peer_id


def parse_identity(raw: bytes) -> int | None:
    if raw[:1] == b"p" and raw[1:].isdigit() and len(raw) < 8:
        return int(raw[1:])
    return None


class TokenBucket:
    """Serialises a link at ``bits_per_s``: :meth:`reserve` says how long to wait first."""

    def __init__(self, bits_per_s: float, clock=time.monotonic) -> None:
        self.bytes_per_s = bits_per_s / 8
        self.clock = clock
        self._free_at = 0.0

    def reserve(self, nbytes: int) -> float:
        if self.bytes_per_s == float("inf"):
            return 0.0
        now = self.clock()
        start = max(self._free_at, now - BURST_S)
        self._free_at = start + nbytes / self.bytes_per_s
        return max(0.0, self._free_at - now)


@dataclass
class Link:
    peer: int
    socket: zmq.asyncio.Socket
    bucket: TokenBucket
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(SEND_QUEUE))
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    dropped: int = 0
    held: bytes | None = None  # a message held back to be reordered


class Transport:
    def __init__(self, cfg: Config, peer_id: int, neighbours: list[int]) -> None:
        self.cfg = cfg
        self.peer_id = peer_id
        self.neighbours = neighbours
        self.ctx = zmq.asyncio.Context()
        self.links: dict[int, Link] = {}
        self.epoch = 0
        self.bytes_sent_by_epoch: dict[int, int] = defaultdict(int)
        self.bytes_received_by_epoch: dict[int, int] = defaultdict(int)
        self.bytes_received_unknown = 0
        self._latency_s = cfg.link.latency_ms / 1000
        self._rng = random.Random(cfg.seed * 7919 + peer_id)
        self._tasks: list[asyncio.Task[None]] = []
        self.inbox: zmq.asyncio.Socket | None = None
        self._keys: curve.Keys | None = None  # security.curve: this peer's keys (gossip.runtime.curve)
        self._auth: Any = None  # and the ZAP handler that checks every client's key
        self.inbox_resets = 0  # inbox connections cut: a frame over max_message_bytes, or a peer gone

    # ------------------------------------------------------------ startup
    async def start(self) -> None:
        address = topology.inbox_address(self.cfg, self.peer_id)
        if address.startswith("ipc://"):
            Path(address[len("ipc://"):]).parent.mkdir(parents=True, exist_ok=True)
        self._keys = curve.load(self.cfg, self.peer_id) if self.cfg.security.curve else None
        inbox = self.ctx.socket(zmq.ROUTER)
        self._auth = curve.secure_inbox(self.ctx, inbox, self._keys) if self._keys else None
        inbox.setsockopt(zmq.MAXMSGSIZE, self.cfg.security.max_message_bytes)
        inbox.setsockopt(zmq.RCVHWM, 4 * SEND_QUEUE)
        inbox.setsockopt(zmq.ROUTER_HANDOVER, 1)
        inbox.setsockopt(zmq.LINGER, 0)
        try:
            inbox.bind(address)
        except zmq.ZMQError as exc:
            inbox.close(0)
            if self._auth is not None:
                self._auth.stop()
            self.ctx.term()
            raise PeerError(
                f"peer {self.peer_id} cannot listen on {address}: {exc.strerror} "
                "(another peer with this id running? change topology.base_port)"
            ) from None
        self.inbox = inbox
        self._monitor = inbox.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._tasks.append(asyncio.create_task(self._watch_inbox(self._monitor), name="inbox-monitor"))
        bits = parse_bandwidth(self.cfg.link.bandwidth)
        for nbr in self.neighbours:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, identity(self.peer_id))
            sock.setsockopt(zmq.SNDHWM, SOCKET_HWM)
            sock.setsockopt(zmq.LINGER, int(LINGER_S * 1000))
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            if self._keys is not None:
                curve.secure_link(sock, self._keys, nbr)
            sock.connect(topology.inbox_address(self.cfg, nbr))
            link = Link(nbr, sock, TokenBucket(bits))
            self.links[nbr] = link
            self._tasks.append(asyncio.create_task(self._pump(link), name=f"link-{nbr}"))
        log.info("transport_started", address=address, neighbours=self.neighbours,
                 bandwidth_bps=bits, latency_ms=self.cfg.link.latency_ms)

    # ------------------------------------------------------------ sending
    def send(self, nbr: int, data: bytes) -> bool:
        """Queue ``data`` for ``nbr``; False (and counted) when that link's queue is full."""
        link = self.links[nbr]
        try:
            link.queue.put_nowait(data)
            return True
        except asyncio.QueueFull:
            link.dropped += 1
            return False

    def broadcast(self, data: bytes, exclude: tuple[int, ...] = ()) -> int:
        return sum(self.send(nbr, data) for nbr in self.links if nbr not in exclude)

    async def _pump(self, link: Link) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await link.queue.get()
            for out in self._faults(link, data):
                delay = link.bucket.reserve(len(out))
                if delay > 0:
                    await asyncio.sleep(delay)
                if self._latency_s > 0:
                    loop.call_later(self._latency_s, self._send_later, link, out)
                else:
                    await link.socket.send(out, copy=False)
                link.bytes_sent += len(out)
                link.messages_sent += 1
                self.bytes_sent_by_epoch[self.epoch] += len(out)

    @staticmethod
    def _send_later(link: Link, data: bytes) -> None:
        try:
            link.socket.send(data, flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:  # full or closed: counted as a drop, like a lost packet
            link.dropped += 1

    def _faults(self, link: Link, data: bytes) -> list[bytes]:
        """Fault injection for tests: drop, duplicate or hold back (reorder) a message."""
        lk = self.cfg.link
        if not (lk.drop or lk.duplicate or lk.reorder):
            return [data]
        r = self._rng.random()
        if r < lk.drop:
            return []
        out = [data, data] if r < lk.drop + lk.duplicate else [data]
        if link.held is None and self._rng.random() < lk.reorder:
            link.held = out.pop()
            return out
        if link.held is not None:
            out.append(link.held)
            link.held = None
        return out

    async def _watch_inbox(self, monitor: zmq.asyncio.Socket) -> None:
        """Count cut inbox connections (ZeroMQ drops an oversized frame's sender before we see a byte)."""
        while True:
            await monitor.recv_multipart()
            self.inbox_resets += 1

    # ------------------------------------------------------------ receiving
    async def recv(self) -> tuple[int | None, list[bytes]]:
        """The next message: (neighbour id or None for an unknown sender, payload frames)."""
        assert self.inbox is not None
        if self._keys is None:
            frames = await self.inbox.recv_multipart()
            sender = parse_identity(frames[0])
        else:  # the sender is whose key signed the frame; a routing identity claiming another is refused
            raw = await self.inbox.recv_multipart(copy=False)
            claimed, signed = parse_identity(raw[0].bytes), curve.authenticated_sender(raw[-1])
            sender = claimed if claimed == signed else None
            frames = [f.bytes for f in raw]
        size = sum(len(f) for f in frames[1:])
        link = self.links.get(sender) if sender is not None else None
        if link is not None:
            link.bytes_received += size
            link.messages_received += 1
        else:
            self.bytes_received_unknown += size
        self.bytes_received_by_epoch[self.epoch] += size
        return sender, frames[1:]

    # ------------------------------------------------------------ accounting
    @property
    def bytes_sent(self) -> int:
        return sum(link.bytes_sent for link in self.links.values())

    @property
    def bytes_received(self) -> int:
        return sum(link.bytes_received for link in self.links.values()) + self.bytes_received_unknown

    def link_stats(self) -> dict[str, dict[str, int]]:
        return {
            str(n): {"bytes_sent": link.bytes_sent, "bytes_received": link.bytes_received,
                     "dropped": link.dropped}
            for n, link in self.links.items()
        }

    async def flush(self, timeout: float) -> None:
        """Wait until every link queue is empty (or ``timeout``), before a graceful close."""
        deadline = time.monotonic() + timeout
        while any(not link.queue.empty() for link in self.links.values()):
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------ shutdown
    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in self.links.values():
            link.socket.close()
        if self.inbox is not None:
            self.inbox.disable_monitor()
            self._monitor.close(0)  # closed here: a task cancelled before it ran has no finally
            self.inbox.close(0)
        if self._auth is not None:
            self._auth.stop()
        self.ctx.term()
        log.info("transport_closed", address=topology.inbox_address(self.cfg, self.peer_id))
