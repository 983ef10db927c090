"""Attacks on a swarm with the default config (CURVE on), real peers on loopback, real ZeroMQ sockets.

The swarm is peers 0-2 of a 4-peer config; slot 3 is an **insider**: the test holds peer 3's
valid key, says hello as peer 3, listens on peer 3's port (so it receives, decrypted, every
update the others send) and then tries to speak for peer 1 at peer 0 (the victim). Outsiders
hold no key or a wrong one. What must hold: every attempt is refused with its reason counted,
the victim applies exactly what peers 1 and 2 originated (so peer 1 was never cut off and no
squatted seq kept a real update out), and its model ends where its unattacked neighbours'
do (a single applied attack update takes a peer to ~10%). The insider speaking as itself is
for the aggregation bounds; here it can only speak as itself.

A second test squats a peer's port before that peer starts.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import faultkit as fk
import numpy as np
import pytest
import zmq
import zmq.auth

from gossip import config
from gossip._proto import gossip_pb2 as pb
from gossip.protocol import wire
from gossip.protocol.codec import Layout
from gossip.sim.attacks import build_update
from gossip.training.models import build_model

pytestmark = pytest.mark.slow

SETTINGS = {"data.limit_train": 9000, "data.limit_test": 2000, "train.epochs": 3, "timeouts.startup_s": 30}
TOLERANCE = 0.003  # 0.3 points
VICTIM, IMPERSONATED = 0, 1


def layout_of(cfg: config.Config) -> Layout:
    model = build_model(cfg.model.name, 10, 1)
    return Layout.from_shapes([(n, tuple(p.shape)) for n, p in model.named_parameters()])


class Attacker:
    """Raw ZeroMQ sockets: keyless, wrong-key and insider (peer 3's key) clients, and peer 3's inbox."""

    def __init__(self, cfg: config.Config, keys) -> None:
        self.cfg, self.keys = cfg, keys
        self.ctx = zmq.Context()
        self.socks: list[zmq.Socket] = []
        lay = layout_of(cfg)
        self.numel, self.schema = lay.numel, lay.schema_hash
        self.limits = wire.Limits(numel=lay.numel, schema_hash=lay.schema_hash,
                                  max_bytes=cfg.security.max_message_bytes, peers=cfg.peers)
        self.inbox = self.ctx.socket(zmq.ROUTER)  # peer 3's port, with peer 3's secret: the others talk to it
        self.inbox.curve_publickey, self.inbox.curve_secretkey = zmq.auth.load_certificate(keys / "peer-3.key_secret")
        self.inbox.curve_server = True
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.bind(self.address(3))
        self.captured: list[bytes] = []

    def address(self, peer: int) -> str:
        return f"tcp://127.0.0.1:{self.cfg.topology.base_port + peer}"

    def dealer(self, to: int, identity: bytes, key: str) -> zmq.Socket:
        """``key``: "none" (no CURVE), "wrong" (a key pair of no peer) or "insider" (peer 3's)."""
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, identity)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 100_000)
        if key != "none":
            pub, sec = (zmq.curve_keypair() if key == "wrong"
                        else zmq.auth.load_certificate(self.keys / "peer-3.key_secret"))
            s.curve_publickey, s.curve_secretkey = pub, sec
            s.curve_serverkey = zmq.auth.load_certificate(self.keys / f"peer-{to}.key")[0]
        s.connect(self.address(to))
        self.socks.append(s)
        return s

    def drain(self) -> None:
        """Keep the updates peers 0-2 sent to peer 3 (what an insider can capture)."""
        while self.inbox.poll(0):
            frame = self.inbox.recv_multipart()[-1]
            if pb.Envelope.FromString(frame).WhichOneof("body") == "update":
                self.captured.append(frame)

    def update(self, node_id: int, seq: int, *, huge: bool = False) -> bytes:
        if huge:  # every weight moved by 1e6: one applied copy ruins a model
            msg = build_update(None, np.full(self.numel, 1e6, dtype=np.float32), self.numel)
        else:  # empty: what a seq squatter sends to use up a peer's sequence numbers
            msg = build_update(np.array([], dtype=np.int64), np.zeros(0, dtype=np.float32), self.numel)
        return wire.pack_update(msg, node_id=node_id, seq=seq, step=0, epoch=0, confidence=0.5,
                                schema_hash=self.schema)

    def hello(self, insiders: dict[int, zmq.Socket]) -> None:
        for s in insiders.values():
            s.send(wire.pack_hello(node_id=3, schema_hash=self.schema, config_hash=config.config_hash(self.cfg),
                                   address=self.address(3), epochs=self.cfg.train.epochs))
            s.send(wire.pack_heartbeat(node_id=3, step=0, epoch=0))

    def close(self) -> None:
        for s in self.socks:
            s.close(0)
        self.inbox.close(0)
        self.ctx.term()


