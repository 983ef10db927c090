"""CurveZMQ on real sockets: allowlisted keys get through, strangers, impostors and squatters do not;
keys, the startup rule (insecure only on loopback or when asked) and the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
import zmq
import zmq.asyncio
import zmq.auth
from ports import free_port_block

from gossip import config
from gossip.errors import ConfigError, PeerError
from gossip.observe.log import run_logging
from gossip.runtime import curve
from gossip.runtime.transport import Transport, parse_identity


class Events:
    """The events logged while the fixture is active (read from its JSON-lines file on access)."""

    def __init__(self, path):
        self.path = path

    def __iter__(self):
        text = self.path.read_text() if self.path.exists() else ""
        return iter([json.loads(line) for line in text.splitlines() if line.strip()])


@pytest.fixture
def caplog_events(tmp_path):
    with run_logging(tmp_path / "events.jsonl"):
        yield Events(tmp_path / "events.jsonl")


@pytest.fixture
def keyed(tmp_path):
    curve.create(tmp_path / "keys", 3)
    base = free_port_block(8)
    return config.load(None, ["peers=3", f"topology.base_port={base}", "security.curve=true",
                              f"security.curve_keys={tmp_path / 'keys'}"])


def test_keys_cli_and_loading(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gossip.curve", "keys", str(tmp_path / "k"), "--peers", "2"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "2 new key pairs" in proc.stdout
    for p in range(2):  # secrets readable by their owner only
        assert (tmp_path / "k" / f"peer-{p}.key_secret").stat().st_mode & 0o777 == 0o600
    old = subprocess.run([sys.executable, "-m", "gossip.curve", str(tmp_path / "k"), "--peers", "3"],
                         capture_output=True, text=True, timeout=60)  # the older form, without "keys"
    assert old.returncode == 0 and "1 new key pairs" in old.stdout
    cfg = config.load(None, ["peers=2", "security.curve=true", f"security.curve_keys={tmp_path / 'k'}"])
    keys = curve.load(cfg, 1)
    assert set(keys.public) == {0, 1} and keys.public[0] != keys.public[1]
    with pytest.raises(ConfigError, match="python -m gossip.curve keys"):
        curve.load(config.load(None, ["peers=4", f"security.curve_keys={tmp_path / 'k'}"]), 0)


def test_authentication_is_on_by_default_and_insecure_only_where_allowed(tmp_path, caplog_events):
    assert config.load(None, []).security.curve is True
    assert config.load(None, []).security.telemetry == "loopback"
    none = f"security.curve_keys={tmp_path / 'none'}"
    # a lone peer on loopback without keys: insecure, with one warning
    cfg = config.load(None, ["peers=2", none])
    run = curve.startup(cfg, 0, "tcp://127.0.0.1:24000")
    assert run.security.curve is False and [e["event"] for e in caplog_events] == ["security_off"]
    assert curve.startup(cfg, 0, "ipc:///tmp/x/peer-0.sock").security.curve is False
    # on a real interface: refused with a one-line error that says how to make keys
    with pytest.raises(PeerError) as err:
        curve.startup(cfg, 1, "tcp://10.0.0.2:24001")
    assert "\n" not in str(err.value)
    assert str(err.value) == (
        f"peer 1 refuses to listen on tcp://10.0.0.2:24001 without keys (no keys in {tmp_path / 'none'}): "
        f"make them with `python -m gossip.curve keys {tmp_path / 'none'} --peers 2`, copy the folder to "
        "every host and set security.curve_keys, or set security.insecure=true")
    with pytest.raises(PeerError, match="security.curve=false"):
        curve.startup(config.load(None, ["peers=2", "security.curve=false"]), 0, "tcp://box-a:24000")
    assert curve.startup(config.load(None, ["peers=2", none, "security.insecure=true"]), 0,
                         "tcp://10.0.0.2:24000").security.curve is False
    # with keys: CURVE, on any address
    curve.create(tmp_path / "k", 2)
    keyed = config.load(None, ["peers=2", f"security.curve_keys={tmp_path / 'k'}"])
    assert curve.startup(keyed, 1, "tcp://10.0.0.2:24001") is keyed


def test_launcher_keys_go_in_the_run_dir_unless_given(tmp_path):
    cfg = config.load(None, ["peers=3", f"security.curve_keys={tmp_path / 'none'}"])
    made = curve.launch_keys(cfg, tmp_path / "run")
    assert made.security.curve_keys == str((tmp_path / "run" / "keys").resolve())
    assert all(curve.has_keys(made, p) for p in range(3))
    again = curve.launch_keys(made, tmp_path / "other")  # a full set is used as it is
    assert again.security.curve_keys == made.security.curve_keys and not (tmp_path / "other").exists()
    off = config.load(None, ["security.curve=false"])
    assert curve.launch_keys(off, tmp_path / "x") is off


def test_loopback_and_identity_parsing():
    assert curve.is_loopback("tcp://127.0.0.1:1") and curve.is_loopback("tcp://localhost:1")
    assert curve.is_loopback("tcp://[::1]:1") and curve.is_loopback("ipc:///tmp/a")
    assert not curve.is_loopback("tcp://10.1.2.3:1") and not curve.is_loopback("tcp://box-a:1")
    assert parse_identity(b"p3:0a1b2c3d4e5f") == 3 and parse_identity(b"p3") == 3
    assert parse_identity(b"q3:00") is None


def test_refusals_are_counted_and_logged_sparingly(caplog_events):
    counts: dict[str, int] = {}
    refuse = curve.Refusals(counts)
    for _ in range(100):
        refuse("unknown_key", None, "x")
    assert counts == {"unknown_key": 100}
    assert [e["count"] for e in caplog_events if e["event"] == "security_refused"] == [1, 2, 4, 8, 16, 32, 64]


async def deliver(cfg, sender_frames, timeout=2.0, refused=None):
    """Start peer 0's transport; ``sender_frames(ctx)`` sends from outside; return what peer 0 received
    (its refusals by reason go into ``refused``)."""
    t = Transport(cfg, 0, [1, 2])
    t.on_refused = curve.Refusals({} if refused is None else refused)
    await t.start()
    got = []
    ctx = zmq.asyncio.Context()
    try:
        await sender_frames(ctx)
        while True:
            got.append(await asyncio.wait_for(t.recv(), timeout))
    except asyncio.TimeoutError:
        pass
    finally:
        ctx.destroy(0)
        await t.close()
    return got


def client(ctx, cfg, identity: bytes, key_of: int | None, keys_dir):
    """A DEALER to peer 0 claiming ``identity``, using peer ``key_of``'s key pair (None: a stranger's)."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.IDENTITY, identity)
    s.setsockopt(zmq.LINGER, 0)
    if key_of is None:
        pub, sec = zmq.curve_keypair()
    else:
        pub, sec = zmq.auth.load_certificate(keys_dir / f"peer-{key_of}.key_secret")
    s.curve_publickey, s.curve_secretkey = pub, sec
    s.curve_serverkey = zmq.auth.load_certificate(keys_dir / "peer-0.key")[0]
    s.connect(f"tcp://127.0.0.1:{cfg.topology.base_port}")
    return s


