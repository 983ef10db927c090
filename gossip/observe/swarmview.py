"""What the dashboard knows about the swarm, built only from peer telemetry.

:class:`SwarmView` ingests peer snapshots (see :data:`gossip.observe.telemetry.SNAPSHOT_FIELDS`)
and answers two questions for the browser feed: ``snapshot()`` (everything, for a
client that just connected) and ``tick()`` (what changed since the last tick, or
None). It does no I/O, so it is tested with plain dicts.

Tuning guide:

* A peer is ``starting`` until its first snapshot, then shows the state it reports,
  except ``down`` once silent for more than ``dashboard.down_after_s`` (default 3 s,
  i.e. six missed snapshots at the default 0.5 s interval). A peer that reported
  ``done`` stays ``done`` when it exits.
* Link bandwidth (bits/s) is the change of ``links[nbr].bytes_sent`` over the last
  :data:`RATE_WINDOW_S` of the sender's clock (at least :data:`MIN_RATE_WINDOW_S`).
  Updates leave in bursts (one per sync trigger); a 2 s window shows the sustained
  rate instead of on/off spikes, at the cost of reacting ~1 s later to a change.
* One source for every rate: once per :data:`SAMPLE_S` :meth:`SwarmView.tick` takes a sample of
  every link's rate; the links' ``bps_ab``/``bps_ba``, ``swarm.bps`` (their sum, at ``swarm.sample_ts``)
  and the chart's history point all come from that sample, so the page's header, edge labels and
  chart, and ``/api/snapshot``, show the same figure. (Before the first sample: the live rates.)
* History: one swarm bandwidth sample per :data:`SAMPLE_S`, at most
  :data:`HISTORY_POINTS` kept (1 h); accuracy points whenever a peer's
  ``test_accuracy`` changes; adaptation points ``[peer, t, density, backlog_s, sync_gap]``
  whenever a peer's adapted ``density`` or ``sync_gap`` changes (its first snapshot included),
  so the chart shows what each peer sent against what its links carried (gossip.runtime.adapt).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gossip.config import Config, parse_bandwidth
from gossip.observe.telemetry import SNAPSHOT_FIELDS, STATES

RATE_WINDOW_S = 2.0
MIN_RATE_WINDOW_S = 0.2
SAMPLE_S = 1.0
HISTORY_POINTS = 3600
ACCURACY_POINTS = 20_000
ADAPT_POINTS = 20_000
_MAX_ITEMS = 1024  # longest list/dict accepted from a peer (neighbours, reasons, links)
_MAX_STR = 64
_BAD = object()


def _num(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return _BAD
    return v


def _int(v: Any) -> Any:
    return v if isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**53 else _BAD


def _ids(v: Any) -> Any:
    if not isinstance(v, list) or len(v) > _MAX_ITEMS or any(_int(i) is _BAD for i in v):
        return _BAD
    return v


def _counts(v: Any) -> Any:
    if not isinstance(v, dict) or len(v) > _MAX_ITEMS:
        return _BAD
    out = {str(k)[:_MAX_STR]: n for k, n in v.items() if _int(n) is not _BAD}
    return out if len(out) == len(v) else _BAD


def _links(v: Any) -> Any:
    if not isinstance(v, dict) or len(v) > _MAX_ITEMS:
        return _BAD
    out = {}
    for k, c in v.items():
        if not (isinstance(k, str) and k.isascii() and k.isdigit()) or not isinstance(c, dict):
            return _BAD
        out[str(int(k))] = {n: c.get(n, 0) for n in ("bytes_sent", "bytes_received")}
        if any(_int(x) is _BAD for x in out[str(int(k))].values()):
            return _BAD
    return out


_CHECK: dict[str, Callable[[Any], Any]] = {
    "int": _int,
    "float": _num,
    "str": lambda v: v if isinstance(v, str) and len(v) <= _MAX_STR else _BAD,
    "ids": _ids,
    "counts": _counts,
    "links": _links,
}


def clean_snapshot(message: Any) -> dict[str, Any] | None:
    """The known, well-typed fields of a peer message; None if it is not a peer snapshot."""
    if not isinstance(message, dict) or message.get("type") != "peer":
        return None
    out = {}
    for key, kind in SNAPSHOT_FIELDS.items():
        if key in message and (value := _CHECK[kind](message[key])) is not _BAD:
            out[key] = value
    if out.get("state") not in STATES:
        out.pop("state", None)
    return out


@dataclass
class _Peer:
    peer_id: int
    host: str
    data: dict[str, Any] = field(default_factory=dict)
    seen: float | None = None  # monotonic time of the last snapshot
    first_wall: float | None = None
    last_wall: float | None = None
    counters: dict[int, deque[tuple[float, int]]] = field(default_factory=dict)  # nbr -> [(ts, bytes_sent)]
    rates: dict[int, float] = field(default_factory=dict)  # nbr -> bits/s sent
    dirty: bool = True
    sent_state: str = ""

    def state(self, now: float, down_after_s: float) -> str:
        if self.seen is None:
            return "starting"
        reported = str(self.data.get("state", "starting"))
        if reported != "done" and now - self.seen > down_after_s:
            return "down"
        return reported

    def public(self, state: str) -> dict[str, Any]:
        out = dict(self.data)
        out.update(peer_id=self.peer_id, host=self.host, state=state, last_seen=self.last_wall)
        out["reported_state"] = self.data.get("state")
        out["link_bps"] = {str(n): round(r) for n, r in self.rates.items()}
        return out


class SwarmView:
    """Swarm state for the dashboard; feed it with :meth:`ingest`, read :meth:`tick`/:meth:`snapshot`."""

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        hosts = cfg.topology.hosts
        self.peers = [_Peer(i, hosts[i] if len(hosts) > 1 else hosts[0]) for i in range(cfg.peers)]
        cap = parse_bandwidth(cfg.link.bandwidth)
        self.cap_bps: float | None = cap if math.isfinite(cap) else None
        self.bandwidth: deque[list[float]] = deque(maxlen=HISTORY_POINTS)  # [t, total bps, busiest link]
        self.accuracy: deque[list[float]] = deque(maxlen=ACCURACY_POINTS)  # [peer, t, accuracy, epoch]
        self.rejected_messages = 0
        self._pending_acc: list[list[float]] = []
        self.adapt: deque[list[float]] = deque(maxlen=ADAPT_POINTS)  # [peer, t, density, backlog_s, sync_gap]
        self._pending_adapt: list[list[float]] = []
        self._last_sample = 0.0
        self._rates: dict[tuple[int, int], float] | None = None  # (sender, receiver) -> bits/s, last sample
        self._sent: dict[str, Any] = {}

    # ------------------------------------------------------------ input
    def ingest(self, peer_id: int, message: Any) -> bool:
        """Apply one snapshot from the peer whose endpoint delivered it; False if it was rejected."""
        data = clean_snapshot(message)
        if data is None or not 0 <= peer_id < len(self.peers) or data.get("peer_id", peer_id) != peer_id:
            self.rejected_messages += 1
            return False
        wall = time.time()
        peer = self.peers[peer_id]
        ts = data["ts"] if isinstance(data.get("ts"), (int, float)) else wall
        for nbr_text, counters in data.get("links", {}).items():
            nbr, sent = int(nbr_text), counters["bytes_sent"]
            history = peer.counters.setdefault(nbr, deque())
            if history and (sent < history[-1][1] or ts <= history[-1][0]):  # restarted peer or replay
                history.clear()
            history.append((ts, sent))
            while len(history) > 2 and history[1][0] <= ts - RATE_WINDOW_S:
                history.popleft()
            t0, b0 = history[0]
            if ts - t0 >= MIN_RATE_WINDOW_S:
                peer.rates[nbr] = (sent - b0) * 8 / (ts - t0)
            else:
                peer.rates.setdefault(nbr, 0.0)
        acc = data.get("test_accuracy")
        if acc is not None and acc != peer.data.get("test_accuracy"):
            point = [peer_id, round(wall, 3), acc, data.get("epoch", 0)]
            self.accuracy.append(point)
            self._pending_acc.append(point)
        density, gap = data.get("density"), data.get("sync_gap", 1)
        if density is not None and (density, gap) != (peer.data.get("density"), peer.data.get("sync_gap", 1)):
            point = [peer_id, round(wall, 3), density, data.get("backlog_s") or 0.0, gap]
            self.adapt.append(point)
            self._pending_adapt.append(point)
        if isinstance(data.get("bandwidth_cap_bps"), (int, float)) and data["bandwidth_cap_bps"] > 0:
            self.cap_bps = float(data["bandwidth_cap_bps"])
        peer.data, peer.seen, peer.last_wall, peer.dirty = data, self.clock(), wall, True
        peer.first_wall = peer.first_wall or wall
        return True

    # ------------------------------------------------------------ derived
    def _states(self) -> list[str]:
        now, down_after = self.clock(), self.cfg.dashboard.down_after_s
        return [p.state(now, down_after) for p in self.peers]

    def _links(self, states: list[str]) -> list[dict[str, Any]]:
        pairs: set[tuple[int, int]] = set()
        for p in self.peers:
            for n in p.data.get("neighbours", []):
                if 0 <= n < len(self.peers) and n != p.peer_id:
                    pairs.add((min(n, p.peer_id), max(n, p.peer_id)))
        links = []
        for a, b in sorted(pairs):
            pa, pb = self.peers[a], self.peers[b]
            down = "down" in (states[a], states[b]) or b in pa.data.get("neighbours_down", []) or (
                a in pb.data.get("neighbours_down", [])
            )
            live_a, live_b = states[a] not in ("down", "done"), states[b] not in ("down", "done")
            links.append({
                "a": a, "b": b, "down": down,
                "bps_ab": round(self._rate(a, b)) if live_a else 0,
                "bps_ba": round(self._rate(b, a)) if live_b else 0,
            })  # fmt: skip
        return links

    def _rate(self, sender: int, receiver: int) -> float:
        if self._rates is None:
            return self.peers[sender].rates.get(receiver, 0.0)
        return self._rates.get((sender, receiver), 0.0)

    def _take_sample(self, ts: float) -> None:
        self._last_sample = ts
        self._rates = {(p.peer_id, n): r for p in self.peers for n, r in p.rates.items()}

    def _swarm(self, states: list[str], links: list[dict[str, Any]]) -> dict[str, Any]:
        directed = [link[k] for link in links for k in ("bps_ab", "bps_ba")]
        return {
            "bps": sum(directed),  # the one swarm rate: header, chart point and edges' sum
            "sample_ts": round(self._last_sample, 3) if self._rates is not None else None,
            "max_link_bps": max(directed, default=0),
            "cap_bps": self.cap_bps,
            "counts": {s: states.count(s) for s in sorted(set(states))},
        }

    def summary(self, states: list[str] | None = None) -> dict[str, Any] | None:
        """The run summary once every peer is done or down (and at least one is done)."""
        states = states or self._states()
        if "done" not in states or any(s not in ("done", "down") for s in states):
            return None
        seen = [p for p in self.peers if p.first_wall is not None]
        accs = {str(p.peer_id): p.data.get("test_accuracy") for p in self.peers}
        values = [a for a in accs.values() if a is not None]
        triggers: dict[str, int] = {}
        for p in self.peers:
            for kind, n in p.data.get("triggers", {}).items():
                triggers[kind] = triggers.get(kind, 0) + n

        def mean(key: str) -> float | None:
            vals = [p.data[key] for p in seen if p.data.get(key) is not None]
            return sum(vals) / len(vals) if vals else None

        return {
            "peers_done": states.count("done"),
            "peers_down": [i for i, s in enumerate(states) if s == "down"],
            "duration_s": max(p.last_wall or 0 for p in seen) - min(p.first_wall or 0 for p in seen),
            "final_accuracy": accs,
            "accuracy_mean": sum(values) / len(values) if values else None,
            "accuracy_min": min(values, default=None),
            "accuracy_max": max(values, default=None),
            "bytes_sent_total": sum(p.data.get("bytes_sent", 0) for p in seen),
            "mb_per_epoch_mean": mean("mb_per_epoch"),
            "compression_ratio_mean": mean("compression_ratio"),
            "triggers": triggers,
            "updates_rejected": sum(p.data.get("updates_rejected", 0) for p in seen),
        }

    # ------------------------------------------------------------ output
    def snapshot(self) -> dict[str, Any]:
        """Everything a freshly connected browser needs."""
        states = self._states()
        links = self._links(states)
        cfg = self.cfg
        return {
            "type": "snapshot",
            "ts": time.time(),
            "config": {
                "peers": cfg.peers, "hosts": [p.host for p in self.peers], "topology": cfg.topology.kind,
                "dataset": cfg.data.name, "model": cfg.model.name, "epochs": cfg.train.epochs,
                "codec": f"{cfg.codec.select} {cfg.codec.density:g} {cfg.codec.values}",
                "link_bandwidth": cfg.link.bandwidth, "interval_s": cfg.dashboard.interval_s,
                "down_after_s": cfg.dashboard.down_after_s,
            },  # fmt: skip
            "peers": {str(p.peer_id): p.public(s) for p, s in zip(self.peers, states, strict=True)},
            "links": links,
            "swarm": self._swarm(states, links),
            "bandwidth": list(self.bandwidth),
            "accuracy": list(self.accuracy),
            "adapt": list(self.adapt),
            "summary": self.summary(states),
        }

    def tick(self) -> dict[str, Any] | None:
        """Changes since the previous tick as a ``delta`` message, or None when nothing changed."""
        states = self._states()
        delta: dict[str, Any] = {"type": "delta", "ts": time.time()}
        peers = {}
        for p, state in zip(self.peers, states, strict=True):
            if p.dirty or state != p.sent_state:
                p.dirty, p.sent_state = False, state
                peers[str(p.peer_id)] = p.public(state)
        if peers:
            delta["peers"] = peers
        sampled = delta["ts"] - self._last_sample >= SAMPLE_S
        if sampled:
            self._take_sample(delta["ts"])
        links = self._links(states)
        swarm = self._swarm(states, links)
        for key, value in (("links", links), ("swarm", swarm), ("summary", self.summary(states))):
            if self._sent.get(key, _BAD) != value:
                delta[key] = self._sent[key] = value
        if sampled:
            point = [round(delta["ts"], 3), swarm["bps"], swarm["max_link_bps"]]
            self.bandwidth.append(point)
            delta["bandwidth"] = [point]
        if self._pending_acc:
            delta["accuracy"], self._pending_acc = self._pending_acc, []
        if self._pending_adapt:
            delta["adapt"], self._pending_adapt = self._pending_adapt, []
        return delta if len(delta) > 2 else None