def replayed(frame: bytes, seq: int, **envelope) -> bytes:
    env = pb.Envelope.FromString(frame)
    env.update.seq = seq
    for k, v in envelope.items():
        setattr(env, k, v)
    return env.SerializeToString()


def spoofed_control(a: Attacker) -> list[bytes]:
    """Every other message kind, from the insider's connection, naming peer 1 inside."""
    one = IMPERSONATED
    frames = [wire.pack_hello(node_id=one, schema_hash=a.schema, config_hash=config.config_hash(a.cfg),
                              address=a.address(one), epochs=a.cfg.train.epochs),
              wire.pack_heartbeat(node_id=one, step=10**6, epoch=0),
              wire.pack_done(node_id=one, last_seq=0, complete=True),
              wire.pack_state_request(node_id=one, schema_hash=a.schema),
              wire.pack_resend_request(node_id=one, origin=2, seqs=[0, 1])]
    out = []
    for f in frames:
        out.append(f)  # the envelope's from_id says 1
        env = pb.Envelope.FromString(f)
        env.from_id = 3  # honest envelope, the body still names peer 1
        out.append(env.SerializeToString())
    return out


def test_outsiders_and_an_insider_cannot_speak_for_a_peer(data_root, tmp_path):
    t0 = time.monotonic()
    cfg = fk.with_keys(tmp_path, fk.make_cfg(**SETTINGS))
    a = Attacker(cfg, tmp_path / "keys")
    procs: dict[int, subprocess.Popen[str]] = {}
    try:
        # seq squatting, before the victim even listens: empty updates 0..2999 "from peer 1"
        squat = {key: a.dealer(VICTIM, b"p1", key) for key in ("none", "wrong")}
        for s in squat.values():
            for seq in range(3000):
                s.send(a.update(IMPERSONATED, seq), zmq.NOBLOCK)
        path = fk.write_cfg(tmp_path, cfg)
        procs = {p: fk.start_peer(tmp_path, path, p) for p in range(3)}
        insiders = {p: a.dealer(p, b"p3", "insider") for p in range(3)}
        deadline = time.monotonic() + 120
        while not all(any(e["event"] == "neighbours_met" for e in fk.events(tmp_path, p)) for p in range(3)):
            a.hello(insiders)
            a.drain()
            time.sleep(0.5)
            assert time.monotonic() < deadline, "swarm never started"
        while not a.captured:
            a.drain()
            time.sleep(0.1)
            assert time.monotonic() < deadline, "peer 3's inbox never got an update"
        # impersonation with a huge update: no key, a wrong key
        for key in ("none", "wrong"):
            a.dealer(VICTIM, b"p1", key).send(a.update(IMPERSONATED, 5000, huge=True))
        # identity takeover: a second connection with the insider's key announcing peer 1's identity
        takeover = a.dealer(VICTIM, b"p1", "insider")
        takeover.send(a.update(IMPERSONATED, 5001, huge=True))
        # replay of captured updates with fresh seqs: as peer 1 (from_id 3, node_id 1), and keyless
        replays = a.captured[:10]  # what the insider has by now (peers start training a moment after meeting)
        for i, frame in enumerate(replays):
            insiders[VICTIM].send(replayed(frame, 6000 + i, from_id=3))
            with contextlib.suppress(zmq.Again):  # its pipe may be full: the handshake never completes
                squat["none"].send(replayed(frame, 7000 + i), zmq.NOBLOCK)
        for frame in spoofed_control(a):
            insiders[VICTIM].send(frame)
        time.sleep(1.5)  # the victim counts all that; then the takeover connection leaves
        takeover.close(0)
        assert not any(e["event"] == "peer_result" for e in fk.events(tmp_path, VICTIM)), \
            "the swarm finished before the attack ended: make SETTINGS bigger"
        codes = fk.wait_all(procs)  # the insider falls silent, is marked down, the others finish
    finally:
        a.close()
        fk.kill_all(procs)
    assert codes == {0: 0, 1: 0, 2: 0}
    res = {p: fk.result(tmp_path, p) for p in range(3)}
    victim = res[VICTIM]
    counted = victim["rejected_by_reason"]
    assert counted.get("unauthenticated", 0) >= 1, counted  # keyless: no CURVE handshake
    assert counted.get("unknown_key", 0) >= 1, counted      # a key of no peer
    assert counted.get("identity_taken", 0) >= 1, counted   # peer 3's key announcing p1
    # every replay (another peer's node_id on a full mesh, or the victim's own: bad_node_id) + 10 control
    assert counted.get("spoofed_node_id", 0) + counted.get("bad_node_id", 0) >= len(replays) + 10, counted
    # nothing from anyone but peers 1 and 2 was applied, and all of theirs was: peer 1 was never cut
    # off, and no squatted seq kept one of its real updates out
    for p in (1, 2):
        assert victim["applied_by_origin"].get(str(p), 0) == res[p]["updates_originated"], (p, victim)
    assert victim["applied_by_origin"].get("3", 0) == 0
    for p in (1, 2):  # the victim's model is where its unattacked neighbours' are
        assert abs(victim["test_accuracy"] - res[p]["test_accuracy"]) <= TOLERANCE, res
    assert victim["test_accuracy"] > 0.8
    for p in range(3):
        names = [e["event"] for e in fk.events(tmp_path, p)]
        assert "security_on" in names and "security_off" not in names
    print(f"attacked swarm: {time.monotonic() - t0:.0f}s, victim refused {counted}; accuracy "
          f"{[res[p]['test_accuracy'] for p in range(3)]}, others refused {[res[p]['rejected_by_reason'] for p in (1, 2)]}")