def test_allowlisted_key_gets_through_with_its_node_id(keyed, tmp_path):
    async def send(ctx):
        s = client(ctx, keyed, b"p1", 1, tmp_path / "keys")
        await s.send(b"hello from 1")
        await asyncio.sleep(0.5)  # the CURVE handshake, before the socket goes away

    got = asyncio.run(deliver(keyed, send))
    assert got == [(1, [b"hello from 1"])]


def test_a_stranger_key_is_refused(keyed, tmp_path):
    async def send(ctx):
        s = client(ctx, keyed, b"p1", None, tmp_path / "keys")
        await s.send(b"let me in")
        await asyncio.sleep(0.5)  # the CURVE handshake, before the socket goes away

    refused: dict[str, int] = {}
    assert asyncio.run(deliver(keyed, send, refused=refused)) == []
    assert refused == {"unknown_key": 1}


def test_a_client_without_curve_is_refused_and_counted(keyed):
    async def send(ctx):
        s = ctx.socket(zmq.DEALER)  # no keys at all: the NULL mechanism against a CURVE server
        s.setsockopt(zmq.IDENTITY, b"p1")
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"tcp://127.0.0.1:{keyed.topology.base_port}")
        await s.send(b"seq squatting as peer 1")
        await asyncio.sleep(0.5)
        s.close(0)

    refused: dict[str, int] = {}
    assert asyncio.run(deliver(keyed, send, refused=refused)) == []
    assert refused.get("unauthenticated", 0) >= 1 and set(refused) == {"unauthenticated"}


