"""How long a peer could not serve its links (gossip.runtime.stall): the loop's lag, the inbox's backlog.

A real event loop blocked by a real sleep, a fake clock for the window, and the heartbeat field
that carries the figure (validated like every other field).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gossip._proto import gossip_pb2 as pb
from gossip.errors import ProtocolError
from gossip.protocol import wire
from gossip.runtime import stall
from gossip.runtime.stall import Stall
from gossip.runtime.testing import Clock

LIMITS = wire.Limits(numel=10, schema_hash=1, max_bytes=1 << 20, peers=4)


def test_a_blocked_loop_is_measured_and_forgotten_after_the_window():
    s = Stall(recent_s=0.5)

    async def main() -> float:
        probe = asyncio.create_task(s.watch())
        await asyncio.sleep(0.2)
        time.sleep(0.4)  # the loop can run nothing: what a CPU-starved peer's loop goes through
        await asyncio.sleep(0.2)
        seen = s.recent()
        await asyncio.sleep(0.8)
        probe.cancel()
        return seen

    seen = asyncio.run(main())
    assert 0.3 <= seen <= 0.6 and s.worst == pytest.approx(seen)
    assert s.recent() == 0.0  # older than the window


def test_an_idle_loop_reports_nothing():
    s = Stall()

    async def main() -> None:
        probe = asyncio.create_task(s.watch())
        await asyncio.sleep(0.5)
        probe.cancel()

    asyncio.run(main())
    assert s.recent() < stall.PROBE_S * 2 and s.report_ms() < 100


def test_an_inbox_that_stays_full_counts_until_it_empties():
    clock = Clock()
    s = Stall(clock=clock, recent_s=3.0)
    s.inbox(False)
    assert s.recent() == 0.0
    s.inbox(True)  # the next frame was already waiting
    clock.advance(1.5)
    s.inbox(True)
    assert s.recent() == pytest.approx(1.5)  # still going on
    clock.advance(0.5)
    s.inbox(False)  # caught up after 2 s
    clock.advance(2.9)
    assert s.recent() == pytest.approx(2.0)
    clock.advance(0.2)
    assert s.recent() == 0.0 and s.worst == pytest.approx(2.0)


def test_many_short_stalls_add_up_within_the_window():
    # A peer starved of CPU stalls often and briefly; each short stall lets its senders' queues
    # grow, so the window's stalls are summed, not only the longest (gossip.runtime.stall).
    clock = Clock()
    s = Stall(clock=clock, recent_s=3.0)
    for _ in range(6):  # 0.12 s late every 0.4 s: never long, 30% of the time
        clock.advance(0.4)
        s.lag(0.12)
    assert s.recent() == pytest.approx(0.72)
    for _ in range(5):  # and the inbox non-empty 0.2 s at a time
        s.inbox(True)
        clock.advance(0.2)
        s.inbox(False)
        clock.advance(0.1)
    assert s.recent() == pytest.approx(1.0)  # the inbox's 5 x 0.2 s, more than the 4 lags left (0.48 s)
    s.lag(0.04)  # a loop turn's jitter is no stall
    clock.advance(3.1)
    assert s.recent() == 0.0 and s.worst == pytest.approx(0.2)


def test_the_heartbeat_carries_the_stall_and_a_lie_is_refused():
    beat = wire.unpack(wire.pack_heartbeat(node_id=2, step=5, epoch=0, stalled_ms=1234), LIMITS)
    assert isinstance(beat, wire.Heartbeat) and beat.stalled_ms == 1234
    assert wire.unpack(wire.pack_heartbeat(node_id=2, step=5, epoch=0, stalled_ms=10**9), LIMITS).stalled_ms == \
        wire.MAX_STALLED_MS  # our own figure is clamped before it goes out
    env = pb.Envelope.FromString(wire.pack_heartbeat(node_id=2, step=5, epoch=0))
    env.heartbeat.stalled_ms = wire.MAX_STALLED_MS + 1  # a hand-made frame
    with pytest.raises(ProtocolError, match="stalled_ms"):
        wire.unpack(env.SerializeToString(), LIMITS)
