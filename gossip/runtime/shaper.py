"""Pacing bytes, not messages: the token bucket, the fragment plan and the wire-byte estimate.

A link's :class:`TokenBucket` runs at ``link.bandwidth`` and charges **estimated wire bytes**
for every ZeroMQ message it lets out (a whole message or one fragment)::

    zmtp  = sum over the message's frames f of  len(f) + (2 if len(f) <= 255 else 9)
    wire  = zmtp * (1 + header_bytes / mss_bytes)

``zmtp`` is the ZMTP 3 stream (a frame is a flags byte and a 1- or 8-byte length before its
body); the TCP stream is cut into segments of ``link.mss_bytes`` (1448 = MTU 1500 - IPv4 20 -
TCP 20 - timestamp option 12), each adding ``link.header_bytes`` on the wire (66 = Ethernet 14 +
IPv4 20 + TCP 20 + timestamps 12): +4.56%, what an interface counter (``tx_bytes``) sees. Not
in the estimate: Ethernet preamble, FCS and inter-frame gap (24 bytes a packet on a physical
link, not in interface counters), the receiver's ACKs (the other direction), retransmissions,
the once-per-connection handshakes and CurveZMQ's per-frame box (~33 bytes with
``security.curve``).

A message longer than the **burst** (``link.burst_bytes``; 0 = auto: the larger of
``link.chunk_bytes`` and 5 ms at the rate) is cut into fragments of ``piece_bytes`` = max(chunk,
burst) (:mod:`gossip.runtime.fragment`) and each fragment waits for its own tokens. Every
message or fragment is released at the end of its slot (the bucket is never in debt), and
after an idle spell a link may start up to ``burst`` bytes early, so in any window of T
seconds a link sends at most ``rate * T + burst`` wire bytes. Under the default 10 Gbps the
burst is 6.25 MB: messages go whole and the bucket never sleeps (the fast path).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from gossip.config import LinkConfig, parse_bandwidth

BURST_S = 0.002  # TokenBucket's default burst: this many seconds' worth of bytes
AUTO_BURST_S = 0.005  # link.burst_bytes = 0: this many seconds at the rate (at least one chunk)


class TokenBucket:
    """Serialises a link at ``bits_per_s``: :meth:`reserve` says how long to wait first.

    ``burst_bytes`` (default :data:`BURST_S` at the rate) is how early a link may start again
    after an idle spell.
    """

    def __init__(self, bits_per_s: float, clock: Callable[[], float] = time.monotonic,
                 burst_bytes: float | None = None) -> None:
        self.bytes_per_s = bits_per_s / 8
        self.clock = clock
        self.unlimited = math.isinf(self.bytes_per_s)
        if self.unlimited:
            self.burst_s = 0.0
        else:
            self.burst_s = BURST_S if burst_bytes is None else burst_bytes / self.bytes_per_s
        self._free_at = 0.0

    def reserve(self, nbytes: float) -> float:
        """Book ``nbytes`` on the link: seconds until the end of their slot (0: go now)."""
        if self.unlimited:
            return 0.0
        now = self.clock()
        start = max(self._free_at, now - self.burst_s)
        self._free_at = start + nbytes / self.bytes_per_s
        return max(0.0, self._free_at - now)


def zmtp_bytes(*frame_lengths: int) -> int:
    """Bytes of one ZeroMQ message with frames of these lengths in the ZMTP 3 stream."""
    return sum(n + (2 if n <= 255 else 9) for n in frame_lengths)


@dataclass(frozen=True)
class Shaper:
    """One peer's shaping plan, from ``link.*`` (the buckets are per link: :meth:`bucket`)."""

    bits_per_s: float
    burst_bytes: int  # effective burst (bytes a link may send back to back above the rate)
    piece_bytes: int  # messages longer than this are fragmented into pieces this long
    overhead: float  # header_bytes / mss_bytes: wire bytes per ZMTP byte, minus 1

    @classmethod
    def from_config(cls, link: LinkConfig) -> Shaper:
        bits = parse_bandwidth(link.bandwidth)
        if math.isinf(bits):
            burst = piece = 1 << 62  # no cap: nothing to pace, so nothing is ever cut
        else:
            auto = max(link.chunk_bytes, int(bits / 8 * AUTO_BURST_S))
            burst = link.burst_bytes or auto
            piece = max(link.chunk_bytes, burst)
        return cls(bits, burst, piece, link.header_bytes / link.mss_bytes)

    def bucket(self, clock: Callable[[], float] = time.monotonic) -> TokenBucket:
        return TokenBucket(self.bits_per_s, clock, burst_bytes=self.burst_bytes)

    def fragments(self, nbytes: int) -> int:
        """How many pieces a message of ``nbytes`` travels in (1: whole)."""
        return 1 if nbytes <= self.piece_bytes else -(-nbytes // self.piece_bytes)

    def wire_bytes(self, *frame_lengths: int) -> float:
        """Estimated bytes on the wire of one ZeroMQ message (the module docstring's formula)."""
        return zmtp_bytes(*frame_lengths) * (1.0 + self.overhead)