def test_a_valid_key_cannot_speak_for_another_peer(keyed, tmp_path):
    async def send(ctx):
        s = client(ctx, keyed, b"p2", 1, tmp_path / "keys")  # peer 1's key, claiming to be peer 2
        await s.send(b"i am 2, honest")
        t = client(ctx, keyed, b"anything", 1, tmp_path / "keys")  # no claim: it speaks as its key
        await t.send(b"i am whoever my key says")
        await asyncio.sleep(0.5)  # the CURVE handshake, before the socket goes away

    refused: dict[str, int] = {}
    got = asyncio.run(deliver(keyed, send, refused=refused))
    assert got == [(1, [b"i am whoever my key says"])]
    assert refused == {"identity_taken": 1}


def test_a_second_connection_cannot_take_over_a_neighbours_identity(keyed, tmp_path):
    """Peer 2's key announces peer 1's exact routing identity (and then ``p1``), sends, and leaves:
    refused, counted, and peer 1's link keeps delivering every frame."""
    async def main():
        a, b = Transport(keyed, 0, [1, 2]), Transport(keyed, 1, [0])
        refused: dict[str, int] = {}
        a.on_refused = curve.Refusals(refused)
        await a.start()
        await b.start()
        ctx = zmq.asyncio.Context()
        got = []
        try:
            b.send(0, b"before")
            got.append(await asyncio.wait_for(a.recv(), 10))
            real = b.links[0].socket.getsockopt(zmq.IDENTITY)
            for claim in (real, b"p1"):
                s = client(ctx, keyed, claim, 2, tmp_path / "keys")
                await s.send(b"i am 1 now")
                await asyncio.sleep(0.5)
                s.close(0)
            await asyncio.sleep(0.3)
            for i in range(5):
                b.send(0, b"after %d" % i)
            while len(got) < 6:
                got.append(await asyncio.wait_for(a.recv(), 10))
        finally:
            ctx.destroy(0)
            await a.close()
            await b.close()
        return got, refused

    got, refused = asyncio.run(main())
    assert got == [(1, [b"before"])] + [(1, [b"after %d" % i]) for i in range(5)]
    assert refused.get("identity_taken", 0) >= 1  # the exact copy is never even read (no handover)


@pytest.mark.parametrize("squatter", ["plain", "curve"])
def test_a_squatter_on_a_peers_port_cannot_pass_for_it(keyed, squatter):
    """A process bound to peer 1's port before it starts: peer 0's link to 1 never completes its
    handshake (counted as server_key_mismatch), and the real peer 1 cannot bind (one-line error)."""
    ctx = zmq.Context()
    squat = ctx.socket(zmq.ROUTER)
    squat.setsockopt(zmq.LINGER, 0)
    if squatter == "curve":  # a CURVE server, but without peer 1's secret key
        squat.curve_publickey, squat.curve_secretkey = zmq.curve_keypair()
        squat.curve_server = True
    squat.bind(f"tcp://127.0.0.1:{keyed.topology.base_port + 1}")

    async def main():
        a = Transport(keyed, 0, [1])
        refused: dict[str, int] = {}
        a.on_refused = curve.Refusals(refused)
        await a.start()
        try:
            a.send(1, b"for peer 1 only")
            for _ in range(100):
                if refused.get("server_key_mismatch"):
                    break
                await asyncio.sleep(0.1)
            with pytest.raises(PeerError, match="cannot listen on .* holds it"):
                await Transport(keyed, 1, [0]).start()
            return refused
        finally:
            await a.close()

    try:
        refused = asyncio.run(main())
        assert squat.poll(200) == 0  # nothing reached the squatter
    finally:
        squat.close(0)
        ctx.term()
    assert refused.get("server_key_mismatch", 0) >= 1


def test_two_curve_transports_talk(keyed):
    async def main():
        a, b = Transport(keyed, 0, [1]), Transport(keyed, 1, [0])
        await a.start()
        await b.start()
        try:
            b.send(0, b"over curve")
            return await asyncio.wait_for(a.recv(), 10)
        finally:
            await a.close()
            await b.close()

    assert asyncio.run(main()) == (1, [b"over curve"])
