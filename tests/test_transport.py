"""Real ZeroMQ sockets on loopback: delivery, identity, shaping, counters, faults, errors."""

import asyncio
import random
import time

import pytest
from ports import free_port_block

from gossip import config
from gossip.config import LinkConfig
from gossip.errors import PeerError
from gossip.runtime.transport import TokenBucket, Transport, identity, parse_identity
from gossip.sim import faults


def make_cfg(**kw):
    base = free_port_block(4)
    items = {"peers": 2, "topology.base_port": base, **kw}
    return config.load(None, [f"{k}={v}" for k, v in items.items()])


def test_identity_round_trip():
    assert parse_identity(identity(12)) == 12
    assert parse_identity(b"\x00abc") is None
    assert parse_identity(b"pxyz") is None


def test_token_bucket_paces_to_the_rate():
    now = [0.0]
    bucket = TokenBucket(8_000_000, clock=lambda: now[0])  # 1 MB/s
    delays = [bucket.reserve(100_000) for _ in range(10)]
    assert delays[0] == pytest.approx(0.1, abs=1e-6)  # serialisation delay of the first message
    assert delays[-1] == pytest.approx(1.0, abs=1e-6)
    now[0] = 5.0  # after an idle second the link may start a little early (burst)
    assert bucket.reserve(100_000) == pytest.approx(0.1 - 0.002, abs=1e-6)
    assert TokenBucket(float("inf")).reserve(10**9) == 0.0


def run_pair(cfg, payloads, expect):
    async def main():
        a, b = Transport(cfg, 0, [1]), Transport(cfg, 1, [0])
        await a.start()
        await b.start()
        try:
            t0 = time.monotonic()
            for p in payloads:
                a.send(1, p)
            got = []
            while len(got) < expect:
                sender, frames = await asyncio.wait_for(b.recv(), 10)
                got.append((sender, frames[0]))
            # let stragglers (duplicates) arrive
            try:
                while True:
                    sender, frames = await asyncio.wait_for(b.recv(), 0.3)
                    got.append((sender, frames[0]))
            except asyncio.TimeoutError:
                pass
            return got, time.monotonic() - t0, a, b
        finally:
            await a.close()
            await b.close()

    return asyncio.run(main())


def test_messages_arrive_in_order_with_sender_and_counters():
    cfg = make_cfg()
    payloads = [bytes([i]) * 1000 for i in range(20)]
    got, _, a, b = run_pair(cfg, payloads, 20)
    assert [s for s, _ in got] == [0] * 20
    assert [p for _, p in got] == payloads
    assert a.bytes_sent == 20_000 and a.links[1].messages_sent == 20
    assert b.bytes_received == 20_000
    assert sum(a.bytes_sent_by_epoch.values()) == 20_000


def test_bandwidth_cap_limits_throughput():
    cfg = make_cfg(**{"link.bandwidth": "8Mbps"})  # 1 MB/s
    payloads = [b"x" * 100_000] * 6  # 0.6 MB -> about 0.6 s
    _, elapsed, _, _ = run_pair(cfg, payloads, 6)
    assert elapsed >= 0.5


def test_fault_injection_drops_and_duplicates():
    cfg = make_cfg(**{"link.drop": 0.3, "link.duplicate": 0.3})
    payloads = [i.to_bytes(4, "big") for i in range(200)]
    got, _, a, _ = run_pair(cfg, payloads, 100)
    values = [int.from_bytes(p, "big") for _, p in got]
    assert len(set(values)) < 200  # some dropped
    assert len(values) > len(set(values))  # some duplicated


def test_port_in_use_is_a_one_line_error():
    cfg = make_cfg()

    async def main():
        a = Transport(cfg, 0, [1])
        await a.start()
        try:
            with pytest.raises(PeerError, match="cannot listen"):
                await Transport(cfg, 0, [1]).start()
        finally:
            await a.close()

    asyncio.run(main())


class Draws:
    """A ``random.Random`` stand-in that returns the given draws in order."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def random(self):
        return self.draws.pop(0)


def test_no_fault_configured_means_the_plain_send_and_no_random_draws():
    async def send(data):
        return None

    rng = random.Random(1)
    before = rng.getstate()
    assert faults.wrap_send(send, LinkConfig(), rng) is send
    assert rng.getstate() == before


def test_faulty_link_drops_duplicates_and_holds_back_one_message():
    cfg = LinkConfig(drop=0.2, duplicate=0.3, reorder=0.5)
    sent: list[bytes] = []

    async def send(data):
        sent.append(data)

    link = faults.wrap_send(send, cfg, Draws(0.1, 0.3, 0.9, 0.6, 0.4, 0.9, 0.9, 0.9))  # type: ignore[arg-type]
    assert isinstance(link, faults.FaultyLink)

    async def main():
        await link(b"a")  # 0.1 < drop: dropped (no second draw)
        await link(b"b")  # 0.3: duplicated; 0.9 >= reorder: both go now
        await link(b"c")  # 0.6: once; 0.4 < reorder: held back
        await link(b"d")  # 0.9: once, then the held one (no reorder draw while holding)
        await link(b"e")  # 0.9, 0.9: once

    asyncio.run(main())
    assert sent == [b"b", b"b", b"d", b"c", b"e"]
