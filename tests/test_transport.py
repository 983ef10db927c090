"""Real ZeroMQ sockets on loopback: delivery, identity, shaping, counters, faults, errors."""

import asyncio
import random
import time

import pytest
import zmq
from ports import free_port_block

from gossip import config
from gossip.config import LinkConfig
from gossip.errors import PeerError
from gossip.runtime.transport import TokenBucket, Transport, identity, parse_identity
from gossip.sim import faults


def make_cfg(**kw):
    base = free_port_block(4)
    items = {"peers": 2, "topology.base_port": base, "security.curve": False, **kw}
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


# ------------------------------------------------------------ shaper, fragments, accounting

from gossip._proto import gossip_pb2 as pb  # noqa: E402
from gossip.runtime import fragment  # noqa: E402
from gossip.runtime.shaper import Shaper, zmtp_bytes  # noqa: E402


def test_wire_estimate_adds_zmtp_framing_and_tcp_ip_headers_per_segment():
    shaper = Shaper.from_config(LinkConfig(bandwidth="20Mbps"))
    assert zmtp_bytes(100, 1000) == 102 + 1009
    assert shaper.wire_bytes(1448 * 100 - 9) == pytest.approx(1448 * 100 + 6600)
    assert Shaper.from_config(LinkConfig(header_bytes=0)).wire_bytes(1000) == 1009


def test_fragment_plan_paces_low_rates_and_leaves_10gbps_alone():
    slow = Shaper.from_config(LinkConfig(bandwidth="20Mbps"))
    assert (slow.burst_bytes, slow.piece_bytes) == (65536, 65536)
    assert slow.fragments(65536) == 1 and slow.fragments(5_000_000) == 77
    fast = Shaper.from_config(LinkConfig())  # 10 Gbps: 5 ms = 6.25 MB, whole messages
    assert fast.fragments(5_000_000) == 1
    assert Shaper.from_config(LinkConfig(bandwidth="unlimited")).fragments(10**9) == 1
    burst = Shaper.from_config(LinkConfig(bandwidth="20Mbps", burst_bytes=200_000, chunk_bytes=4096))
    assert burst.piece_bytes == 200_000  # a fragment is never longer than one burst, never shorter than a chunk


def test_bucket_never_lets_more_than_rate_times_t_plus_burst_out():
    now = [0.0]
    bucket = Shaper.from_config(LinkConfig(bandwidth="8Mbps")).bucket(clock=lambda: now[0])  # 1 MB/s, 64 KiB burst
    sent_at = []
    for _ in range(100):
        now[0] += bucket.reserve(10_000)
        sent_at.append(now[0])
    for t0 in sent_at:
        in_window = sum(10_000 for t in sent_at if t0 <= t < t0 + 0.5)
        assert in_window <= 500_000 + 65536 + 10_000


def pieces_of(data, piece, mid=0):
    return [(h, bytes(v)) for h, v in fragment.split(data, piece, mid)]


def offer(r, sender, header, data):
    return r.offer(sender, fragment.header_of(header, r.max_bytes), data)


def test_reassembly_round_trip_and_whole_messages_in_between():
    r = fragment.Reassembler(10_000_000, 30.0)
    data = bytes(range(256)) * 1000
    parts = pieces_of(data, 65536)
    assert len(parts) == 4
    assert [offer(r, 1, h, d) for h, d in parts[:-1]] == [None] * 3
    assert offer(r, 1, *parts[-1]) == data and r.messages == 1 and r.open == {}
    offer(r, 2, *parts[0])
    r.interrupt(2)  # a whole message from 2 while one was open: the open one is lost
    assert r.rejected == {"fragment_incomplete": 1} and r.pending_bytes == 0


@pytest.mark.parametrize("header", [
    b"\xff\xff\xff",  # does not parse
    pb.Fragment(message_id=0, index=0, count=1, total=10, offset=0).SerializeToString(),  # one piece
    pb.Fragment(message_id=0, index=0, count=2, total=10**9, offset=0).SerializeToString(),  # over the limit
    pb.Fragment(message_id=0, index=5, count=4, total=200_000, offset=0).SerializeToString(),  # index >= count
    pb.Fragment(message_id=0, index=0, count=70_000, total=10**6, offset=0).SerializeToString(),  # too many
])
def test_a_frame_outside_the_static_bounds_is_no_fragment(header):
    """Left to the dispatcher, which rejects a two-frame message as bad_frames."""
    assert fragment.header_of(header, 10_000_000) is None


def test_a_fragment_without_its_start_is_counted_and_reported():
    told = []
    r = fragment.Reassembler(10_000_000, 30.0, on_reject=lambda *why: told.append(why[:2]))
    header, data = pieces_of(b"x" * 200_000, 65536)[1]
    assert r.offer(1, fragment.header_of(header, 10_000_000), data) is None
    assert r.rejected == {"fragment_orphan": 1} and r.open == {} and told == [("fragment_orphan", 1)]


