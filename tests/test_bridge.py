import asyncio
import dataclasses
import threading

import pytest

from gossip.runtime.bridge import (
    FINISHED,
    Bridge,
    EpochStarted,
    Finished,
    Outgoing,
    StateAsked,
    StateReply,
    TrainingDone,
)
from gossip.runtime.testing import MemoryBridge


def test_items_cross_both_ways_between_thread_and_loop():
    async def main():
        bridge = Bridge(asyncio.get_running_loop())
        got_in_thread = []

        def worker():
            for i in range(100):
                bridge.to_loop(Outgoing(seq=i, data=b"u%d" % i, reason="sync_interval"))
            bridge.to_loop(TrainingDone(last_seq=99))
            got_in_thread.extend(bridge.wait(timeout=5.0))

        t = threading.Thread(target=worker)
        t.start()
        received = [await asyncio.wait_for(bridge.outbox.get(), 5) for _ in range(101)]
        bridge.to_thread(StateAsked(requester=2))
        bridge.to_thread(FINISHED)
        await asyncio.to_thread(t.join, 5)
        return received, got_in_thread

    received, got = asyncio.run(main())
    assert [item.seq for item in received[:100]] == list(range(100))  # in order
    assert received[100] == TrainingDone(99)
    assert got[0] == StateAsked(2)


def test_drain_never_blocks_and_wait_times_out():
    async def main():
        bridge = Bridge(asyncio.get_running_loop())
        assert bridge.drain() == []
        assert bridge.wait(0.01) == []

    asyncio.run(main())


def test_messages_are_small_frozen_values():
    items = [Outgoing(1, b"x", "final"), TrainingDone(-1), EpochStarted(3), StateReply(2, (b"a", b"b")),
             StateAsked(1), FINISHED]
    for item in items:
        assert dataclasses.is_dataclass(item)
        with pytest.raises(dataclasses.FrozenInstanceError):
            item.seq = 5  # type: ignore[misc]
        assert item == dataclasses.replace(item)  # compared by value
    assert Finished() == FINISHED and FINISHED in [StateAsked(1), Finished()]  # Worker.fold_in's test
    assert StateAsked(1) != StateAsked(2)


def test_memory_bridge_keeps_what_crosses():
    bridge = MemoryBridge()
    bridge.to_loop(EpochStarted(0))
    bridge.to_loop(Outgoing(0, b"u", "sync_interval"))
    assert bridge.updates() == [Outgoing(0, b"u", "sync_interval")]
    bridge.to_thread(StateAsked(1))
    assert bridge.drain() == [StateAsked(1)] and bridge.drain() == []
    assert bridge.wait(0.0) == [FINISHED]  # in one process nothing else is coming
