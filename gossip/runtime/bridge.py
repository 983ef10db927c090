"""The one place where the training thread and the asyncio loop meet.

The training thread never touches a socket and the loop never touches a model the thread
is training:

* thread → loop: :meth:`Bridge.to_loop` schedules ``put_nowait`` on an ``asyncio.Queue``
  through ``loop.call_soon_threadsafe`` (the only thread-safe way into a loop);
* loop → thread: :meth:`Bridge.to_thread` puts on a ``queue.SimpleQueue`` that the thread
  drains between batches with :meth:`Bridge.drain` (never blocking a training step), or
  waits on with :meth:`Bridge.wait` when it has nothing else to do (the end of training).

What crosses is typed: :data:`ToLoop` one way, :data:`ToThread` the other (small frozen
dataclasses; a neighbour's update crosses as the :class:`~gossip.protocol.wire.DecodedUpdate`
that :func:`~gossip.protocol.wire.unpack` made). A ``threading.Event`` carries the stop
request in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from dataclasses import dataclass

from gossip.protocol import wire

# ---------------------------------------------------------------- thread -> loop


@dataclass(frozen=True)
class Outgoing:
    """One of our updates, packed: broadcast it to every neighbour (and keep it for resends)."""

    seq: int
    data: bytes
    reason: str  # the trigger that fired (gossip.runtime.trigger), e.g. "sync_interval", "final"


@dataclass(frozen=True)
class TrainingDone:
    """The thread sent its last update: announce ``Done(last_seq)`` (-1: it sent none)."""

    last_seq: int


@dataclass(frozen=True)
class EpochStarted:
    epoch: int


@dataclass(frozen=True)
class StateReply:
    """The answer to a :class:`StateAsked`: StateChunk frames for ``requester``."""

    requester: int
    chunks: tuple[bytes, ...]


@dataclass(frozen=True)
class SnapshotOut:
    """A ModelSnapshot of ours (communication.mode: codistill): to every neighbour, best effort."""

    version: int
    data: bytes


ToLoop = Outgoing | TrainingDone | EpochStarted | StateReply | SnapshotOut

# ---------------------------------------------------------------- loop -> thread


@dataclass(frozen=True)
class StateAsked:
    """Neighbour ``requester`` asked for our published state (a StateRequest came in)."""

    requester: int


@dataclass(frozen=True)
class Finished:
    """Everything from every live peer has arrived: the thread may evaluate and end."""


FINISHED = Finished()

ToThread = wire.DecodedUpdate | wire.Snapshot | StateAsked | Finished


class Bridge:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.outbox: asyncio.Queue[ToLoop] = asyncio.Queue()
        self._inbox: queue.SimpleQueue[ToThread] = queue.SimpleQueue()
        self.stop = threading.Event()

    # thread -> loop
    def to_loop(self, item: ToLoop) -> None:
        if self._loop.is_closed():
            return
        # the loop may close between the check and the call: that is a shutdown, nothing to deliver
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.outbox.put_nowait, item)

    # loop -> thread
    def to_thread(self, item: ToThread) -> None:
        self._inbox.put(item)

    def drain(self, limit: int = 10_000) -> list[ToThread]:
        """Everything waiting for the thread, without blocking."""
        items: list[ToThread] = []
        for _ in range(limit):
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return items

    def wait(self, timeout: float) -> list[ToThread]:
        """Block up to ``timeout`` seconds for at least one item, then drain."""
        try:
            first = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return []
        return [first, *self.drain()]
