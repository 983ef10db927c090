"""The one place where the training thread and the asyncio loop meet.

The training thread never touches a socket and the loop never touches the model:

* thread → loop: :meth:`Bridge.to_loop` schedules ``put_nowait`` on an ``asyncio.Queue``
  through ``loop.call_soon_threadsafe`` (the only thread-safe way into a loop);
* loop → thread: :meth:`Bridge.to_thread` puts on a ``queue.SimpleQueue`` that the thread
  drains between batches with :meth:`Bridge.drain` (never blocking a training step), or
  waits on with :meth:`Bridge.wait` when it has nothing else to do (the end of training).

A ``threading.Event`` carries the stop request in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from typing import Any


class Bridge:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.stop = threading.Event()

    # thread -> loop
    def to_loop(self, item: Any) -> None:
        if self._loop.is_closed():
            return
        # the loop may close between the check and the call: that is a shutdown, nothing to deliver
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.outbox.put_nowait, item)

    # loop -> thread
    def to_thread(self, item: Any) -> None:
        self._inbox.put(item)

    def drain(self, limit: int = 10_000) -> list[Any]:
        """Everything waiting for the thread, without blocking."""
        items = []
        for _ in range(limit):
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return items

    def wait(self, timeout: float) -> list[Any]:
        """Block up to ``timeout`` seconds for at least one item, then drain."""
        try:
            first = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return []
        return [first, *self.drain()]
