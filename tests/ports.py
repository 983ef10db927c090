"""Free TCP port blocks for tests that start real sockets.

Blocks are drawn at random from below the kernel's ephemeral range (32768-60999 on Linux),
so an outgoing connection of another test can never be handed one of "our" ports between
the check here and the bind in a peer process; every port of the block is checked by
binding it, and a block is never handed out twice in one test session.
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20000, 32000  # below the ephemeral range
_handed_out: set[int] = set()
_rng = random.Random()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(n: int = 1) -> int:
    """A port ``p`` such that ``p .. p+n-1`` are free on 127.0.0.1 and not used by this session."""
    for _ in range(500):
        base = _rng.randrange(LOW, HIGH - n)
        block = range(base, base + n)
        if any(p in _handed_out for p in block):
            continue
        if all(_bindable(p) for p in block):
            _handed_out.update(block)
            return base
    raise RuntimeError(f"no block of {n} free ports in {LOW}-{HIGH}")
