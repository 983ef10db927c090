"""CurveZMQ on real sockets: allowlisted keys get through, strangers and impostors do not."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
import zmq
import zmq.asyncio
import zmq.auth
from ports import free_port_block

from gossip import config
from gossip.errors import ConfigError
from gossip.runtime import curve
from gossip.runtime.transport import Transport


@pytest.fixture
def keyed(tmp_path):
    curve.create(tmp_path / "keys", 3)
    base = free_port_block(8)
    return config.load(None, ["peers=3", f"topology.base_port={base}", "security.curve=true",
                              f"security.curve_keys={tmp_path / 'keys'}"])


def test_keys_cli_and_loading(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gossip.curve", str(tmp_path / "k"), "--peers", "2"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "2 new key pairs" in proc.stdout
    cfg = config.load(None, ["peers=2", "security.curve=true", f"security.curve_keys={tmp_path / 'k'}"])
    keys = curve.load(cfg, 1)
    assert set(keys.public) == {0, 1} and keys.public[0] != keys.public[1]
    with pytest.raises(ConfigError, match="python -m gossip.curve"):
        curve.load(config.load(None, ["peers=3", f"security.curve_keys={tmp_path / 'k'}"]), 0)


async def deliver(cfg, sender_frames, timeout=2.0):
    """Start peer 0's transport; ``sender_frames(ctx)`` sends from outside; return what peer 0 received."""
    t = Transport(cfg, 0, [1, 2])
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

    assert asyncio.run(deliver(keyed, send)) == []


def test_a_valid_key_cannot_speak_for_another_peer(keyed, tmp_path):
    async def send(ctx):
        s = client(ctx, keyed, b"p2", 1, tmp_path / "keys")  # peer 1's key, claiming to be peer 2
        await s.send(b"i am 2, honest")
        await asyncio.sleep(0.5)  # the CURVE handshake, before the socket goes away

    got = asyncio.run(deliver(keyed, send))
    assert got == [(None, [b"i am 2, honest"])]  # delivered as an unknown sender: the node rejects it


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
