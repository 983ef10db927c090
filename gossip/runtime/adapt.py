"""Sending what the link carries: a density controller and a bound on how far a peer runs ahead.

:class:`Adapter` (the loop feeds it, the training thread reads it). Once a tick the loop hands it
every link's counters (:meth:`gossip.runtime.transport.Transport.link_stats`): ``bytes_sent``
(taken by ZeroMQ), ``bytes_queued`` (accepted) and ``bytes_unsent`` (the backlog). Per link it
keeps the achieved throughput (bytes sent per second, measured only over intervals the link was
busy at both ends, so an idle link does not look slow) and the backlog in seconds (``unsent /
throughput``). The worst live link decides, because every update goes to every neighbour.
The thread multiplies the density of each encode by :attr:`Adapter.scale`, syncs at most
every :attr:`Adapter.min_gap` batches, and defers a sync while :attr:`Adapter.hold` (a live
link's backlog is over the target, judged every tick): the queue stays bounded at once, before
the slower density decisions have caught up. Error feedback keeps what is not sent: a lower density
loses nothing, it only delays.

Tuning guide (``communication:`` keys):

* ``adapt: true`` — on by default; it does nothing while the backlog stays under the target
  (a 10 Gbps link never queues seconds of updates). ``false``: the configured density always.
* ``adapt_target_backlog_s: 1.0`` — the backlog (seconds of sending at the measured throughput)
  above which the density falls. It is about the delay an update waits behind others before it
  leaves: lower it for fresher updates at the price of fewer kept elements; raise it when the
  throughput is jumpy. Density rises again once the backlog is under ``LOW_FRACTION`` of the
  target and the next setting still fits ``UTIL`` of each link's measured throughput and of the
  links' together (hysteresis: no flapping). The next setting is ``UP`` times the bytes, or
  the next value codec up the ladder at the configured density where bytes stand still in between
  (int8 at the configured density, say, until fp16 fits: +67%, then fp32: +80%), and the fit is
  judged on those real bytes. After ``PROBE_AFTER`` decisions in a row with nothing queued it
  rises anyway, a *probe* (the link may have got faster: an idle link is not measured), one step
  per ``PROBE_GAP`` decisions, so that a backlog has time to show before the next: the buffers
  below this process (ZeroMQ's, the kernel's TCP send buffer, a router's queue) hide the first
  seconds of an overload. A probe that ends in a cut doubles the quiet decisions the next one
  waits for, up to ``MAX_PROBE_AFTER``.
* ``min_density: 0.0005`` — the floor of the adapted density (kept / eligible elements; the
  configured ``codec.density`` is the ceiling). At the floor, when the link still cannot keep
  up, the sync gap doubles (up to ``MAX_GAP`` batches), and halves back first when it can.
* ``adapt_interval_s: 1.0`` — seconds between two decisions. Shorter reacts sooner but judges
  on fewer messages (updates leave in bursts, one per sync).

A backlog is not always the link's: when this peer's own event loop, or the receiver's (its
heartbeats say so, :mod:`gossip.runtime.stall`), recently stalled for ``STALL_SHARE`` of the
target backlog or longer in all, the CPU may explain it (16 peers on 2 cores; a training thread holding
the GIL), and the throughput measured meanwhile is the starved reader's, not the link's: the sync
is held while the backlog lasts, and the density stays (logged as ``adapt_stalled``, counted in
the summary) until the reports are quiet again. Less than ``MIN_BACKLOG_BYTES`` waiting is no
backlog at all.

A decrease aims the offered rate (bytes queued per second) at ``UTIL`` of the throughput,
less what drains the backlog above the target within ``adapt_target_backlog_s``; it is never
smaller than ``1/DOWN_MAX`` per decision, and none happens while the backlog already drains
that fast. Decisions are logged as one ``adapt`` event per change (link, throughput, backlog,
stall, density, why) and a summary, ``adapt_summary``, at the end.

:class:`LeadBound`: the training thread waits before its next batch while it is more than
``communication.max_lead_steps`` global steps ahead of the slowest live neighbour that has not
finished (steps from their heartbeats; 0: no bound). Heartbeats queue behind updates on a
congested link, so the bound also slows a peer whose neighbours hear it late.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gossip.config import CommunicationConfig
from gossip.observe.log import get_logger

log = get_logger(__name__)

UTIL = 0.8  # the share of a busy link's throughput a decrease aims the offered rate at
UP = 1.25  # density (or sync gap, inverted) per decision once the backlog is low
DOWN_MAX = 4.0  # at most this factor down per decision: one bad sample must not floor it
LOW_FRACTION = 0.25  # rise only under this share of the target backlog (hysteresis)
MAX_GAP = 16  # batches between syncs at most (at the density floor)
EMA = 0.5  # weight of the newest throughput sample
PROBE_AFTER = 10  # quiet decisions after which the density rises even if the last throughput says no
PROBE_GAP = 4  # decisions between two probes: time for the first one's backlog to show
MAX_PROBE_AFTER = 40  # quiet decisions before a probe, at most, after probes that ended in cuts
WAIT_LOG_S = 5.0
MIN_BACKLOG_BYTES = 16384  # less waiting is no backlog (0.13 s even at 1 Mbit/s)
STALL_SHARE = 0.5  # a stall of this share of the target backlog (or more): hold, do not cut the density
LADDER = ("fp32", "fp16", "int8")  # value codecs a shrinking byte budget steps through, in order
VALUE_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}  # per kept value (int8's per-chunk scales aside)
INDEX_BYTES = 0.5  # per kept element: Rice-coded gaps at a few per cent density, about 4 bits  # waiting_for_neighbours: one line per this many seconds at most


@dataclass
class _LinkState:
    sent: int = 0
    queued: int = 0
    unsent: int = 0
    at: float = 0.0
    throughput: float | None = None  # bytes/s while busy
    offered: float = 0.0  # bytes/s queued, smoothed
    sample: float | None = None  # bytes/s sent over the last interval, if it was busy all along


@dataclass
class Adapter:
    """The density/sync-gap controller; :meth:`observe` from the loop, :attr:`scale` and :attr:`min_gap` from the thread."""

    cfg: CommunicationConfig
    density: float  # the configured codec.density (the ceiling)
    clock: Callable[[], float] = time.monotonic
    values: str = "int8"  # the configured codec.values (the most precise the controller uses)
    scale: float = 1.0  # bytes per update against the configured codec's (settings() turns it into both)
    min_gap: int = 1  # the thread syncs at most every min_gap batches
    links: dict[str, _LinkState] = field(default_factory=dict)
    total_throughput: float | None = None  # bytes/s of the live links together while any was busy
    decided_at: float | None = None
    backlog_s: float = 0.0  # worst live link at the last observation (telemetry)
    hold: bool = False  # the thread defers its next sync: a live link is over the target backlog
    held_batches: int = 0  # batches after which the thread deferred a sync (it counts them)
    changes: int = 0
    lowest: float = 1.0
    quiet: int = 0  # decisions in a row with nothing queued on any live link
    decisions: int = 0
    probe_after: int = PROBE_AFTER  # quiet decisions before the next probe (doubles after a failed one)
    probed_at: int | None = None  # the decision of the last probe
    probes: int = 0
    own_stall: float = 0.0  # seconds: this peer's recent loop stall (gossip.runtime.stall)
    stalled: dict[str, float] = field(default_factory=dict)  # the receivers' recent stalls, by link
    stalled_decisions: int = 0  # decisions that held the density because a stall explained the backlog
    _stall_logged: tuple[float, int] = (-math.inf, 0)

    @property
    def enabled(self) -> bool:
        return self.cfg.adapt and self.floor < 1.0

    @property
    def floor(self) -> float:
        cheapest = self._ladder()[-1]
        return min(1.0, self.cfg.min_density * _cost(cheapest) / (self.density * _cost(self.values)))

    @property
    def current_density(self) -> float:
        return self.settings()[0]

    def _ladder(self) -> tuple[str, ...]:
        """The configured value codec, then the cheaper ones the controller may step down to."""
        return LADDER[LADDER.index(self.values):] if self.values in LADDER else (self.values,)

    def settings(self, scale: float | None = None) -> tuple[float, str]:
        """(density, value codec) for a byte budget of ``scale`` x the configured update's: first a
        cheaper value codec at the configured density (fp32 -> fp16 -> int8: per-chunk int8 loses
        far less than dropping elements), then fewer elements, down to ``min_density``."""
        scale = self.scale if scale is None else scale
        budget = scale * _cost(self.values)
        for values in self._ladder():
            density = self.density * budget / _cost(values)
            if density >= self.density * (1 - 1e-9):
                return self.density, values
        return max(self.cfg.min_density, density), values

    def observe(self, stats: dict[str, dict[str, int]], down: frozenset[str] = frozenset(), *,
                own_stall: float = 0.0, stalled: dict[str, float] | None = None) -> str | None:
        """Take the links' counters now (and the recent stalls, here and at each receiver, in seconds);
        decide when due. Returns why the setting changed, or None."""
        now = self.clock()
        self.own_stall, self.stalled = own_stall, stalled or {}
        for name, c in stats.items():
            self._sample(name, c, now)
        if not self.enabled:
            return None
        live = {n: s for n, s in self.links.items() if n not in down}
        busy = [s.sample for s in live.values() if s.sample is not None]
        if busy:  # links that share this host's uplink share its capacity: one busy link alone gets it all
            total = sum(busy)
            self.total_throughput = total if self.total_throughput is None else \
                EMA * total + (1 - EMA) * self.total_throughput
        self.backlog_s, _ = self._worst(live)
        self.hold = self.backlog_s > self.cfg.adapt_target_backlog_s  # every tick: the queue stays bounded
        if self.decided_at is None:
            self.decided_at = now
        if now - self.decided_at < self.cfg.adapt_interval_s:
            return None
        self.decided_at = now
        return self.decide(live)

    @staticmethod
    def _worst(links: dict[str, _LinkState]) -> tuple[float, str | None]:
        """The largest backlog in seconds among ``links``, and whose."""
        worst, name = 0.0, None
        for n, s in links.items():
            if s.unsent < MIN_BACKLOG_BYTES or s.throughput is None:
                # nothing (or a heartbeat) waiting, or never busy long enough to measure: not a
                # bottleneck. A heartbeat behind ZeroMQ's full pipe moves 40 bytes in a second:
                # "0.0 Mbit/s", a backlog of seconds, once cut the density to a hundredth.
                continue
            backlog = s.unsent / s.throughput
            if backlog > worst:
                worst, name = backlog, n
        return worst, name

    def _sample(self, name: str, c: dict[str, int], now: float) -> None:
        sent, queued, unsent = c.get("bytes_sent", 0), c.get("bytes_queued", 0), c.get("bytes_unsent", 0)
        s = self.links.get(name)
        if s is None:
            self.links[name] = _LinkState(sent, queued, unsent, now)
            return
        dt = now - s.at
        if dt <= 0:
            return
        s.sample = None
        if s.unsent > 0 and unsent > 0 and sent > s.sent:  # busy the whole interval: its capacity
            rate = s.sample = (sent - s.sent) / dt
            s.throughput = rate if s.throughput is None else EMA * rate + (1 - EMA) * s.throughput
        s.offered = EMA * max(0, queued - s.queued) / dt + (1 - EMA) * s.offered
        s.sent, s.queued, s.unsent, s.at = sent, queued, unsent, now

    def decide(self, links: dict[str, _LinkState]) -> str | None:
        """One decision on the live ``links``: lower, hold or raise the density (and the sync gap)."""
        target = self.cfg.adapt_target_backlog_s
        self.decisions += 1
        worst, name = self._worst(links)
        self.backlog_s = worst
        if name is not None and worst > target:
            s = links[name]
            assert s.throughput is not None
            stall = max(self.own_stall, self.stalled.get(name, 0.0))
            if stall >= STALL_SHARE * target:
                self._note_stall(name, s, stall)
                return None  # the CPU, not the link: the hold (every tick) is what helps
            # drain what is above the target within one target period, on top of UTIL of the link
            want = max(0.1 * s.throughput, UTIL * s.throughput - (s.unsent - target * s.throughput) / target)
            if s.offered <= want:
                return None  # already draining fast enough: lowering more would only lose freshness
            factor = min(1 / UP, max(1 / DOWN_MAX, want / s.offered))
            if self.probed_at is not None and self.decisions - self.probed_at <= self.probe_after:
                self.probe_after = min(MAX_PROBE_AFTER, 2 * self.probe_after)  # the probe failed
                self.probed_at = None
            if self.scale > self.floor:
                return self._set(max(self.floor, self.scale * factor), self.min_gap, name, s, "backlog_over_target")
            if self.min_gap < MAX_GAP:
                return self._set(self.scale, min(MAX_GAP, self.min_gap * 2), name, s, "backlog_at_density_floor")
            return None
        self.quiet = self.quiet + 1 if worst == 0.0 else 0
        if worst >= LOW_FRACTION * target or (self.scale >= 1.0 and self.min_gap == 1):
            return None  # between the thresholds: hold (hysteresis); or nothing to raise
        s = links[name] if name is not None else \
            _LinkState(throughput=self.total_throughput, offered=sum(x.offered for x in links.values()))
        gap, scale = (self.min_gap // 2, self.scale) if self.min_gap > 1 else (1, self._next_up())
        ratio = self.min_gap / gap if self.min_gap > 1 else self._bytes(scale) / self._bytes(self.scale)
        if self._room(links, ratio):
            return self._set(scale, gap, name, s, "backlog_low")
        if self.quiet >= self.probe_after and (self.probed_at is None or self.decisions - self.probed_at >= PROBE_GAP):
            self.probed_at, self.probes = self.decisions, self.probes + 1
            return self._set(scale, gap, name, s, "probe")
        return None

    def _note_stall(self, link: str, s: _LinkState, stall: float) -> None:
        """One ``adapt_stalled`` line per WAIT_LOG_S at most, with the decisions held since the last."""
        self.stalled_decisions += 1
        now = self.clock()
        at, count = self._stall_logged
        if now - at >= WAIT_LOG_S:
            log.info("adapt_stalled", link=link, decisions=self.stalled_decisions - count,
                     stall_s=round(stall, 3), own_stall_s=round(self.own_stall, 3),
                     backlog_s=round(self.backlog_s, 2), backlog_bytes=s.unsent, density=round(self.current_density, 6))
            self._stall_logged = (now, self.stalled_decisions)

    def _room(self, links: dict[str, _LinkState], ratio: float) -> bool:
        """Would ``ratio`` times the bytes still fit every busy link (UTIL of its throughput), and
        all of them together what they carried together? Links that share a bottleneck (this
        host's uplink) each look roomy while the other one is idle (session 13: at 50 Mbit every
        peer rose to fp32 over and over, each of its two links measured alone)."""
        total = sum(s.offered for s in links.values())
        return all(s.throughput is None or s.offered * ratio <= UTIL * s.throughput for s in links.values()) \
            and (self.total_throughput is None or total * ratio <= UTIL * self.total_throughput)

    def _bytes(self, scale: float) -> float:
        """Bytes per update at ``scale`` against the configured codec's (settings(): at most ``scale``)."""
        density, values = self.settings(scale)
        return density * _cost(values) / (self.density * _cost(self.values))

    def _next_up(self) -> float:
        """The scale of the next setting up: ``UP`` times the bytes, or where the next value codec
        fits at the configured density when bytes stand still until then."""
        now = self._bytes(self.scale)
        up = min(1.0, self.scale * UP)  # bytes never exceed the scale: UP x the scale is at least UP x the bytes
        if self._bytes(up) > now * (1 + 1e-9):
            return up
        ladder = self._ladder()
        values = self.settings(self.scale)[1]
        better = ladder[max(0, ladder.index(values) - 1)] if values in ladder else self.values
        return min(1.0, _cost(better) / _cost(self.values))

    def _set(self, scale: float, gap: int, link: str | None, s: _LinkState, why: str) -> str:
        self.scale, self.min_gap = scale, gap
        self.changes += 1
        self.lowest = min(self.lowest, scale)
        density, values = self.settings()
        log.info("adapt", link=link, why=why, throughput_mbps=_mbps(s.throughput), offered_mbps=_mbps(s.offered),
                 backlog_s=round(self.backlog_s, 2), backlog_bytes=s.unsent,
                 stall_s=round(max(self.own_stall, self.stalled.get(link or "", 0.0)), 3),
                 density=round(density, 6), values=values, bytes_scale=round(scale, 4), sync_gap=gap)
        return why

    def holding(self) -> bool:
        """For the thread, once a batch: defer this batch's sync? (counted)"""
        hold = self.hold  # one read: the loop rewrites it every tick
        self.held_batches += hold
        return hold

    def encode_settings(self, encoder: object) -> tuple[float | None, str | None]:
        """(density, values) for the thread's next encode with ``encoder``; None where the encoder's
        own setting stands. Its own density (a sparsity warm-up may raise it) is scaled likewise."""
        if self.scale >= 1.0:
            return None, None
        own = getattr(encoder, "density", None)  # a wrapper (gossip.sim.attacks) may not say
        base = float(own()) if callable(own) else self.density
        density, values = self.settings()
        return max(self.cfg.min_density, density * base / self.density), None if values == self.values else values

    def telemetry(self) -> dict[str, Any]:
        return {"density": self.current_density, "backlog_s": round(self.backlog_s, 3), "sync_gap": self.min_gap}

    def summary(self) -> None:
        if self.enabled:
            log.info("adapt_summary", changes=self.changes, probes=self.probes, held_batches=self.held_batches,
                     stalled_decisions=self.stalled_decisions,
                     density=round(self.current_density, 6),
                     lowest_density=round(self.settings(self.lowest)[0], 6), values=self.settings()[1],
                     sync_gap=self.min_gap)


