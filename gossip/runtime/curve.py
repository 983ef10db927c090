"""Optional authentication with CurveZMQ: encrypted links, a key allowlist, node id bound to its key.

Off by default. To turn it on::

    python -m gossip.curve keys/ --peers 4      # peer-<i>.key (public) + peer-<i>.key_secret
    # copy keys/ to every host: each peer needs every public key and its own secret key
    python -m gossip.launch CFG --run-dir DIR security.curve=true security.curve_keys=keys

Then every peer's inbox is a CURVE server that accepts only clients whose public key is one of
``peer-<i>.key`` (a ZAP handler in the peer's event loop), and every link to a neighbour is a
CURVE client that checks the neighbour's public key. ZeroMQ stamps each received frame with
the ZAP user id, here ``p<i>`` for the key of peer ``i``; the transport takes the sender from
that stamp and refuses a frame whose routing identity claims another peer (so a peer holding
its own valid key still cannot speak for another). Without CURVE the routing identity is
self-declared and any process that can reach a port can claim to be any peer.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

from gossip.cli import guarded
from gossip.config import Config
from gossip.errors import ConfigError
from gossip.observe.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Keys:
    peer_id: int
    public: dict[int, bytes]  # z85 public key of every peer
    secret: bytes             # z85 secret key of this peer


def create(directory: str | Path, peers: int) -> list[Path]:
    """Write a key pair per peer into ``directory`` (existing ones are kept)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    made = []
    for p in range(peers):
        if not (d / f"peer-{p}.key").exists():
            zmq.auth.create_certificates(d, f"peer-{p}")
            made.append(d / f"peer-{p}.key")
    return made


def load(cfg: Config, peer_id: int) -> Keys:
    """This peer's secret key and everybody's public key, from ``security.curve_keys``."""
    d = Path(cfg.security.curve_keys)
    public = {}
    try:
        for p in range(cfg.peers):
            key, _ = zmq.auth.load_certificate(d / f"peer-{p}.key")
            public[p] = key
        own, secret = zmq.auth.load_certificate(d / f"peer-{peer_id}.key_secret")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"security.curve_keys: {exc} (make keys with: python -m gossip.curve {d} "
                          f"--peers {cfg.peers})") from None
    if secret is None or own != public[peer_id]:
        raise ConfigError(f"security.curve_keys: {d}/peer-{peer_id}.key_secret does not match peer-{peer_id}.key")
    return Keys(peer_id, public, secret)


class _Allowlist(AsyncioAuthenticator):
    """ZAP handler: a client is allowed when its key is a peer's; its user id names that peer."""

    def __init__(self, ctx: zmq.Context, keys: Keys) -> None:
        super().__init__(ctx)
        self.ids = {key: p for p, key in keys.public.items()}

    def callback(self, domain: str, client_key: bytes) -> bool:
        allowed = client_key in self.ids
        if not allowed:
            log.warning("curve_refused", client_key=client_key.decode("ascii", "replace"))
        return allowed

    def curve_user_id(self, client_public_key: bytes) -> str:
        return f"p{self.ids[z85.encode(client_public_key)]}"


def secure_inbox(ctx: zmq.asyncio.Context, inbox: zmq.asyncio.Socket, keys: Keys) -> _Allowlist:
    """Make ``inbox`` (before bind) a CURVE server behind the allowlist; returns the running handler."""
    auth = _Allowlist(ctx, keys)
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=auth)
    inbox.curve_secretkey = keys.secret
    inbox.curve_publickey = keys.public[keys.peer_id]
    inbox.curve_server = True
    return auth


def secure_link(sock: zmq.asyncio.Socket, keys: Keys, neighbour: int) -> None:
    """Make a DEALER (before connect) a CURVE client that only talks to ``neighbour``'s key."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public[keys.peer_id]
    sock.curve_serverkey = keys.public[neighbour]


def authenticated_sender(frame: zmq.Frame) -> int | None:
    """The peer whose key sent ``frame`` (ZAP user id ``p<i>``), or None."""
    with contextlib.suppress(zmq.ZMQError, KeyError, UnicodeDecodeError):
        user = frame.get("User-Id")
        if isinstance(user, str) and user.startswith("p") and user[1:].isdigit():
            return int(user[1:])
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gossip.curve",
                                 description="Make CurveZMQ key pairs for a swarm (security.curve).")
    ap.add_argument("directory", help="where to write peer-<i>.key and peer-<i>.key_secret")
    ap.add_argument("--peers", type=int, required=True, help="how many peers")
    args = ap.parse_args(argv)

    def go() -> int:
        made = create(args.directory, args.peers)
        print(f"{len(made)} new key pairs in {args.directory} (public: peer-<i>.key; keep each "
              f"peer-<i>.key_secret on its own host only)")
        return 0

    return guarded(go)


if __name__ == "__main__":
    raise SystemExit(main())
