"""Link watch: notice an outgoing link that carries nothing while its neighbour is alive.

A link can die without anybody being told: a half-open TCP connection after a network blip,
a middlebox that forgets the flow, a connection ZeroMQ believes is up. The sender keeps
queueing, its counters keep growing and the neighbour hears nothing: after
``timeouts.silence_s`` it marks us down and finishes without our updates. ZeroMQ's own
disconnect events do not see this (nothing failed locally), so the neighbour tells us.

Every heartbeat is addressed to one neighbour and carries ``heard_from_you``: the bytes its
sender has received from that neighbour so far. When a neighbour's heartbeats keep arriving
(it is alive, and its link to us works) but its ``heard_from_you`` has not moved although we
queued bytes for it (our own heartbeat each second is enough) ``after_s`` ago or earlier, our
link to it is lost: :class:`LinkWatch` logs ``link_lost`` with the reason and the numbers and asks
the transport to reconnect (a fresh socket and connection; what ZeroMQ held for the old one is
gone, and the receiver's resend requests recover those updates, gossip.runtime.resend).

Tuning: ``after_s`` is half of ``timeouts.silence_s`` (at least :data:`MIN_AFTER_S`): early
enough that the neighbour has not yet marked us down, late enough that a slow shaped link
(which still delivers its pieces every fraction of a second) never looks dead. A neighbour
that never reported a byte (an old version without the field, or a link dead from the
start, which the startup's Hello exchange reports instead) is not judged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gossip.observe.log import get_logger

log = get_logger(__name__)

MIN_AFTER_S = 3.0  # a heartbeat a second, and a loaded host may be late by one or two


@dataclass
class _Seen:
    heard: int  # the neighbour's last reported heard_from_you
    queued: int  # what we had queued for it when that count moved
    unheard_since: float | None = None  # when a report first found bytes queued since, still unheard


class LinkWatch:
    """Per neighbour: is our link to it still carrying bytes? (module docstring)."""

    def __init__(self, queued: Callable[[int], int], reconnect: Callable[[int], None], *, after_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.queued = queued  # bytes we accepted for that neighbour so far (Transport.queued_to)
        self.reconnect = reconnect
        self.after_s = max(MIN_AFTER_S, after_s)
        self.clock = clock
        self.seen: dict[int, _Seen] = {}
        self.lost: dict[int, int] = {}  # neighbour -> links to it found lost (and reconnected)

    def report(self, nbr: int, heard_from_you: int) -> None:
        """A heartbeat of ``nbr`` said it has received ``heard_from_you`` bytes from us."""
        now, queued = self.clock(), self.queued(nbr)
        seen = self.seen.get(nbr)
        if seen is None:
            if heard_from_you > 0:
                self.seen[nbr] = _Seen(heard_from_you, queued)
            return
        if heard_from_you != seen.heard:  # moved (or the neighbour restarted: a new count)
            self.seen[nbr] = _Seen(heard_from_you, queued)
            return
        if queued <= seen.queued:
            return  # nothing sent since: nothing to hear
        if seen.unheard_since is None:
            seen.unheard_since = now
        silent_s = now - seen.unheard_since
        if silent_s >= self.after_s:
            self.lost[nbr] = self.lost.get(nbr, 0) + 1
            log.warning("link_lost", peer=nbr, reason="neighbour_hears_nothing", silent_s=round(silent_s, 2),
                        bytes_unheard=queued - seen.queued, heard_from_us=heard_from_you, times=self.lost[nbr])
            self.reconnect(nbr)
            self.seen[nbr] = _Seen(heard_from_you, queued)
