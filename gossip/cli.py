"""Shared plumbing for the command-line entry points: one-line errors, the event loop.

Every ``python -m gossip.X`` runs its work through :func:`guarded`, so a
:class:`~gossip.errors.GossipError` is always ``error: <one line>`` on stderr and exit 2.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from gossip.errors import GossipError

T = TypeVar("T")


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def guarded(main: Callable[[], T]) -> T:
    """Run ``main``; a GossipError becomes ``error: <message>`` and exit 2, never a traceback."""
    try:
        return main()
    except GossipError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise AssertionError("unreachable")  # pragma: no cover


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop when it is installed (it is on Linux and macOS)."""
    # Only the import may fall back: an ImportError raised by the coroutine itself is the run's
    # error, and retrying would await a finished coroutine and hide it.
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(coro)
    return uvloop.run(coro)  # type: ignore[no-any-return]
