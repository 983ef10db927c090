"""Per-sender rate limits for every message kind: a flood costs the receiver next to nothing.

:class:`RateLimiter` keeps one token bucket per ``(sender, kind)``; the dispatcher asks it
before any expensive work (after the size check and the envelope parse that names the kind),
and drops the frame when the bucket is empty: counted as ``rate_limited`` for that kind, never
answered. Frames that are not one parseable envelope share the ``junk`` bucket of their sender;
unknown senders (``None``) share one set of buckets.

The rates are far above what an honest peer sends (``security.rate_scale`` multiplies them all):
a neighbour relays every origin's updates and answers resend requests in bursts, and sends a
whole state in chunks, so ``update`` and ``state_chunk`` allow thousands per second, while one
heartbeat a second, a Hello every 0.2 s at startup and one StateRequest per catch-up need few.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

JUNK = "junk"  # not one parseable envelope: wrong frame count, size or bytes

# kind -> (tokens per second, burst): the Envelope's body names, plus JUNK
RATES: dict[str, tuple[float, float]] = {
    "update": (2000.0, 5000.0),
    "state_chunk": (4000.0, 20000.0),
    "done": (50.0, 200.0),
    "heartbeat": (20.0, 50.0),
    "hello": (10.0, 50.0),
    "state_request": (1.0, 5.0),
    "resend_request": (20.0, 100.0),
    "snapshot": (20.0, 50.0),  # codistill: a few per epoch; each costs a teacher load
    JUNK: (20.0, 100.0),
}


@dataclass
class Bucket:
    rate: float   # tokens per second
    burst: float  # most tokens held
    tokens: float
    at: float     # when tokens was last brought up to date

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RateLimiter:
    """Token buckets per (sender, kind); ``scale`` 0 allows everything."""

    def __init__(self, scale: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 rates: dict[str, tuple[float, float]] | None = None) -> None:
        self.scale = scale
        self.clock = clock
        self.rates = RATES if rates is None else rates
        self.buckets: dict[tuple[int | None, str], Bucket] = {}
        self.dropped: dict[str, int] = {}  # rate_limited frames by kind

    def allow(self, sender: int | None, kind: str) -> bool:
        """Take one token of ``(sender, kind)``; False (and counted) when there is none."""
        if self.scale <= 0:
            return True
        key = (sender, kind)
        bucket = self.buckets.get(key)
        now = self.clock()
        if bucket is None:
            rate, burst = self.rates.get(kind, self.rates[JUNK])
            bucket = self.buckets[key] = Bucket(rate * self.scale, burst * self.scale, burst * self.scale, now)
        if bucket.take(now):
            return True
        self.dropped[kind] = self.dropped.get(kind, 0) + 1
        return False
