"""ZeroMQ links between neighbours, each behind a byte-pacing shaper; every byte accounted for.

Sockets (all owned by the asyncio loop, ``zmq.asyncio``):

* one ROUTER **inbox** per peer, bound at :func:`gossip.runtime.topology.inbox_address`; the
  sender of a frame is whose key signed it under CURVE (:func:`gossip.runtime.curve.recv_signed`),
  else the routing identity it announces (``b"p<id>:<random>"``, self-declared);
* one DEALER per neighbour, connected to that neighbour's inbox, fed by its own queue
  and task so a slow or dead neighbour never delays the others; a monitor says whether its
  connection is up.

Socket options, on purpose: ``MAXMSGSIZE`` (the inbox drops any peer that sends a frame
over ``security.max_message_bytes``, before we parse a byte), ``SNDHWM`` (:data:`SOCKET_HWM`
messages or fragments: ZeroMQ holds little, so ``bytes_sent`` is close to what left the
process), ``RCVHWM``, ``LINGER`` (a graceful stop gets ``LINGER_S`` to flush), and
no ``ROUTER_HANDOVER`` (an identity is never handed to a second connection: each DEALER
announces a fresh random suffix, so a restarted peer does not collide with its old connection).

Shaping (:mod:`gossip.runtime.shaper`): a message longer than the link's burst is cut into
fragments (:mod:`gossip.runtime.fragment`), each waits for its wire bytes' tokens, then for
``link.latency_ms`` in a per-link delay line, then is *awaited* into its socket: nothing is
sent fire-and-forget. The receiving side reassembles, so :meth:`Transport.recv` returns whole
messages. ``link.drop/duplicate/reorder`` inject faults on the sending side (for tests),
through :class:`gossip.sim.faults.FaultyLink`, which reports every drop to the counters.

Counters: :mod:`gossip.runtime.link` says what each one means.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import struct
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from gossip.config import Config
from gossip.errors import PeerError
from gossip.observe.log import get_logger
from gossip.runtime import curve, fragment, topology
from gossip.runtime.link import SEND_QUEUE, SOCKET_HWM, Link, Piece, identity, parse_identity
from gossip.runtime.shaper import Shaper, TokenBucket
from gossip.sim import faults

__all__ = ["SEND_QUEUE", "SOCKET_HWM", "Link", "TokenBucket", "Transport", "identity", "parse_identity"]

log = get_logger(__name__)

MIN_SLEEP_S = 0.001  # waits this short are skipped (a loop turn costs about as much)
LINGER_S = 1.0
_UP = zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
_EVENTS = _UP | zmq.EVENT_DISCONNECTED


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
        self.shaper = Shaper.from_config(cfg.link)
        self._latency_s = cfg.link.latency_ms / 1000
        self._rng = random.Random(cfg.seed * 7919 + peer_id)  # link faults (gossip.sim.faults), all links
        self.reassembly = fragment.Reassembler(cfg.security.max_message_bytes, cfg.link.reassembly_timeout_s,
                                               on_reject=lambda *why: self.on_refused(*why))  # into the result
        self._tasks: list[asyncio.Task[None]] = []
        self._monitors: list[zmq.asyncio.Socket] = []
        self._link_monitor: dict[int, tuple[asyncio.Task[None], zmq.asyncio.Socket]] = {}
        self.inbox: zmq.asyncio.Socket | None = None
        self._keys: curve.Keys | None = None  # security.curve: this peer's keys (gossip.runtime.curve)
        self._auth: Any = None  # and the ZAP handler that checks every client's key
        self.bytes_at_risk = 0  # counted as sent, but maybe still with ZeroMQ when its linger expired
        self.inbox_resets = 0  # inbox connections cut: a frame over max_message_bytes, or a peer gone
        self.on_refused: curve.OnRefused = lambda reason, peer, detail: None  # the node counts them (curve)

    # ------------------------------------------------------------ startup
    async def start(self) -> None:
        address = topology.inbox_address(self.cfg, self.peer_id)
        if address.startswith("ipc://"):
            Path(address[len("ipc://"):]).parent.mkdir(parents=True, exist_ok=True)
        self._keys = curve.load(self.cfg, self.peer_id) if self.cfg.security.curve else None
        inbox = self.ctx.socket(zmq.ROUTER)
        self._auth = curve.secure_inbox(self.ctx, inbox, self._keys, self.on_refused) if self._keys else None
        inbox.setsockopt(zmq.MAXMSGSIZE, self.cfg.security.max_message_bytes)
        inbox.setsockopt(zmq.RCVHWM, 4 * SEND_QUEUE)
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
                "(another peer with this id, or another program, holds it? change topology.base_port)"
            ) from None
        self.inbox = inbox
        self._monitor = inbox.get_monitor_socket(zmq.EVENT_DISCONNECTED | curve.CLIENT_FAILED)
        self._tasks.append(asyncio.create_task(self._watch_inbox(self._monitor), name="inbox-monitor"))
        for nbr in self.neighbours:
            self._open_link(nbr)
        log.info("transport_started", address=address, neighbours=self.neighbours,
                 bandwidth_bps=self.shaper.bits_per_s, latency_ms=self.cfg.link.latency_ms,
                 burst_bytes=self.shaper.burst_bytes, piece_bytes=self.shaper.piece_bytes)

    def _open_link(self, nbr: int) -> None:
        sock, monitor = self._connect(nbr)
        link = Link(nbr, sock, self.shaper.bucket())
        self.links[nbr] = link
        send = faults.wrap_send(functools.partial(self._deliver, link), self.cfg.link, self._rng,
                                functools.partial(self._on_fault, link))
        self._tasks.append(asyncio.create_task(self._pump(link, send), name=f"link-{nbr}"))
        self._watch(link, monitor)
        if self._latency_s > 0:
            self._tasks.append(asyncio.create_task(self._delay_line(link), name=f"link-{nbr}-delay"))

    def _connect(self, nbr: int) -> tuple[zmq.asyncio.Socket, zmq.asyncio.Socket]:
        """A fresh DEALER connected to ``nbr``'s inbox (a new routing id each time), and its monitor,
        made before the connect so that the connection's first event is never missed."""
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity(self.peer_id) + b":" + os.urandom(6).hex().encode())
        sock.setsockopt(zmq.SNDHWM, SOCKET_HWM)
        sock.setsockopt(zmq.LINGER, int(LINGER_S * 1000))
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if self._keys is not None:
            curve.secure_link(sock, self._keys, nbr)
        monitor = sock.get_monitor_socket(_EVENTS | curve.HANDSHAKE_FAILED)
        sock.connect(topology.inbox_address(self.cfg, nbr))
        return sock, monitor

    def _watch(self, link: Link, monitor: zmq.asyncio.Socket) -> None:
        self._monitors.append(monitor)
        task = asyncio.create_task(self._watch_link(link, monitor), name=f"link-{link.peer}-monitor")
        self._tasks.append(task)
        self._link_monitor[link.peer] = (task, monitor)

    def reconnect(self, nbr: int) -> None:
        """Replace the link's socket (gossip.runtime.linkwatch found it carrying nothing). What
        ZeroMQ still held for the old connection is lost with it: counted in ``lost_on_reconnect``."""
        link = self.links[nbr]
        task, monitor = self._link_monitor.pop(nbr)
        task.cancel()
        old = link.socket
        old.disable_monitor()
        link.lost_on_reconnect += len(link.recent)
        link.recent.clear()
        link.up = False
        link.socket, fresh = self._connect(nbr)  # the pump's next put goes here; an await on the old one fails
        self._watch(link, fresh)
        old.close(0)
        self._monitors.remove(monitor)
        monitor.close(0)
        link.reconnects += 1

    def queued_to(self, nbr: int) -> int:
        """Bytes accepted for ``nbr`` so far (gossip.runtime.linkwatch)."""
        return self.links[nbr].bytes_queued

    def heard_from(self, nbr: int) -> int:
        """Bytes received from ``nbr`` so far: what our heartbeat to it reports."""
        link = self.links.get(nbr)
        return 0 if link is None else link.bytes_received

    # ------------------------------------------------------------ sending
    def send(self, nbr: int, data: bytes) -> bool:
        """Queue ``data`` for ``nbr``; False (and counted) when that link's queue is full."""
        link = self.links[nbr]
        try:
            link.queue.put_nowait(data)
        except asyncio.QueueFull:
            link.dropped_queue_full += 1
            return False
        link.bytes_queued += len(data)
        link.messages_queued += 1
        link.pending += len(data)
        link.pending_messages += 1
        if link.was_up and not link.up:
            link.to_departed += 1
        return True

    def broadcast(self, data: bytes, exclude: tuple[int, ...] = ()) -> int:
        return sum(self.send(nbr, data) for nbr in self.links if nbr not in exclude)

    @staticmethod
    def _on_fault(link: Link, what: str, data: bytes) -> None:
        sign = -1 if what == "drop" else 1  # a duplicate is one more message to send
        link.pending += sign * len(data)
        link.pending_messages += sign
        if what == "drop":
            link.dropped_fault += 1

    async def _pump(self, link: Link, send: faults.Send) -> None:
        while True:
            await send(await link.queue.get())

    async def _deliver(self, link: Link, data: bytes) -> None:
        """One message through the shaper: its pieces, each after its tokens (and the latency)."""
        if self.shaper.fragments(len(data)) == 1:
            pieces: Any = [([data], len(data), True)]
        else:
            mid, link.next_fragmented = link.next_fragmented, link.next_fragmented + 1
            parts = list(fragment.split(data, self.shaper.piece_bytes, mid))
            pieces = [([h, v], len(v), i == len(parts) - 1) for i, (h, v) in enumerate(parts)]
        for piece in pieces:
            frames = piece[0]
            wire = self.shaper.wire_bytes(*(len(f) for f in frames))
            delay = link.bucket.reserve(wire)
            if delay > MIN_SLEEP_S:  # a shorter wait is inside the burst: the next piece makes it up
                await asyncio.sleep(delay)
            if self._latency_s > 0:
                await link.delayed.put((time.monotonic() + self._latency_s, piece))
            else:
                await self._put(link, piece, wire)

    async def _delay_line(self, link: Link) -> None:
        """Hold every piece for ``link.latency_ms`` after its slot, in order, then await its send."""
        while True:
            due, piece = await link.delayed.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._put(link, piece, self.shaper.wire_bytes(*(len(f) for f in piece[0])))

    async def _put(self, link: Link, piece: Piece, wire: float) -> None:
        frames, size, last = piece
        while True:
            sock = link.socket
            try:
                await sock.send_multipart(frames, copy=len(frames) > 1 and len(frames[1]) < 65536)
                break
            except asyncio.CancelledError:  # our own cancellation, or the socket closed by reconnect()
                task = asyncio.current_task()
                if link.socket is sock or (task is not None and task.cancelling()):
                    raise  # else this piece goes on the new connection
        link.fragments_sent += len(frames) > 1
        link.bytes_sent += size
        link.wire_bytes_sent += wire
        link.pending -= size
        link.recent.append(size)
        if not link.up:
            link.sent_while_down += size
            link.messages_while_down += last
        self.bytes_sent_by_epoch[self.epoch] += size
        if last:
            link.messages_sent += 1
            link.pending_messages -= 1

    async def _watch_link(self, link: Link, monitor: zmq.asyncio.Socket) -> None:
        """Track whether the link's connection is up (ZeroMQ reconnects by itself)."""
        while True:
            frames = await monitor.recv_multipart()
            event = struct.unpack("=H", frames[0][:2])[0]
            if event & _UP:
                if not link.up:
                    log.debug("link_up", peer=link.peer)
                link.up = link.was_up = True
                link.sent_while_down = link.messages_while_down = 0  # ZeroMQ hands its queue to the connection
            elif event & zmq.EVENT_DISCONNECTED:
                link.up = False
                log.debug("link_down", peer=link.peer)
            elif event & curve.HANDSHAKE_FAILED:
                curve.handshake_failed(event, link.peer, frames[1].decode(errors="replace"), self.on_refused)

    async def _watch_inbox(self, monitor: zmq.asyncio.Socket) -> None:
        """Count cut inbox connections (ZeroMQ drops an oversized frame's sender before we see a byte)."""
        while True:
            if not curve.client_failed(await monitor.recv_multipart(), self.on_refused):  # else counted there
                self.inbox_resets += 1

    # ------------------------------------------------------------ receiving
    async def recv(self) -> tuple[int | None, list[bytes]]:
        """The next whole message: (neighbour id or None for an unknown sender, payload frames)."""
        while True:
            sender, frames = await self._recv_frames()
            header = fragment.header_of(frames[0], self.reassembly.max_bytes) if len(frames) == 2 else None
            link = self.links.get(sender) if sender is not None else None
            if header is None or link is None or sender is None:  # not a neighbour's fragment
                self._count_in(link, sum(len(f) for f in frames), 1)
                if sender is not None:
                    self.reassembly.interrupt(sender)
                return sender, frames
            self._count_in(link, len(frames[1]), 0)  # message bytes, not the fragment header
            whole = self.reassembly.offer(sender, header, frames[1])
            if whole is not None:
                link.messages_received += 1
                return sender, [whole]

    async def _recv_frames(self) -> tuple[int | None, list[bytes]]:
        assert self.inbox is not None
        if self._keys is None:
            frames = await self.inbox.recv_multipart()
            sender = parse_identity(frames[0])
        else:  # whose key signed the frame, never the routing identity it announces
            sender, frames = await curve.recv_signed(self.inbox, parse_identity, self.on_refused)
        return sender, frames[1:]

    def inbox_waiting(self) -> bool:
        """Does the inbox already hold the next frame? (gossip.runtime.stall)"""
        return self.inbox is not None and bool(int(self.inbox.get(zmq.EVENTS)) & zmq.POLLIN)

    def _count_in(self, link: Link | None, size: int, messages: int) -> None:
        if link is not None:
            link.bytes_received += size
            link.messages_received += messages
        else:
            self.bytes_received_unknown += size
        self.bytes_received_by_epoch[self.epoch] += size

    # ------------------------------------------------------------ accounting
    def _total(self, name: str) -> int:
        return sum(getattr(link, name) for link in self.links.values())

    @property
    def bytes_sent(self) -> int:
        return self._total("bytes_sent")

    @property
    def bytes_received(self) -> int:
        return self._total("bytes_received") + self.bytes_received_unknown

    @property
    def bytes_queued(self) -> int:
        return self._total("bytes_queued")

    @property
    def bytes_unsent(self) -> int:
        return self._total("pending")

    @property
    def wire_bytes_sent(self) -> int:
        return round(sum(link.wire_bytes_sent for link in self.links.values()))

    @property
    def dropped(self) -> int:
        return self._total("dropped")

    def link_stats(self) -> dict[str, dict[str, int]]:
        return {str(n): link.stats() for n, link in self.links.items()}

    def totals(self) -> dict[str, Any]:
        """All links' counters summed, plus the receiving side's fragment rejections."""
        out: dict[str, Any] = defaultdict(int)
        for link in self.links.values():
            for key, value in link.stats().items():
                out[key] += value
        out["bytes_received"] = self.bytes_received
        out["fragments_rejected"] = dict(self.reassembly.rejected)
        out["bytes_at_risk"] = self.bytes_at_risk
        return dict(out)

    async def flush(self, timeout: float) -> None:
        """Wait until every link has handed all it accepted to ZeroMQ (or ``timeout``), before a close."""
        deadline = time.monotonic() + timeout
        while any(link.pending_messages > 0 for link in self.links.values()):
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------ shutdown
    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in self.links.values():
            if not link.up:  # what ZeroMQ took for a connection that is gone never left
                link.bytes_sent -= link.sent_while_down
                link.messages_sent -= link.messages_while_down
                link.pending += link.sent_while_down
                link.pending_messages += link.messages_while_down
            link.socket.close()
        for monitor in self._monitors:
            monitor.close(0)
        if self.inbox is not None:
            self.inbox.disable_monitor()
            self._monitor.close(0)  # closed here: a task cancelled before it ran has no finally
            self.inbox.close(0)
        if self._auth is not None:
            self._auth.stop()
        t0 = time.monotonic()
        self.ctx.term()
        if time.monotonic() - t0 >= 0.95 * LINGER_S:  # ZeroMQ gave up on what it still held
            self.bytes_at_risk = sum(sum(link.recent) for link in self.links.values() if link.up)
            log.warning("transport_linger_expired", bytes_at_risk=self.bytes_at_risk)
        log.info("transport_closed", address=topology.inbox_address(self.cfg, self.peer_id),
                 bytes_sent=self.bytes_sent, bytes_unsent=self.bytes_unsent, dropped=self.dropped,
                 bytes_at_risk=self.bytes_at_risk)
