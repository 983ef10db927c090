"""Simulated link faults: ``link.drop``, ``link.duplicate``, ``link.reorder`` (for tests only).

A :class:`FaultyLink` wraps one link's send callable (the transport's shaped send to one
neighbour) and decides, per message, what actually goes out: nothing (dropped), the message
twice (duplicated), or nothing now and the message later, after the next one (held back:
reordered). The transport itself has no fault branches; :func:`wrap_send` returns the send
callable unchanged when every probability is 0 (the default), so no random number is drawn.

One ``random.Random`` (the transport's, seeded per peer) is shared by all links of a peer, so
a run's faults are reproducible: per message one draw decides drop / duplicate, and one more
(while nothing is held) whether to hold it back. ``on_fault("drop" | "duplicate", data)`` tells
the transport, so its counters account for every message (a drop is counted, never silent).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from gossip.config import LinkConfig

Send = Callable[[bytes], Awaitable[None]]
OnFault = Callable[[str, bytes], None]


def active(cfg: LinkConfig) -> bool:
    """Whether ``cfg`` asks for any fault at all."""
    return bool(cfg.drop or cfg.duplicate or cfg.reorder)


class FaultyLink:
    """``send`` with drops, duplicates and reordering at ``cfg``'s rates."""

    def __init__(self, send: Send, cfg: LinkConfig, rng: random.Random, on_fault: OnFault | None = None) -> None:
        self.send = send
        self.cfg = cfg
        self.rng = rng
        self.on_fault = on_fault
        self.held: bytes | None = None  # a message held back, to go out after the next one

    def plan(self, data: bytes) -> list[bytes]:
        """What goes out, in order, when ``data`` is to be sent (pure bookkeeping, no I/O)."""
        r = self.rng.random()
        if r < self.cfg.drop:
            self._tell("drop", data)
            return []
        out = [data]
        if r < self.cfg.drop + self.cfg.duplicate:
            self._tell("duplicate", data)
            out.append(data)
        if self.held is None and self.rng.random() < self.cfg.reorder:
            self.held = out.pop()
            return out
        if self.held is not None:
            out.append(self.held)
            self.held = None
        return out

    def _tell(self, what: str, data: bytes) -> None:
        if self.on_fault is not None:
            self.on_fault(what, data)

    async def __call__(self, data: bytes) -> None:
        for out in self.plan(data):
            await self.send(out)


def wrap_send(send: Send, cfg: LinkConfig, rng: random.Random, on_fault: OnFault | None = None) -> Send:
    """``send`` itself when ``cfg`` injects no fault, else a :class:`FaultyLink` around it."""
    return FaultyLink(send, cfg, rng, on_fault) if active(cfg) else send
