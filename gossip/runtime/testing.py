"""In-memory stand-ins for the runtime's I/O, for tests and in-process benches.

:class:`MemoryBridge` replaces :class:`gossip.runtime.bridge.Bridge` (no event loop: plain
lists), :class:`MemoryLink` replaces the transport's ``send`` / ``broadcast`` (records frames),
and :class:`Clock` is a settable ``time.monotonic``. With them a worker, a dispatcher or the
membership bookkeeping runs in one process with no sockets and no real time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from gossip.runtime.bridge import FINISHED, Outgoing, ToLoop, ToThread


class MemoryBridge:
    """Stands in for :class:`gossip.runtime.bridge.Bridge` in one process: plain lists, no loop."""

    def __init__(self) -> None:
        self.sent: list[ToLoop] = []  # thread -> loop items
        self.inbox: list[ToThread] = []  # loop -> thread items
        self.stop = threading.Event()

    def to_loop(self, item: ToLoop) -> None:
        self.sent.append(item)

    def to_thread(self, item: ToThread) -> None:
        self.inbox.append(item)

    def drain(self, limit: int = 10_000) -> list[ToThread]:
        items, self.inbox = self.inbox, []
        return items

    def wait(self, timeout: float) -> list[ToThread]:
        """At the end of training nothing else is coming: say FINISHED when the inbox is empty."""
        return self.drain() or [FINISHED]

    def updates(self) -> list[Outgoing]:
        """The updates the thread has put on the wire so far, in order."""
        return [item for item in self.sent if isinstance(item, Outgoing)]


class MemoryLink:
    """The transport's ``send`` and ``broadcast``, recorded: ``(neighbour, frame)`` pairs."""

    def __init__(self, neighbours: Iterable[int]) -> None:
        self.neighbours = list(neighbours)
        self.sent: list[tuple[int, bytes]] = []

    def send(self, nbr: int, data: bytes) -> bool:
        self.sent.append((nbr, data))
        return True

    def broadcast(self, data: bytes, exclude: Iterable[int] = ()) -> int:
        skip = set(exclude)
        to = [n for n in self.neighbours if n not in skip]
        for nbr in to:
            self.send(nbr, data)
        return len(to)

    def frames_to(self, nbr: int) -> list[bytes]:
        return [data for n, data in self.sent if n == nbr]


class Clock:
    """A ``time.monotonic`` stand-in that moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
