"""How long this process has recently been unable to serve its links: the event loop's lag and the inbox's backlog.

A backlog on a link has two causes the sender cannot tell apart from its own counters: the link
is slower than what is offered (the density should fall), or one end's CPU could not keep up
(16 peers on 2 cores, a training thread holding the GIL, a neighbour that stalled): then the
link is idle for want of a reader or a writer, and fewer bytes per update only lose precision.
:class:`Stall` measures the second cause where it happens, in seconds:

* **loop lag** — a probe task asks to wake every :data:`PROBE_S` and records how much later it
  woke: the time nothing in this loop (receiving, pumping the links) could run;
* **inbox backlog** — how long the receive loop has been finding its socket non-empty after each
  message without a break (it reads slower than the neighbours deliver).

:meth:`Stall.recent` is the larger of the two *sums* over the last :data:`RECENT_S` seconds
(every lag, every backlogged stretch that ended, or goes on, within it): a peer starved of CPU
(16 processes on 2 cores) rarely stalls for long at once, but often, and each of its short
stalls lets the senders' queues grow; the longest single one missed that (session 12: a receiver
draining at 0.5 Mbit/s reported under half a second). Not the sum of both: a loop lag also
lengthens the inbox's stretch it falls in. Every
heartbeat carries it (``Heartbeat.stalled_ms``), and the neighbours' density controllers
(:class:`gossip.runtime.adapt.Adapter`) hold their syncs instead of cutting the density while
the receiver of a backlogged link (or they themselves) stalled that long.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

PROBE_S = 0.05  # how often the probe wakes: the resolution of the lag, a wake-up 20 times a second
RECENT_S = 3.0  # a stall counts this long after it ended (more than one heartbeat period)
MAX_REPORT_S = 3600.0  # what a heartbeat can say (wire.MAX_STALLED_MS)


class Stall:
    """The loop's lag probe and the inbox's backlog; :meth:`watch` runs as one of the node's tasks."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, recent_s: float = RECENT_S) -> None:
        self.clock = clock
        self.recent_s = recent_s
        self._lags: deque[tuple[float, float]] = deque()  # (when, seconds late), only lags over one probe
        self._inbox_since: float | None = None  # the receive loop found its socket non-empty since then
        self._inbox: deque[tuple[float, float]] = deque()  # (when it ended, how long it lasted)
        self.worst = 0.0  # the longest stall seen in the run (for the result)

    async def watch(self) -> None:
        while True:
            t0 = self.clock()
            await asyncio.sleep(PROBE_S)
            self.lag(self.clock() - t0 - PROBE_S)

    def lag(self, seconds: float) -> None:
        """The probe woke ``seconds`` later than it asked."""
        if seconds > PROBE_S:  # a loop turn's jitter is no stall; keeps the deque short when idle
            now = self.clock()
            self._lags.append((now, seconds))
            self.worst = max(self.worst, seconds)

    def inbox(self, waiting: bool) -> None:
        """After each message received: does the inbox already hold the next one?"""
        now = self.clock()
        if waiting:
            if self._inbox_since is None:
                self._inbox_since = now
            return
        if self._inbox_since is not None:
            lasted = now - self._inbox_since
            if lasted > 0:
                self._inbox.append((now, lasted))
            self.worst = max(self.worst, lasted)
            self._inbox_since = None
        self._forget(self._inbox, now)

    def recent(self) -> float:
        """Seconds: the lags, or the inbox's backlogged stretches, that ended (or go on) within the
        last ``recent_s``, summed; the larger of the two."""
        now = self.clock()
        lags = sum(s for _, s in self._forget(self._lags, now))
        inbox = sum(s for _, s in self._forget(self._inbox, now))
        if self._inbox_since is not None:
            inbox += now - self._inbox_since
        return min(max(lags, inbox), MAX_REPORT_S)

    def _forget(self, stalls: deque[tuple[float, float]], now: float) -> deque[tuple[float, float]]:
        """Drop what ended before the window; the deque stays as short as the window's stalls."""
        while stalls and now - stalls[0][0] > self.recent_s:
            stalls.popleft()
        return stalls

    def report_ms(self) -> int:
        """:meth:`recent` for a heartbeat, whole milliseconds."""
        return int(self.recent() * 1000)
