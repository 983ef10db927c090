"""Floods against a live peer cost it next to nothing (real peers on loopback).

The swarm is peers 0-2 of a 4-peer config; slot 3 is the test's client, an insider: it says
hello like a neighbour (identity ``p3``; under CURVE it holds peer 3's valid key). While the
swarm trains it floods peer 0 with 100k junk frames in 10 s, 2,000 StateRequests, 20,000
ResendRequests and 2,000 Hellos. What must hold: peer 0's heartbeats, as the client receives
them, are never more than 2 s late; nobody is marked down; peer 0's memory grows by at most
50 MB and its log by at most 1 MB; every flooded frame is counted (rejected or rate-limited);
and peer 0 sent its whole state at most once per ``security.state_answer_interval_s``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import faultkit as fk
import numpy as np
import psutil
import pytest
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from gossip import config
from gossip._proto import gossip_pb2 as pb
from gossip.protocol import wire
from gossip.protocol.codec import Layout
from gossip.runtime import curve
from gossip.runtime.outcome import RejectLog
from gossip.runtime.ratelimit import JUNK as JUNK_KIND
from gossip.runtime.ratelimit import RATES, RateLimiter
from gossip.runtime.testing import Clock
from gossip.runtime.transport import parse_identity
from gossip.sim.attacks import build_update
from gossip.training.models import build_model

JUNK, JUNK_S = 100_000, 10.0
STATE_REQUESTS, RESEND_REQUESTS, HELLOS = 2_000, 20_000, 2_000
HEARTBEAT_LATE_S = 2.0   # beyond the 1 s heartbeat interval
RSS_GROWTH = 50 * 2**20
LOG_GROWTH = 1 * 2**20


class Insider:
    """Peer 3 as far as the swarm can tell: DEALERs with identity p3, and p3's inbox (a ROUTER)
    whose receive thread notes when each of peer 0's heartbeats arrives."""

    def __init__(self, cfg: config.Config, keys: Path | None) -> None:
        self.cfg = cfg
        self.ctx = zmq.Context()
        self.auth: ThreadAuthenticator | None = None
        public: dict[int, bytes] = {}
        if keys is not None:
            public = {p: zmq.auth.load_certificate(keys / f"peer-{p}.key")[0] for p in range(cfg.peers)}
            _, secret = zmq.auth.load_certificate(keys / "peer-3.key_secret")
            self.auth = ThreadAuthenticator(self.ctx)
            self.auth.start()
            self.auth.configure_curve(domain="*", location=str(keys))
        self.socks = {}
        for p in range(3):
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.IDENTITY, b"p3")
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 200_000)
            if keys is not None:
                s.curve_secretkey, s.curve_publickey, s.curve_serverkey = secret, public[3], public[p]
            s.connect(f"tcp://127.0.0.1:{cfg.topology.base_port + p}")
            self.socks[p] = s
        self.inbox = self.ctx.socket(zmq.ROUTER)
        self.inbox.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            self.inbox.curve_server = True
            self.inbox.curve_secretkey, self.inbox.curve_publickey = secret, public[3]
        self.inbox.bind(f"tcp://127.0.0.1:{cfg.topology.base_port + 3}")
        model = build_model(cfg.model.name, 10, 1)
        lay = Layout.from_shapes([(n, tuple(p.shape)) for n, p in model.named_parameters()])
        self.schema, self.numel = lay.schema_hash, lay.numel
        self.beats: list[float] = []  # arrival times of peer 0's heartbeats
        self.running = True
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while self.running:
            if not self.inbox.poll(100):
                continue
            frames = self.inbox.recv_multipart()
            try:
                kind = pb.Envelope.FromString(frames[-1]).WhichOneof("body")
            except Exception:
                continue  # a fragment of a large message (a state chunk)
            if parse_identity(frames[0]) == 0 and kind == "heartbeat":
                self.beats.append(time.monotonic())

    def hello(self) -> bytes:
        return wire.pack_hello(node_id=3, schema_hash=self.schema, config_hash=config.config_hash(self.cfg),
                               address=f"tcp://127.0.0.1:{self.cfg.topology.base_port + 3}",
                               epochs=self.cfg.train.epochs)

    def alive(self) -> None:
        """Hello and a heartbeat to every peer: the swarm keeps us as a live neighbour."""
        for s in self.socks.values():
            s.send(self.hello())
            s.send(wire.pack_heartbeat(node_id=3, step=0, epoch=0))

    def flood(self, frames: list[bytes], count: int, seconds: float) -> None:
        """``count`` frames (cycling through ``frames``) to peer 0, spread over ``seconds``."""
        target, t0, batch = self.socks[0], time.monotonic(), max(1, count // max(1, int(seconds * 20)))
        last_alive = t0
        for i in range(count):
            target.send(frames[i % len(frames)])
            if i % batch == batch - 1:
                now = time.monotonic()
                if now - last_alive > 0.5:
                    self.alive()
                    last_alive = now
                ahead = t0 + seconds * (i + 1) / count - now
                if ahead > 0:
                    time.sleep(ahead)

    def close(self) -> None:
        if not self.running:
            return
        self.running = False
        self.thread.join(2)
        for s in [*self.socks.values(), self.inbox]:
            s.close(0)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()


def junk_frames() -> list[bytes]:
    rng = np.random.default_rng(0)
    return [rng.bytes(int(n)) for n in rng.integers(3, 11, 1000)]


@pytest.mark.slow
@pytest.mark.parametrize("security", ["curve", "plain"])
def test_floods_cost_the_victim_nothing(data_root, tmp_path, security):
    keys = None
    extra: dict[str, object] = {"train.epochs": 3, "timeouts.startup_s": 30, "security.curve": security == "curve"}
    if security == "curve":
        keys = tmp_path / "keys"
        curve.create(keys, fk.PEERS)
        extra["security.curve_keys"] = str(keys)
    cfg = fk.make_cfg(**extra)
    _, procs = fk.start_swarm(tmp_path, cfg, ids=[0, 1, 2])
    client = Insider(cfg, keys)
    log0 = tmp_path / "peer-0.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not all(any(e["event"] == "neighbours_met" for e in fk.events(tmp_path, p)) for p in range(3)):
            client.alive()
            time.sleep(0.5)
            assert time.monotonic() < deadline, "swarm never started"
        while not any(e["event"] == "epoch_end" for e in fk.events(tmp_path, 0)):
            client.alive()  # training: now flood
            time.sleep(0.5)
            assert time.monotonic() < deadline, "peer 0 never finished an epoch"
        proc0 = psutil.Process(procs[0].pid)
        rss0, size0, t_start = proc0.memory_info().rss, log0.stat().st_size, time.monotonic()
        client.flood(junk_frames(), JUNK, JUNK_S)
        client.flood([wire.pack_state_request(node_id=3, schema_hash=client.schema)], STATE_REQUESTS, 2.0)
        client.flood([wire.pack_resend_request(node_id=3, origin=0, seqs=list(range(wire.MAX_RESEND_SEQS)))],
                     RESEND_REQUESTS, 4.0)
        client.flood([client.hello()], HELLOS, 2.0)
        for _ in range(4):  # what was queued is worked off
            client.alive()
            time.sleep(0.5)
        rss1, size1, t_end = proc0.memory_info().rss, log0.stat().st_size, time.monotonic()
        beats = [t for t in client.beats if t_start - 1.5 <= t <= t_end]
        client.close()
        codes = fk.wait_all(procs)
    finally:
        client.close()
        fk.kill_all(procs)
    assert codes == {0: 0, 1: 0, 2: 0}
    gaps = np.diff([t_start, *beats, t_end])
    print(f"floods [{security}]: {t_end - t_start:.1f}s, {len(beats)} heartbeats, largest gap {gaps.max():.2f}s, "
          f"RSS {(rss1 - rss0) / 2**20:+.1f} MiB, log {(size1 - size0) / 1024:+.1f} KiB")
    assert len(beats) >= (t_end - t_start) / 2 and gaps.max() <= 1.0 + HEARTBEAT_LATE_S, \
        f"peer 0's heartbeats: {len(beats)} in {t_end - t_start:.0f}s, largest gap {gaps.max():.1f}s"
    assert rss1 - rss0 <= RSS_GROWTH, f"peer 0 grew by {(rss1 - rss0) / 2**20:.0f} MiB"
    assert size1 - size0 <= LOG_GROWTH, f"peer 0's log grew by {(size1 - size0) / 2**20:.2f} MiB"
    for p in range(3):  # nobody of the swarm was marked down while the flood lasted
        downs = [e for e in fk.events(tmp_path, p) if e["event"] == "peer_down" and e["peer"] != 3]
        assert not downs, f"peer {p}: {downs}"
    victim = fk.result(tmp_path, 0)
    limited, rejected = victim["rate_limited"], victim["rejected_by_reason"]
    assert sum(limited.values()) + sum(rejected.values()) >= 0.9 * JUNK + STATE_REQUESTS + RESEND_REQUESTS
    assert limited.get("state_request", 0) >= STATE_REQUESTS - 20
    assert limited.get("resend_request", 0) >= RESEND_REQUESTS * 0.9
    assert limited.get("hello", 0) >= HELLOS * 0.9
    states = [e for e in fk.events(tmp_path, 0) if e["event"] == "state_sent" and e["to"] == 3]
    assert len(states) <= 1 + (t_end - t_start) / cfg.security.state_answer_interval_s, len(states)
    summaries = [e for e in fk.events(tmp_path, 0) if e["event"] == "update_rejected_summary"]
    assert summaries and sum(e["count"] for e in summaries) >= 0.8 * JUNK


# ---------------------------------------------------------------- the parts, without processes


def test_rate_limiter_allows_the_burst_then_the_rate_per_sender_and_kind():
    clock = Clock()
    limits = RateLimiter(clock=clock, rates={"hello": (2.0, 5.0), JUNK_KIND: (1.0, 1.0)})
    assert sum(limits.allow(3, "hello") for _ in range(10)) == 5  # the burst
    assert limits.allow(1, "hello") and limits.allow(3, JUNK_KIND)  # another sender, another kind
    clock.advance(1.0)
    assert sum(limits.allow(3, "hello") for _ in range(10)) == 2  # then the rate
    assert [limits.allow(3, "no_such_kind") for _ in range(2)] == [True, False]  # the junk rate and burst
    assert limits.dropped == {"hello": 13, "no_such_kind": 1}
    clock.advance(100.0)
    assert sum(limits.allow(3, "hello") for _ in range(10)) == 5  # never more than the burst
    assert all(RateLimiter(scale=0).allow(None, "update") for _ in range(10_000))  # scale 0: off


def test_every_honest_rate_is_far_below_its_limit():
    """One heartbeat a second, Hellos every 0.2 s, one StateRequest per catch-up."""
    assert RATES["heartbeat"][0] >= 10 and RATES["hello"][0] >= 5 and RATES["state_request"][1] >= 3
    assert RATES["update"][0] >= 1000 and RATES["state_chunk"][1] >= 10_000


def test_reject_log_writes_the_first_then_one_summary_per_interval(monkeypatch):
    from gossip.runtime import outcome

    logs: list[dict] = []

    class Recorder:  # structlog caches configured loggers, so capture_logs() misses them in a full run
        def __getattr__(self, level):
            return lambda event, **kw: logs.append({"event": event, "level": level, **kw})

    monkeypatch.setattr(outcome, "log", Recorder())
    clock = Clock()
    rl = RejectLog(5.0, clock)
    for i in range(1000):
        rl.note("parse_error", 3, f"frame {i}")
        clock.advance(0.001)
    rl.note("too_large", None, "x")
    clock.advance(5.0)
    rl.flush()
    rl.note("parse_error", 3, "later")
    rl.flush(force=True)
    events = [(e["event"], e["reason"], e.get("count")) for e in logs
              if e["event"].startswith("update_rejected")]
    assert events == [("update_rejected", "parse_error", None), ("update_rejected", "too_large", None),
                      ("update_rejected_summary", "parse_error", 999), ("update_rejected", "parse_error", None)]


@pytest.mark.slow
def test_an_insider_with_a_valid_key_sending_huge_updates_is_bounded(data_root, tmp_path):
    """Peer 3's key, well-formed updates of values 1.27e8 (int8 127 x scale 1e6) to peer 0, ten a
    second while it trains: each refused as norm_bound, and peer 0 ends within 1 point of its
    unattacked neighbours (on a full mesh nobody relays them)."""
    keys = tmp_path / "keys"
    curve.create(keys, fk.PEERS)
    cfg = fk.make_cfg(**{"train.epochs": 2, "timeouts.startup_s": 30, "security.curve": True,
                         "security.curve_keys": str(keys)})
    _, procs = fk.start_swarm(tmp_path, cfg, ids=[0, 1, 2])
    client = Insider(cfg, keys)
    numel = client.numel
    idx = np.sort(np.random.default_rng(0).choice(numel, 11_000, replace=False)).astype(np.int64)
    sent = 0
    try:
        deadline = time.monotonic() + 120
        while not all(any(e["event"] == "neighbours_met" for e in fk.events(tmp_path, p)) for p in range(3)):
            client.alive()
            time.sleep(0.5)
            assert time.monotonic() < deadline, "swarm never started"
        last = cfg.train.epochs - 1  # until peer 0 has trained; then we fall silent and the swarm finishes
        while not any(e["event"] == "epoch_end" and e["epoch"] == last for e in fk.events(tmp_path, 0)):
            msg = build_update(idx, np.full(idx.size, 127 * 1e6, dtype=np.float32), numel)
            client.socks[0].send(wire.pack_update(msg, node_id=3, seq=sent, step=0, epoch=0, confidence=0.5,
                                                  schema_hash=client.schema))
            sent += 1
            if sent % 5 == 0:  # a Hello and a heartbeat twice a second keep us a live neighbour
                client.alive()
            time.sleep(0.1)  # ten a second: the victim's 2 epochs take only a few seconds here
            assert time.monotonic() < deadline + 240, "peer 0 never finished"
        client.close()
        codes = fk.wait_all(procs)
    finally:
        client.close()
        fk.kill_all(procs)
    assert codes == {0: 0, 1: 0, 2: 0} and sent >= 10
    results = {p: fk.result(tmp_path, p) for p in range(3)}
    victim = results[0]
    assert victim["rejected_by_reason"].get("norm_bound", 0) >= sent - 2, (sent, victim["rejected_by_reason"])
    honest = min(results[p]["test_accuracy"] for p in (1, 2))
    print(f"insider: {sent} huge updates, norm_bound {victim['rejected_by_reason'].get('norm_bound')}, "
          f"victim {victim['test_accuracy']:.4f}, neighbours {honest:.4f}")
    assert victim["test_accuracy"] >= honest - 0.01