def test_inconsistent_out_of_order_and_overlong_fragments_drop_the_open_message():
    parts = pieces_of(b"y" * 200_000, 65536, mid=7)
    for bad, reason in [
        (pieces_of(b"y" * 300_000, 65536, mid=7)[1], "fragment_inconsistent"),
        (parts[2], "fragment_order"),
        ((parts[1][0], parts[1][1] + b"extra" * 20_000), "fragment_length"),
    ]:
        r = fragment.Reassembler(10_000_000, 30.0)
        offer(r, 3, *parts[0])
        assert offer(r, 3, *bad) is None
        assert r.rejected == {reason: 1} and r.open == {}


def test_an_abandoned_message_times_out():
    now = [0.0]
    r = fragment.Reassembler(10_000_000, 5.0, clock=lambda: now[0])
    parts = pieces_of(b"z" * 200_000, 65536)
    offer(r, 1, *parts[0])
    now[0] = 10.0
    assert offer(r, 2, *parts[0]) is None  # any later fragment sweeps the old one out
    assert r.rejected == {"fragment_timeout": 1} and list(r.open) == [2]


def test_large_messages_travel_in_fragments_and_arrive_whole():
    cfg = make_cfg(**{"link.bandwidth": "400Mbps", "link.chunk_bytes": 4096})  # piece: 5 ms = 250 kB
    payloads = [bytes([i]) * 1_000_000 for i in range(3)] + [b"small"]
    got, _, a, b = run_pair(cfg, payloads, 4)
    assert [p for _, p in got] == payloads
    link = a.links[1]
    assert link.fragments_sent == 12 and link.messages_sent == 4 and b.links[0].messages_received == 4
    assert a.bytes_sent == a.bytes_queued == sum(map(len, payloads)) == b.bytes_received
    assert a.wire_bytes_sent == pytest.approx(a.bytes_sent * (1 + 66 / 1448), rel=1e-3)
    assert a.bytes_unsent == 0 and a.dropped == 0 and b.reassembly.rejected == {}


def test_with_latency_every_message_is_sent_or_counted():
    """The delayed send is awaited: a slow link holds messages back instead of losing them."""
    cfg = make_cfg(**{"link.bandwidth": "40Mbps", "link.latency_ms": 20})
    payloads = [i.to_bytes(4, "big") * 25_000 for i in range(20)]  # 2 MB at 5 MB/s: 0.4 s
    t0 = time.monotonic()
    got, elapsed, a, b = run_pair(cfg, payloads, 20)
    assert [p for _, p in got] == payloads and elapsed >= 0.35
    link = a.links[1]
    assert link.messages_sent == 20 and link.dropped == 0 and link.pending == 0
    assert a.bytes_sent == b.bytes_received == 2_000_000 and time.monotonic() - t0 < 10


def test_messages_still_queued_at_close_are_unsent_not_sent():
    cfg = make_cfg(**{"link.bandwidth": "8Mbps"})  # 1 MB/s: 3 MB take 3 s

    async def main():
        a = Transport(cfg, 0, [1])  # nobody listens on 1: the neighbour is gone
        await a.start()
        for _ in range(300):
            a.send(1, b"q" * 10_000)
        await asyncio.sleep(0.3)
        await a.close()
        return a

    a = asyncio.run(main())
    link = a.links[1]
    assert link.dropped_queue_full == 300 - 256 and link.messages_queued == 256
    assert a.bytes_sent == 0  # what ZeroMQ took never had a connection to go to
    assert a.bytes_unsent == a.bytes_queued == 2_560_000 and link.pending_messages == 256
    assert a.totals()["dropped"] == 44 and a.link_stats()["1"]["bytes_unsent"] == 2_560_000


def test_fault_drops_are_counted():
    cfg = make_cfg(**{"link.drop": 0.5})
    payloads = [i.to_bytes(4, "big") for i in range(100)]
    got, _, a, _ = run_pair(cfg, payloads, 1)
    link = a.links[1]
    assert link.dropped_fault == 100 - len(got) == 100 - link.messages_sent and link.pending_messages == 0


def test_hostile_fragments_on_a_real_inbox_are_counted_never_fatal():
    cfg = make_cfg()

    async def main():
        b = Transport(cfg, 1, [0])
        told = []
        b.on_refused = lambda *why: told.append(why[0])
        await b.start()
        raw = b.ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.IDENTITY, identity(0) + b":evil")
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(f"tcp://127.0.0.1:{cfg.topology.base_port + 1}")
        rng = random.Random(5)
        parts = pieces_of(b"w" * 150_000, 65536, mid=3)
        await raw.send_multipart(list(parts[1]))  # no index 0: orphan
        for _ in range(50):  # junk two-frame messages: no fragments, left to the dispatcher
            await raw.send_multipart([rng.randbytes(rng.randrange(1, 40)), rng.randbytes(10)])
        await raw.send_multipart(list(parts[0]))
        await raw.send_multipart(list(parts[2]))  # skips index 1: out of order
        for p in parts:
            await raw.send_multipart(list(p))
        got = []
        while len(got) < 51:
            got.append(await asyncio.wait_for(b.recv(), 5))
        raw.close(0)
        await b.close()
        return b, told, got

    b, told, got = asyncio.run(main())
    assert got[-1] == (0, [b"w" * 150_000])
    assert all(len(frames) == 2 for _, frames in got[:-1])
    assert told == ["fragment_orphan", "fragment_order"] and b.reassembly.rejected == {
        "fragment_orphan": 1, "fragment_order": 1}