def _cost(values: str) -> float:
    """Bytes per kept element on the wire with ``values`` (its index included, roughly)."""
    return VALUE_BYTES.get(values, 1.0) + INDEX_BYTES


def _mbps(rate: float | None) -> float | None:
    return None if rate is None or not math.isfinite(rate) else round(rate * 8 / 1e6, 2)


@dataclass
class LeadBound:
    """``max_lead_steps`` ahead of the slowest live neighbour at most; the loop writes :attr:`slowest`."""

    max_lead_steps: int
    clock: Callable[[], float] = time.monotonic
    slowest: int | None = None  # the loop's latest figure; None: no live, unfinished neighbour
    waits: int = 0
    waited_s: float = 0.0
    _logged_at: float = 0.0
    _logged_waits: int = 0
    _logged_s: float = 0.0

    def blocks(self, step: int) -> bool:
        slowest = self.slowest  # one read: the loop may replace it meanwhile
        return self.max_lead_steps > 0 and slowest is not None and step - slowest > self.max_lead_steps

    def wait(self, step: Callable[[], int], pause: Callable[[], None], stop: Callable[[], bool]) -> float:
        """Call ``pause`` (the thread's bridge wait: it folds in what arrives) until the slowest
        neighbour is within the bound or ``stop``; returns the seconds waited."""
        if not self.blocks(step()):
            return 0.0
        t0 = self.clock()
        while self.blocks(step()) and not stop():
            pause()
        waited = self.clock() - t0
        self.waits += 1
        self.waited_s += waited
        self._note(step())
        return waited

    def _note(self, step: int, force: bool = False) -> None:
        now = self.clock()
        if self.waits > self._logged_waits and (force or now - self._logged_at >= WAIT_LOG_S):
            log.info("waiting_for_neighbours", waits=self.waits - self._logged_waits,
                     seconds=round(self.waited_s - self._logged_s, 2), step=step, slowest=self.slowest,
                     max_lead_steps=self.max_lead_steps, total_waits=self.waits, total_s=round(self.waited_s, 2))
            self._logged_at, self._logged_waits, self._logged_s = now, self.waits, self.waited_s

    def flush(self, step: int) -> None:
        self._note(step, force=True)


def slowest_step(steps: dict[int, int], live: Callable[[int], bool]) -> int | None:
    """The lowest heartbeat step among the neighbours ``live`` says may still hold us."""
    held = [s for n, s in list(steps.items()) if live(n)]
    return min(held, default=None)


def lead_holders(steps: dict[int, int], moved_at: dict[int, float], now: float, stuck_s: float,
                 live: Callable[[int], bool]) -> tuple[int | None, set[int]]:
    """(the slowest step among the ``live`` neighbours whose step moved within ``stuck_s``, the
    live ones whose step has stood still for longer).

    The slowest peer of a swarm is never held itself, so a step that stands still for the silence
    period belongs to a peer that is stuck or lies about its step while it keeps talking (and so
    is never marked down): it holds nobody until its step moves again.
    """
    stuck = {n for n in list(steps) if live(n) and now - moved_at.get(n, now) > stuck_s}
    return slowest_step(steps, lambda n: live(n) and n not in stuck), stuck
