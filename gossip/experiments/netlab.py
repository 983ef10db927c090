"""A network lab of Linux namespaces: real separate network stacks joined by veth pairs.

:class:`NetLab` (root only) creates ``n`` namespaces ``<tag>-<i>``, each with one interface
``<tag>v<i>`` at ``198.18.<net>.<i+1>/24`` (RFC 2544's benchmarking range, inside the lab's
namespaces only): two are joined by one veth pair, more by a bridge that lives in a namespace
of its own (``<tag>-hub``), so nothing is added to the host's namespace and no traffic can leave
the lab. :meth:`NetLab.bottleneck` puts a kernel ``tbf`` on a namespace's egress (there is no
netem here, so no kernel delay). Segmentation offload is turned off on the lab's interfaces
(``gso_max_segs 1``), so their ``tx_bytes`` counts one IP packet per TCP segment, with its
headers, like a real Ethernet link. :meth:`NetLab.close` deletes every namespace (with it, the
interfaces), also after a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Sequence


class LabUnavailable(RuntimeError):
    """The kernel or the permissions forbid namespaces here (the message says which)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def unavailable() -> str | None:
    """Why no lab can run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the lab as root)"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"glprobe{uuid.uuid4().hex[:6]}"
    try:
        done = _ip("netns", "add", probe, check=False)
        if done.returncode != 0:
            return f"`ip netns add` failed: {done.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


class NetLab:
    def __init__(self, n: int, net: int = 77) -> None:
        if n < 2:
            raise ValueError("a lab has at least two namespaces")
        self.n = n
        self.tag = f"gl{uuid.uuid4().hex[:5]}"
        self.net = net
        self.namespaces = [f"{self.tag}-{i}" for i in range(n)]
        self.hub = f"{self.tag}-hub" if n > 2 else None
        self._made: list[str] = []

    def address(self, i: int) -> str:
        return f"198.18.{self.net}.{i + 1}"

    def iface(self, i: int) -> str:
        return f"{self.tag}v{i}"

    def open(self) -> NetLab:
        reason = unavailable()
        if reason:
            raise LabUnavailable(reason)
        try:
            for ns in self.namespaces + ([self.hub] if self.hub else []):
                _ip("netns", "add", ns)
                self._made.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            if self.hub is None:
                self._veth(0, self.namespaces[1], self.iface(1))
            else:
                _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
                _ip("-n", self.hub, "link", "set", "br0", "up")
                for i in range(self.n):
                    self._veth(i, self.hub, f"h{i}", bridge="br0")
            for i in range(self.n):
                if self.hub is not None or i == 0:
                    _ip("-n", self.namespaces[i], "addr", "add", f"{self.address(i)}/24", "dev", self.iface(i))
                    _ip("-n", self.namespaces[i], "link", "set", self.iface(i), "up")
            if self.hub is None:
                _ip("-n", self.namespaces[1], "addr", "add", f"{self.address(1)}/24", "dev", self.iface(1))
                _ip("-n", self.namespaces[1], "link", "set", self.iface(1), "up")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            self.close()
            err = getattr(exc, "stderr", "") or ""
            raise LabUnavailable(f"cannot build the lab: {' '.join(map(str, exc.cmd))}: {err.strip()}") from None
        return self

    def _veth(self, i: int, peer_ns: str, peer_if: str, bridge: str | None = None) -> None:
        """A veth pair: ``iface(i)`` into namespace i, ``peer_if`` into ``peer_ns``; no offload."""
        ns, me = self.namespaces[i], self.iface(i)
        _ip("link", "add", me, "netns", ns, "gso_max_segs", "1", "type", "veth",
            "peer", "name", peer_if, "netns", peer_ns, "gso_max_segs", "1")
        if bridge is not None:
            _ip("-n", peer_ns, "link", "set", peer_if, "master", bridge)
            _ip("-n", peer_ns, "link", "set", peer_if, "up")

    def bottleneck(self, i: int, rate: str, burst: str = "32kb", latency: str = "400ms") -> None:
        """A kernel token bucket (``tbf``) on namespace i's egress, e.g. ``rate="8mbit"``."""
        self.run(i, ["tc", "qdisc", "replace", "dev", self.iface(i), "root", "tbf", "rate", rate,
                     "burst", burst, "latency", latency], check=True)

    def run(self, i: int, argv: Sequence[str], check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.namespaces[i], *argv], capture_output=True,
                              text=True, check=check, timeout=60)

    def spawn(self, i: int, argv: Sequence[str], **kw: object) -> subprocess.Popen[str]:
        """Start ``argv`` inside namespace i (``python`` means this interpreter)."""
        argv = [sys.executable if a == "python" else a for a in argv]
        return subprocess.Popen(["ip", "netns", "exec", self.namespaces[i], *argv], text=True, **kw)  # type: ignore[call-overload]

    def close(self) -> None:
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        self._made.clear()

    def __enter__(self) -> NetLab:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
