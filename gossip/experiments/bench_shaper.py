"""``python -m gossip.bench shaper``: does the bandwidth cap hold on the wire, second by second?

Root only: two network namespaces joined by a veth pair (:mod:`gossip.experiments.netlab`),
a plain transport endpoint in each (:mod:`gossip.experiments.link_probe`). Per bandwidth x
message size the sender keeps its link saturated; its interface's ``tx_bytes`` (all wire
bytes: IP packets with their Ethernet, IP and TCP headers) sampled every 100 ms gives sliding
1-s windows, skipping the first second. Printed: p5/p50/p95/max of those windows relative to
the cap, and the sender's reported wire bytes (``wire_bytes_sent``, the shaper's estimate)
against the bytes the interface sent. Then the accounting check: ``link.latency_ms`` 20 behind a
slower kernel bottleneck (``tbf``): every message arrives or is counted (dropped / unsent), and
reported bytes against the wire.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gossip.config import parse_bandwidth
from gossip.experiments.netlab import NetLab

SIZES = (4096, 65536, 1 << 20, 5 << 20)
BANDWIDTHS = ("20Mbps", "100Mbps")


def run_link(phases: list[dict[str, Any]], bottleneck: str | None = None,
             base_port: int = 26100) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``phases`` (see link_probe) over a fresh two-namespace lab: (sender's, receiver's) output."""
    with NetLab(2) as lab, tempfile.TemporaryDirectory(prefix="gossip-netlab-") as tmp:
        if bottleneck:
            lab.bottleneck(0, bottleneck)
        spec = {"hosts": [lab.address(0), lab.address(1)], "base_port": base_port, "dir": tmp,
                "phases": phases}
        probe = ["python", "-m", "gossip.experiments.link_probe"]
        recv = lab.spawn(1, [*probe, json.dumps({**spec, "role": "recv", "iface": lab.iface(1)})],
                         stdout=-1, stderr=-1)
        send = lab.spawn(0, [*probe, json.dumps({**spec, "role": "send", "iface": lab.iface(0)})],
                         stdout=-1, stderr=-1)
        budget = 120 + sum(p["seconds"] + 30 for p in phases)
        outs = []
        for proc in (send, recv):
            out, err = proc.communicate(timeout=budget)
            if proc.returncode != 0:
                raise RuntimeError(f"link probe failed ({proc.returncode}): {err[-2000:]}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
        return outs[0], outs[1]


def windows(samples: list[list[float]], start: float, stop: float, window_s: float = 1.0) -> list[float]:
    """Bits/s of every sliding ``window_s`` window between ``start`` and ``stop``."""
    inside = [(t, b) for t, b in samples if start <= t <= stop]
    out = []
    for i, (t0, b0) in enumerate(inside):
        for t1, b1 in inside[i + 1:]:
            if t1 - t0 >= window_s - 0.02:
                out.append((b1 - b0) * 8 / (t1 - t0))
                break
    return out


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))] if s else float("nan")


@dataclass
class Row:
    bandwidth: str
    size: int
    windows: int
    p5: float  # window rate / cap
    p50: float
    p95: float
    max: float
    reported: int  # the sender's wire_bytes_sent
    wire: int  # bytes its interface sent during the phase (until idle after the close)
    messages_sent: int
    messages_received: int
    accounted: bool  # queued == sent + unsent (no fault drops here); received == sent
    at_risk: int = 0  # counted as sent but maybe still with ZeroMQ when its linger expired at close
    max_100ms: float = float("nan")  # the highest 100-ms window / cap

    @property
    def reported_vs_wire(self) -> float:
        return self.reported / self.wire if self.wire else float("nan")


def rows_of(sender: dict[str, Any], receiver: dict[str, Any], phases: list[dict[str, Any]]) -> list[Row]:
    rows, previous_end = [], sender["samples"][0][1]
    for phase, s, r in zip(phases, sender["phases"], receiver["phases"], strict=True):
        cap = parse_bandwidth(phase["bandwidth"])
        rel = [w / cap for w in windows(sender["samples"], s["start"] + 1.0, s["stop"])]
        wire, previous_end = s["wire_end"] - previous_end, s["wire_end"]
        accounted = (s["messages_queued"] == s["messages_sent"] + s["messages_unsent"] + s["dropped"]
                     and s["bytes_queued"] == s["bytes_sent"] + s["bytes_unsent"]
                     and r["messages"] == s["messages_sent"])
        rows.append(Row(phase["bandwidth"], phase["size"], len(rel), _pct(rel, 0.05), _pct(rel, 0.5),
                        _pct(rel, 0.95), max(rel, default=float("nan")), s["wire_bytes_sent"], wire,
                        s["messages_sent"], r["messages"], accounted, s.get("bytes_at_risk", 0),
                        max(windows(sender["samples"], s["start"] + 1.0, s["stop"], 0.1), default=cap) / cap))
    return rows


def cap_phases(bandwidths: tuple[str, ...], sizes: tuple[int, ...], seconds: float) -> list[dict[str, Any]]:
    return [{"bandwidth": b, "size": n, "seconds": seconds} for b in bandwidths for n in sizes]


def measure_caps(bandwidths: tuple[str, ...] = BANDWIDTHS, sizes: tuple[int, ...] = SIZES,
                 seconds: float = 5.0) -> list[Row]:
    phases = cap_phases(bandwidths, sizes, seconds)
    return rows_of(*run_link(phases), phases)


def measure_accounting(bandwidth: str = "20Mbps", bottleneck: str = "8mbit", size: int = 1 << 20,
                       seconds: float = 6.0, latency_ms: float = 20) -> Row:
    """A slow kernel bottleneck under the cap, with link.latency_ms: nothing may go missing unsaid."""
    phases = [{"bandwidth": bandwidth, "size": size, "seconds": seconds, "latency_ms": latency_ms, "flush": True}]
    return rows_of(*run_link(phases, bottleneck=bottleneck, base_port=26300), phases)[0]


def table(rows: list[Row]) -> str:
    head = ("| bandwidth | message | windows | p5 | p50 | p95 | max | messages sent / received | "
            "reported / wire bytes | accounted | at risk | max 100 ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r.bandwidth} | {r.size:,} B | {r.windows} | {r.p5:.3f} | {r.p50:.3f} | {r.p95:.3f} | "
                     f"{r.max:.3f} | {r.messages_sent} / {r.messages_received} | "
                     f"{r.reported:,} / {r.wire:,} ({r.reported_vs_wire:.4f}) | {'yes' if r.accounted else 'NO'} | {r.at_risk:,} | {r.max_100ms:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gossip.bench shaper", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3-s phases, 20 Mbps and 100 Mbps at 64 KB and 5 MB only")
    ap.add_argument("--seconds", type=float, default=6.0, help="saturated seconds per bandwidth x size")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    sizes, seconds = ((65536, 5 << 20), 3.0) if args.quick else (SIZES, args.seconds)
    rows = measure_caps(BANDWIDTHS, sizes, seconds)
    print("1-s windows of wire throughput / cap, saturated link (tx_bytes of the sender's veth, 100 ms samples):")
    print(table(rows))
    acc = [measure_accounting(bandwidth=b, seconds=4.0 if args.quick else 6.0) for b in ("20Mbps", "10Gbps")]
    print("\nlink.latency_ms 20 behind a kernel tbf of 8 Mbit (1 MB messages, flushed before the close), "
          "cap 20 Mbps (fragments) and the default 10 Gbps (whole messages):")
    print(table(acc))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in [*rows, *acc]], indent=2))
    return 0