def test_a_squatter_on_a_peers_port_is_refused_and_the_peer_says_why(data_root, tmp_path):
    cfg = fk.with_keys(tmp_path, fk.make_cfg(peers=2, **{"timeouts.startup_s": 8}))
    ctx = zmq.Context()
    squatter = ctx.socket(zmq.ROUTER)  # binds peer 1's port first; a CURVE server, but not peer 1's key
    squatter.curve_publickey, squatter.curve_secretkey = zmq.curve_keypair()
    squatter.curve_server = True
    squatter.setsockopt(zmq.LINGER, 0)
    port = cfg.topology.base_port + 1
    squatter.bind(f"tcp://127.0.0.1:{port}")
    path = fk.write_cfg(tmp_path, cfg)
    try:
        procs = {p: subprocess.Popen([sys.executable, "-m", "gossip.peer", "--id", str(p), "--config", str(path),
                                      "--run-dir", str(tmp_path), "--quiet"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in range(2)}
        errs = {p: proc.communicate(timeout=120)[1] for p, proc in procs.items()}
        got_anything = squatter.poll(0)
    finally:
        squatter.close(0)
        ctx.term()
    assert procs[1].returncode == 2 and "Traceback" not in errs[1]
    last = errs[1].strip().splitlines()[-1]
    assert last.startswith(f"error: peer 1 cannot listen on tcp://127.0.0.1:{port}: Address already in use"), last
    assert last.endswith("(another peer with this id, or another program, holds it? change topology.base_port)")
    # peer 0 never took the squatter for peer 1: its link's handshake failed, counted, and it said so
    assert procs[0].returncode == 2 and "no neighbour answered" in errs[0].strip().splitlines()[-1]
    refused = [e for e in fk.events(tmp_path, 0) if e["event"] == "security_refused"]
    assert refused and {e["reason"] for e in refused} == {"server_key_mismatch"} and refused[0]["peer"] == 1
    assert got_anything == 0  # not one frame reached the squatter
