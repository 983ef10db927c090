import asyncio
import threading

from gossip.runtime.bridge import Bridge


def test_items_cross_both_ways_between_thread_and_loop():
    async def main():
        bridge = Bridge(asyncio.get_running_loop())
        got_in_thread = []

        def worker():
            for i in range(100):
                bridge.to_loop(i)
            got_in_thread.extend(bridge.wait(timeout=5.0))

        t = threading.Thread(target=worker)
        t.start()
        received = [await asyncio.wait_for(bridge.outbox.get(), 5) for _ in range(100)]
        bridge.to_thread("hello")
        bridge.to_thread("world")
        await asyncio.to_thread(t.join, 5)
        return received, got_in_thread

    received, got = asyncio.run(main())
    assert received == list(range(100))
    assert got[0] == "hello"


def test_drain_never_blocks_and_wait_times_out():
    async def main():
        bridge = Bridge(asyncio.get_running_loop())
        assert bridge.drain() == []
        assert bridge.wait(0.01) == []

    asyncio.run(main())
