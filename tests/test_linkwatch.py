"""Link watch: an outgoing link that carries nothing while its neighbour talks is found and replaced."""

import asyncio

from test_transport import make_cfg

from gossip.protocol import wire
from gossip.runtime import topology
from gossip.runtime.linkwatch import LinkWatch
from gossip.runtime.testing import Clock
from gossip.runtime.transport import Transport

LIMITS = wire.Limits(numel=10, schema_hash=1, max_bytes=1 << 20, peers=2)


def test_only_a_stalled_count_with_bytes_queued_meanwhile_is_a_lost_link():
    clock, queued, reconnected = Clock(), {1: 0}, []
    watch = LinkWatch(lambda n: queued[n], reconnected.append, after_s=4.0, clock=clock)
    watch.report(1, 0)  # never heard a byte from us: not judged (an old peer, or dead from the start)
    clock.now += 10
    queued[1] += 100
    watch.report(1, 0)
    assert reconnected == []
    watch.report(1, 50)
    for _ in range(3):  # the count moves: alive, however slowly
        clock.now += 3
        queued[1] += 100
        watch.report(1, watch.seen[1].heard + 1)
    clock.now += 10
    watch.report(1, watch.seen[1].heard)  # stalled, but we queued nothing since: nothing to hear
    assert reconnected == []
    queued[1] += 30
    watch.report(1, watch.seen[1].heard)  # unheard bytes: the clock starts
    clock.now += 3.9
    watch.report(1, watch.seen[1].heard)
    assert reconnected == []  # not yet after_s
    clock.now += 0.2
    watch.report(1, watch.seen[1].heard)
    assert reconnected == [1] and watch.lost == {1: 1}
    queued[1] += 30
    for _ in range(4):
        clock.now += 1
        watch.report(1, watch.seen[1].heard)
    assert reconnected == [1]  # the fresh connection gets its own after_s (from the first report)
    clock.now += 1.0
    watch.report(1, watch.seen[1].heard)
    assert reconnected == [1, 1] and watch.lost == {1: 2}


def test_a_silently_cut_link_is_reconnected_and_carries_again():
    """Peer 0's connection to peer 1 goes nowhere (ZeroMQ sees no error); peer 1's heartbeats
    say it hears nothing, so peer 0 replaces the connection and what it queued arrives."""
    cfg = make_cfg()

    async def main():
        a, b = Transport(cfg, 0, [1]), Transport(cfg, 1, [0])
        await a.start()
        await b.start()
        got: list[bytes] = []
        at_reconnect: list[int] = []

        def reconnect(nbr: int) -> None:
            at_reconnect.append(len(got))
            a.reconnect(nbr)

        watch = LinkWatch(a.queued_to, reconnect, after_s=0.0)  # MIN_AFTER_S: 3 s

        async def peer_b():
            while True:
                sender, frames = await b.recv()
                assert sender == 0
                msg = wire.unpack(frames[0], LIMITS)
                if isinstance(msg, wire.Heartbeat):
                    got.append(frames[0])

        async def peer_a():
            while True:
                _, frames = await a.recv()
                msg = wire.unpack(frames[0], LIMITS)
                assert isinstance(msg, wire.Heartbeat)
                watch.report(1, msg.heard_from_you)

        async def beats():
            for step in range(10**6):
                a.send(1, wire.pack_heartbeat(node_id=0, step=step, epoch=0, heard_from_you=a.heard_from(1)))
                b.send(0, wire.pack_heartbeat(node_id=1, step=step, epoch=0, heard_from_you=b.heard_from(0)))
                await asyncio.sleep(0.1)

        tasks = [asyncio.create_task(c) for c in (peer_b(), peer_a(), beats())]
        try:
            while len(got) < 5:
                await asyncio.sleep(0.05)
            a.links[1].socket.disconnect(topology.inbox_address(cfg, 1))  # a half-open connection
            await asyncio.sleep(0.5)
            stalled = len(got)
            for _ in range(100):
                if watch.lost:
                    break
                await asyncio.sleep(0.1)
            assert watch.lost == {1: 1} and a.links[1].reconnects == 1
            assert at_reconnect[0] <= stalled + 1  # nothing came through the cut link meanwhile
            for _ in range(50):
                if len(got) > stalled + 20:
                    break
                await asyncio.sleep(0.1)
            assert len(got) > stalled + 20  # the new connection carries the queued beats and the new ones
            steps = [wire.unpack(f, LIMITS).step for f in got]
            assert steps == sorted(steps)  # in order, none twice
            assert a.links[1].stats()["reconnects"] == 1
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await a.close()
            await b.close()

    asyncio.run(main())
