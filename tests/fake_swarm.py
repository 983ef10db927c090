"""Fake peers for the dashboard tests: real TelemetryPublisher sockets, made-up training."""

from __future__ import annotations

import threading
import time

from ports import free_port_block

from gossip.config import Config, load
from gossip.observe.telemetry import TelemetryPublisher


def swarm_config(peers: int = 4, *extra: str) -> Config:
    telemetry = free_port_block(peers)
    return load(None, [f"peers={peers}", f"dashboard.telemetry_port={telemetry}", "dashboard.interval_s=0.1",
                       "dashboard.down_after_s=1.0", "link.bandwidth=100Mbps", "data.name=mnist", *extra])


class FakeSwarm:
    """``peers`` fake peers in a full mesh (or a ring), each sending ``rate_bps`` to every neighbour."""

    def __init__(self, cfg: Config, *, rate_bps: float = 2e6, interval_s: float = 0.1, ring: bool = False) -> None:
        self.cfg = cfg
        self.rate_bps = rate_bps
        self.epochs = cfg.train.epochs
        self.ring = ring
        self.interval_s = interval_s
        self.publishers = {i: TelemetryPublisher(cfg, i) for i in range(cfg.peers)}
        self.stopped: set[int] = set()
        self.finished: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.time()

    def snapshot(self, i: int) -> dict[str, object]:
        elapsed = time.time() - self.t0
        steps_per_epoch = 50
        step = int(elapsed * 20)
        epoch = min(self.epochs, step // steps_per_epoch)
        done = i in self.finished
        n = self.cfg.peers
        nbrs = sorted({(i - 1) % n, (i + 1) % n} - {i}) if self.ring else [j for j in range(n) if j != i]
        per_link = int(self.rate_bps / 8 * elapsed)
        return {
            "state": "done" if done else "training", "epoch": self.epochs if done else epoch,
            "epochs": self.epochs, "step": step % steps_per_epoch, "steps_per_epoch": steps_per_epoch,
            "loss": 2.3 / (1 + elapsed + i * 0.1), "test_accuracy": min(0.99, 0.85 + 0.01 * epoch + 0.003 * i)
            if epoch or done else None,
            "bytes_sent": per_link * len(nbrs), "bytes_received": per_link * len(nbrs),
            "updates_sent": step // 5, "updates_applied": (step // 5) * len(nbrs), "updates_rejected": 0,
            "rejected_by_reason": {}, "triggers": {"sync_interval": step // 5, "confidence": step // 40,
                                                   "grad_norm": step // 60, "final": int(done)},
            "mb_per_epoch": 0.31 + 0.01 * i, "compression_ratio": 41.5 - i, "bandwidth_cap_bps": 100e6,
            "neighbours": nbrs, "neighbours_down": sorted(self.stopped & set(nbrs)),
            "links": {str(j): {"bytes_sent": per_link, "bytes_received": per_link} for j in nbrs},
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                for i, pub in self.publishers.items():
                    if i not in self.stopped:
                        pub.publish(self.snapshot(i))
            self._stop.wait(self.interval_s)

    def start(self) -> FakeSwarm:
        self._thread.start()
        return self

    def kill(self, i: int) -> None:
        """Peer ``i`` dies: no more telemetry, its socket goes away."""
        with self._lock:
            self.stopped.add(i)
            self.publishers[i].close(flush_s=0)

    def finish(self, i: int) -> None:
        with self._lock:
            self.finished.add(i)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for pub in self.publishers.values():
            pub.close(flush_s=0)

    def __enter__(self) -> FakeSwarm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
