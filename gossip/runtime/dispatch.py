"""Every frame a neighbour sends, from the inbox to where it belongs.

:meth:`Dispatcher.handle` validates the frame (:func:`gossip.protocol.wire.unpack_envelope`),
checks who sent it (a configured neighbour; ``from_id`` and the message's ``node_id`` must
match the link's identity where they name the sender; on a full mesh nobody may speak for
another peer), and routes it:

* an update: dropped when out of the de-duplication window or seen before (counted as a
  duplicate), else recorded in the ledger, relayed on sparse topologies (the parsed envelope
  re-addressed; to every other neighbour, or under ``topology.relay: shortest_paths`` only to
  those farther from its origin), and handed to the training thread (or only
  counted while catching up: the awaited state holds it);
* Done: the two-phase finish (:mod:`gossip.runtime.membership`), relayed the first time;
* Heartbeat, Hello, StateRequest, StateChunk, ResendRequest: to their owners.

A bad frame raises :class:`~gossip.errors.ProtocolError` inside; :meth:`handle` counts it
by reason and logs ``update_rejected`` (aggregated: :class:`gossip.runtime.outcome.RejectLog`),
never more.

Floods cost next to nothing: before any decoding a frame is checked cheap-first (frame count,
size, the envelope's kind) against its sender's token bucket for that kind
(:mod:`gossip.runtime.ratelimit`); an excess frame is dropped and counted as ``rate_limited``,
never answered. A copy of an update already recorded (relays on a sparse topology bring most
updates more than once) is counted as a duplicate from its envelope alone, never decoded. The receive loop yields to the other tasks every ``YIELD_EVERY`` frames, so
heartbeats and the training thread's hand-offs never wait on a flood.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from gossip._proto import gossip_pb2 as pb
from gossip.config import SecurityConfig
from gossip.errors import PeerError, ProtocolError
from gossip.observe.log import get_logger
from gossip.protocol import wire
from gossip.runtime.catchup import CatchUp
from gossip.runtime.ledger import Ledger
from gossip.runtime.membership import Membership
from gossip.runtime.outcome import Counters
from gossip.runtime.ratelimit import JUNK, RateLimiter
from gossip.runtime.resend import Resender

log = get_logger(__name__)
YIELD_EVERY = 32        # frames handled back to back before the receive loop lets other tasks run
SUMMARY_EVERY_S = 1.0   # how often the receive loop writes the rejection summaries that are due


class Link(Protocol):
    """The part of :class:`gossip.runtime.transport.Transport` the dispatcher sends with."""

    def send(self, nbr: int, data: bytes) -> bool: ...
    def broadcast(self, data: bytes, exclude: tuple[int, ...] = ()) -> int: ...


class Dispatcher:
    def __init__(self, peer_id: int, neighbours: list[int], *, relay: bool, limits: wire.Limits,
                 config_hash: str, ledger: Ledger, counters: Counters, membership: Membership,
                 catchup: CatchUp, resend: Resender, link: Link,
                 deliver: Callable[[wire.DecodedUpdate | wire.Snapshot], None], ask_state: Callable[[int], None],
                 on_fatal: Callable[[PeerError], None], clock: Callable[[], float] = time.monotonic,
                 security: SecurityConfig | None = None, greet: Callable[[int], None] | None = None,
                 on_heartbeat: Callable[[int, int], None] | None = None,
                 own_step: Callable[[], int] = lambda: 0, on_step: Callable[[], None] | None = None,
                 relay_to: dict[int, tuple[int, ...]] | None = None) -> None:
        self.peer_id = peer_id
        self.neighbours = neighbours
        self.relay = relay
        self.limits = limits
        self.config_hash = config_hash
        self.ledger = ledger
        self.counters = counters
        self.membership = membership
        self.catchup = catchup
        self.resend = resend
        self.link = link
        self.deliver = deliver      # to the training thread (Bridge.to_thread)
        self.ask_state = ask_state  # a neighbour asked for our state (StateServer.asked)
        self.on_fatal = on_fatal    # a neighbour runs a different model: stop
        self.greet = greet          # a neighbour said Hello: tell it our step now (a late joiner waits for it)
        self.on_heartbeat = on_heartbeat  # (sender, heard_from_you): is our link to it alive? (LinkWatch)
        self.clock = clock
        self.heard: set[int] = set()  # neighbours that have said anything valid
        self.neighbour_step: dict[int, int] = {}  # global step from each neighbour's heartbeats and own updates
        self.step_moved_at: dict[int, float] = {}  # when each neighbour's step last changed (the lead bound)
        self.on_step = on_step  # a neighbour's own update told a newer step (the lead bound's news)
        self.own_step = own_step
        self.relay_to = relay_to  # origin -> neighbours farther from it (topology.relay_targets); None: flood
        self.met_at: dict[int, int] = {}      # our step when we (re)met each neighbour: told in our heartbeats
        self.they_met_us: dict[int, int] = {}  # each neighbour's step when it (re)met us: from its heartbeats
        self.stalled: dict[int, tuple[float, float]] = {}  # (its recent stall in s, when we heard it): adapt
        sec = SecurityConfig() if security is None else security
        self.rates = RateLimiter(sec.rate_scale, clock)
        counters.log.interval_s = sec.reject_log_interval_s

    async def receive(self, recv: Callable[[], Awaitable[tuple[int | None, list[bytes]]]]) -> None:
        handled, summarized = 0, self.clock()
        while True:
            sender, frames = await recv()  # a ready socket returns at once: no yield by itself
            self.handle(sender, frames)
            handled += 1
            if handled % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            now = self.clock()
            if now - summarized >= SUMMARY_EVERY_S:
                summarized = now
                self.counters.log.flush(now)

    def handle(self, sender: int | None, frames: list[bytes]) -> None:
        kind, env = self._parse(frames)
        if not self.rates.allow(sender, kind):
            self.counters.limited(kind, sender)
            return
        try:
            if env is not None and kind == "update" and self._a_copy(sender, env):
                return
            self._handle(sender, frames, env)
        except ProtocolError as exc:
            self.counters.reject(exc.reason, sender, str(exc))
        except Exception as exc:  # a bug here must not end the receive loop (nor can a frame that finds one)
            log.exception("dispatch_internal_error", sender=sender)
            self.counters.reject("internal_error", sender, f"{type(exc).__name__}: {exc}")

    def _a_copy(self, sender: int | None, env: pb.Envelope) -> bool:
        """A well-addressed update already recorded: a duplicate, and a sign of life, undecoded."""
        origin, seq = env.update.node_id, env.update.seq
        if (sender not in self.neighbours or env.from_id != sender or env.version != wire.PROTOCOL_VERSION
                or origin == self.peer_id or not self.ledger.known(origin) or not (self.relay or origin == sender)
                or not self.ledger.seen(origin, seq)):
            return False  # anything else takes the full path (and its checks)
        self._alive(sender)
        self.counters.duplicates += 1
        return True

    def _parse(self, frames: list[bytes]) -> tuple[str, pb.Envelope | None]:
        """The envelope's body name, cheap-first (frame count, size, parse): ``junk`` if none."""
        if len(frames) != 1 or not isinstance(frames[0], bytes) or len(frames[0]) > self.limits.max_bytes:
            return JUNK, None
        try:
            env = pb.Envelope.FromString(frames[0])
            kind = env.WhichOneof("body")
        except Exception:  # DecodeError, or anything the C parser raises on garbage
            return JUNK, None
        return (kind, env) if kind else (JUNK, None)

    def _handle(self, sender: int | None, frames: list[bytes], parsed: pb.Envelope | None = None) -> None:
        if len(frames) != 1:
            raise ProtocolError("bad_frames", f"{len(frames)} frames, expected 1")
        msg, env = wire.unpack_envelope(frames[0], self.limits, parsed)
        if sender is None or sender not in self.neighbours:
            raise ProtocolError("unknown_sender", f"identity is not a configured neighbour of {self.peer_id}")
        if env.from_id != sender:  # every envelope names who put it on the link: the key's owner
            raise ProtocolError("spoofed_node_id", f"neighbour {sender} sent from_id {env.from_id}")
        if isinstance(msg, (wire.Heartbeat, wire.Hello, wire.Snapshot)) and msg.node_id != sender:
            raise ProtocolError("spoofed_node_id", f"neighbour {sender} sent a {type(msg).__name__} "
                                f"of {msg.node_id}")
        now = self._alive(sender)  # only a well-formed frame that names its sender truly counts
        if isinstance(msg, wire.DecodedUpdate):
            self._on_update(sender, msg, env, now)
        elif isinstance(msg, wire.Snapshot):  # a teacher (codistill): the training thread judges it
            self.deliver(msg)
        elif isinstance(msg, wire.Heartbeat):
            if self.neighbour_step.get(sender) != msg.step:
                self.neighbour_step[sender], self.step_moved_at[sender] = msg.step, now
            self.stalled[sender] = (msg.stalled_ms / 1000, now)
            if msg.step_when_met:  # 0: sent before it heard us (perhaps queued since its start): no news
                self.they_met_us[sender] = msg.step_when_met - 1
            if self.on_heartbeat is not None:
                self.on_heartbeat(sender, msg.heard_from_you)
        elif isinstance(msg, wire.StateRequest):
            if msg.node_id != sender:
                raise ProtocolError("spoofed_node_id", f"neighbour {sender} asked state for {msg.node_id}")
            self.ask_state(sender)
        elif isinstance(msg, wire.ResendRequest):
            if msg.node_id != sender:
                raise ProtocolError("spoofed_node_id", f"neighbour {sender} asked resend for {msg.node_id}")
            self.resend.answer(msg, self.link.send)
        elif isinstance(msg, wire.StateChunk):
            self.catchup.offer(sender, msg)
        elif isinstance(msg, wire.Hello):
            self.neighbour_step.setdefault(sender, msg.step)  # still meeting: where it starts
            self.step_moved_at.setdefault(sender, now)
            self._on_hello(sender, msg)
        elif isinstance(msg, wire.Done):
            self._on_done(sender, msg, env)

    def _alive(self, sender: int) -> float:
        now = self.clock()
        if self.ledger.heard(sender, now):
            log.info("peer_up", peer=sender)
            self.met_at[sender] = self.own_step()  # back after being down: maybe restarted, maybe far behind
        elif sender not in self.heard:
            self.met_at[sender] = self.own_step()
        self.heard.add(sender)
        return now

    def _check_origin(self, sender: int, origin: int) -> None:
        if origin == self.peer_id or not self.ledger.known(origin):
            raise ProtocolError("bad_node_id", f"node_id {origin} is not another peer")
        if not self.relay and origin != sender:
            raise ProtocolError("spoofed_node_id", f"neighbour {sender} sent node_id {origin} on a full mesh")

    def _on_update(self, sender: int, update: wire.DecodedUpdate, env: pb.Envelope, now: float) -> None:
        if update.node_id == self.peer_id and self.relay:
            return  # our own update coming back around a cycle
        self._check_origin(sender, update.node_id)
        if not self.ledger.in_window(update.node_id, update.seq):
            raise ProtocolError("seq_out_of_window", f"seq {update.seq} from {update.node_id}")
        if not self.ledger.first_time(update.node_id, update.seq):
            self.counters.duplicates += 1
            log.debug("update_duplicate", node_id=update.node_id, seq=update.seq, sender=sender)
            return
        self.ledger.heard(update.node_id, now)
        self.membership.news(update.node_id, now)
        if update.node_id == sender and update.step > self.neighbour_step.get(sender, -1):
            # Its own update says where it stood when it encoded it: news every sync, where
            # heartbeats come once a second (a bound of 20 steps would otherwise hold any peer
            # that steps faster than ~20 per second). A lie only frees us from waiting for it.
            self.neighbour_step[sender], self.step_moved_at[sender] = update.step, now
            if self.on_step is not None:
                self.on_step()
        self.resend.arrived(update.node_id, update.seq)
        if self.relay:
            self.counters.updates_sent += self.link.broadcast(wire.relay(env, from_id=self.peer_id),
                                                              exclude=self._not_downhill(sender, update.node_id))
        if self.catchup.active:
            self.catchup.hold(update)  # the state may hold it: judged when it is adopted
        else:
            self.deliver(update)
        self.membership.check_finish()

    def _not_downhill(self, sender: int, origin: int) -> tuple[int, ...]:
        """Neighbours a relayed update of ``origin`` skips: the sender, the origin, and (shortest
        paths) those no farther from the origin than we are, unless a peer is down: then every
        path may be needed, and it floods."""
        farther = None if self.relay_to is None else self.relay_to.get(origin)
        if farther is None or any(v.down for v in self.ledger.views.values()):
            return sender, origin
        return (sender, origin, *(n for n in self.neighbours if n not in farther))

    def _on_done(self, sender: int, done: wire.Done, env: pb.Envelope) -> None:
        if done.node_id == self.peer_id and self.relay:
            return
        self._check_origin(sender, done.node_id)
        if self.membership.on_done(done) and self.relay:
            self.link.broadcast(wire.relay(env, from_id=self.peer_id), exclude=(sender, done.node_id))
        self.membership.check_finish()

    def _on_hello(self, sender: int, hello: wire.Hello) -> None:
        if hello.schema_hash != self.limits.schema_hash:
            self.on_fatal(PeerError(
                f"peer {sender} runs a different model (schema hash {hello.schema_hash:#x}, "
                f"ours {self.limits.schema_hash:#x}): use the same model.name and data on every peer"))
        elif hello.config_hash != self.config_hash:
            log.warning("config_differs", peer=sender, their_hash=hello.config_hash)
        if self.greet is not None:
            self.greet(sender)
