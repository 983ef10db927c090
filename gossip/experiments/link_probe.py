"""One end of a shaped link, run inside a lab namespace: ``python -m gossip.experiments.link_probe SPEC``.

SPEC is JSON: ``{"role": "send"|"recv", "hosts": [a0, a1], "base_port": P, "dir": DIR,
"iface": IF, "phases": [{"bandwidth": "20Mbps", "size": 4096, "seconds": 5, "latency_ms": 0,
"flush": false}, ...]}``. Phase k uses ports ``P + 2k``: the sender (peer 0) keeps the link to
peer 1 saturated (always more queued than the bucket lets out) for ``seconds``, then closes
(``flush``: after handing everything to ZeroMQ) and writes ``DIR/phase-k.done``; the receiver
counts what arrives until that file exists and nothing came for 1.5 s. Both print one JSON
line: per phase the transport's counters; the sender also samples its interface's
``tx_bytes`` every 100 ms (``samples``: [[monotonic s, bytes], ...]), until the wire is idle.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gossip import config
from gossip.observe import log as gossip_log
from gossip.runtime.transport import Transport

SAMPLE_S = 0.1


class Sampler(threading.Thread):
    """``tx_bytes`` of one interface every :data:`SAMPLE_S` (read in this namespace's /sys)."""

    def __init__(self, iface: str) -> None:
        super().__init__(daemon=True)
        self.path = Path(f"/sys/class/net/{iface}/statistics/tx_bytes")
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def read(self) -> int:
        return int(self.path.read_text())

    def run(self) -> None:
        tick = time.monotonic()
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), self.read()))
            tick += SAMPLE_S
            time.sleep(max(0.0, tick - time.monotonic()))

    def wait_idle(self, quiet_s: float = 0.5, limit_s: float = 30.0) -> None:
        """Until the interface sent under 2 kB in ``quiet_s`` (the kernel drains after a close;
        the peer's reconnect attempts still cost a packet now and then)."""
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            before = self.read()
            time.sleep(quiet_s)
            if self.read() - before < 2000:
                return


def _cfg(spec: dict[str, Any], k: int, phase: dict[str, Any]) -> config.Config:
    items = {"peers": 2, "topology.hosts": json.dumps(spec["hosts"]), "topology.base_port": spec["base_port"] + 2 * k,
             "security.curve": False, "security.insecure": True, "link.bandwidth": phase["bandwidth"],
             "link.latency_ms": phase.get("latency_ms", 0)}
    return config.load(None, [f"{key}={value}" for key, value in items.items()])


async def _send(spec: dict[str, Any], k: int, phase: dict[str, Any]) -> dict[str, Any]:
    tr = Transport(_cfg(spec, k, phase), 0, [1])
    await tr.start()
    link = tr.links[1]
    deadline = time.monotonic() + 20
    while not link.up and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    payload = b"\xab" * phase["size"]
    start = time.monotonic()
    stop = start + phase["seconds"]
    while time.monotonic() < stop:
        want = max(2 * len(payload), tr.shaper.bits_per_s / 8 * 0.02)  # 20 ms or 2 messages queued
        while link.pending < want and tr.send(1, payload):  # always more than the bucket lets out
            pass
        await asyncio.sleep(0.002)
    stopped = time.monotonic()
    if phase.get("flush"):
        await tr.flush(timeout=60)
    await tr.close()
    Path(spec["dir"], f"phase-{k}.done").touch()
    return {"start": start, "stop": stopped, "closed": time.monotonic(), **tr.totals()}


async def _recv(spec: dict[str, Any], k: int, phase: dict[str, Any]) -> dict[str, Any]:
    tr = Transport(_cfg(spec, k, phase), 1, [0])
    await tr.start()
    done, last = Path(spec["dir"], f"phase-{k}.done"), time.monotonic()
    messages = 0
    while not (done.exists() and time.monotonic() - last > 1.5):
        try:
            sender, frames = await asyncio.wait_for(tr.recv(), 0.1)
        except asyncio.TimeoutError:
            continue
        if sender == 0 and len(frames) == 1 and len(frames[0]) == phase["size"]:
            messages += 1
            last = time.monotonic()
    await tr.close()
    return {"messages": messages, "bytes_received": tr.bytes_received,
            "fragments_rejected": dict(tr.reassembly.rejected)}


def main(argv: list[str] | None = None) -> int:
    spec = json.loads((sys.argv[1:] if argv is None else argv)[0])
    gossip_log.configure(None, stderr=True, level="warning")  # stdout carries the result line only
    sampler = Sampler(spec["iface"]) if spec["role"] == "send" else None
    if sampler is not None:
        sampler.start()
    phases = []
    for k, phase in enumerate(spec["phases"]):
        run = _send if spec["role"] == "send" else _recv
        result = asyncio.run(run(spec, k, phase))
        if sampler is not None:
            sampler.wait_idle()
            result["wire_end"] = sampler.read()
        phases.append(result)
    out: dict[str, Any] = {"phases": phases}
    if sampler is not None:
        sampler.stop.set()
        sampler.join()
        out["samples"] = sampler.samples
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
