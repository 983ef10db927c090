"""The test suite's network lab: namespaces joined by veth pairs (:mod:`gossip.experiments.netlab`).

``netlab_or_skip()`` skips the calling test with the reason (not root, no ``ip netns``) where
the lab cannot run; ``lab`` (in test_netlab) is a fixture whose finalizer always deletes the
namespaces. All traffic stays inside the lab's own namespaces (198.18.x.y addresses there only).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gossip.experiments.netlab import LabUnavailable, NetLab, unavailable

__all__ = ["LabUnavailable", "NetLab", "lab_fixture", "netlab_or_skip"]


def netlab_or_skip() -> None:
    reason = unavailable()
    if reason:
        pytest.skip(f"network lab unavailable: {reason}")


def lab_fixture(n: int = 2) -> Iterator[NetLab]:
    """A lab of ``n`` namespaces, deleted afterwards whatever happened."""
    netlab_or_skip()
    lab = NetLab(n)
    try:
        lab.open()
    except LabUnavailable as exc:
        pytest.skip(f"network lab unavailable: {exc}")
    try:
        yield lab
    finally:
        lab.close()
