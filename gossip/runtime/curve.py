"""Authentication with CurveZMQ (on by default): encrypted links, a key allowlist, identity = key.

Every peer's inbox is a CURVE server that accepts only clients whose public key is one of
``peer-<i>.key`` (a ZAP handler in the peer's event loop), and every link to a neighbour is a
CURVE client that checks the neighbour's public key. ZeroMQ stamps each received frame with
the ZAP user id, here ``p<i>`` for the key of peer ``i``: that stamp is the sender, never the
routing identity a connection announces (a frame whose routing identity claims another peer
is refused as ``identity_taken``; connections never hand an identity over). A process that
binds a peer's port without that peer's secret key cannot complete its neighbours' handshakes
(``server_key_mismatch``, counted on each neighbour); a key not in the allowlist is refused by
ZAP (``unknown_key``). Refusals count in ``rejected_by_reason`` and are logged as
``security_refused`` (the 1st, 2nd, 4th, 8th... of each reason, with the count).

One host: ``python -m gossip.launch CFG --run-dir DIR`` makes a key pair per peer in
``DIR/keys`` (secret files mode 0600) unless ``security.curve_keys`` already holds them, and
gives that folder to its peers. Several hosts, step by step:

1. on one machine: ``python -m gossip.curve keys swarm-keys --peers N`` (``peer-<i>.key``
   public, ``peer-<i>.key_secret`` secret; existing pairs are kept);
2. copy every ``peer-<i>.key`` to every host, and ``peer-<i>.key_secret`` only to the host
   that runs peer ``i`` (keep it mode 0600), into the same folder, e.g. ``~/swarm-keys``;
3. set ``security.curve_keys: ~/swarm-keys`` (absolute, or relative to where peers start) in
   the shared config, or pass ``security.curve_keys=...`` to every ``python -m gossip.peer``;
4. start the peers as usual; each logs ``security_on`` with its keys folder.

Without keys a peer on loopback (or ipc) runs insecure with one ``security_off`` warning; on
any other address it refuses to start unless ``security.insecure: true`` (then anyone who can
reach a port can claim to be any peer). ``security.curve=false`` turns CURVE off explicitly,
under the same rule. Telemetry carries no key: it listens on 127.0.0.1 only unless
``security.telemetry: host`` (:mod:`gossip.observe.telemetry`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

from gossip.cli import guarded
from gossip.config import Config
from gossip.errors import ConfigError, PeerError
from gossip.observe.log import get_logger

log = get_logger(__name__)

OnRefused = Callable[[str, int | None, str], None]  # (reason, peer or None, detail)


@dataclass(frozen=True)
class Keys:
    peer_id: int
    public: dict[int, bytes]  # z85 public key of every peer
    secret: bytes             # z85 secret key of this peer


def create(directory: str | Path, peers: int) -> list[Path]:
    """Write a key pair per peer into ``directory`` (existing ones are kept); secrets are mode 0600."""
    d = Path(directory).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    made = []
    old = os.umask(0o077)  # pyzmq writes with the umask's mode: no moment where a secret is readable
    try:
        for p in range(peers):
            if not (d / f"peer-{p}.key").exists():
                zmq.auth.create_certificates(d, f"peer-{p}")
                made.append(d / f"peer-{p}.key")
                os.chmod(d / f"peer-{p}.key", 0o644)  # public
            secret = d / f"peer-{p}.key_secret"
            if secret.exists():
                os.chmod(secret, 0o600)
    finally:
        os.umask(old)
    return made


def keys_dir(cfg: Config) -> Path:
    return Path(cfg.security.curve_keys).expanduser()


def has_keys(cfg: Config, peer_id: int | None = None) -> bool:
    """Whether ``security.curve_keys`` holds every public key (and ``peer_id``'s secret key)."""
    d = keys_dir(cfg)
    wanted = [d / f"peer-{p}.key" for p in range(cfg.peers)]
    if peer_id is not None:
        wanted.append(d / f"peer-{peer_id}.key_secret")
    return all(f.is_file() for f in wanted)


def how_to_make(cfg: Config) -> str:
    return f"python -m gossip.curve keys {keys_dir(cfg)} --peers {cfg.peers}"


def load(cfg: Config, peer_id: int) -> Keys:
    """This peer's secret key and everybody's public key, from ``security.curve_keys``."""
    d = keys_dir(cfg)
    public = {}
    try:
        for p in range(cfg.peers):
            key, _ = zmq.auth.load_certificate(d / f"peer-{p}.key")
            public[p] = key
        own, secret = zmq.auth.load_certificate(d / f"peer-{peer_id}.key_secret")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"security.curve_keys: {exc} (make keys with: {how_to_make(cfg)})") from None
    if secret is None or own != public[peer_id]:
        raise ConfigError(f"security.curve_keys: {d}/peer-{peer_id}.key_secret does not match peer-{peer_id}.key")
    return Keys(peer_id, public, secret)


def is_loopback(address: str) -> bool:
    """``ipc://...`` or ``tcp://`` on a loopback host (127.0.0.0/8, ::1, localhost)."""
    if address.startswith("ipc://"):
        return True
    host = address.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def startup(cfg: Config, peer_id: int, address: str) -> Config:
    """The config this peer runs with, security-wise: CURVE when it has keys, else insecure only
    on loopback or with ``security.insecure`` (one ``security_off`` warning); else a one-line error."""
    sec = cfg.security
    if sec.curve and has_keys(cfg, peer_id):
        return cfg
    why = f"no keys in {keys_dir(cfg)}" if sec.curve else "security.curve=false"
    if not (is_loopback(address) or sec.insecure):
        raise PeerError(
            f"peer {peer_id} refuses to listen on {address} without keys ({why}): make them with "
            f"`{how_to_make(cfg)}`, copy the folder to every host and set security.curve_keys, "
            "or set security.insecure=true")
    log.warning("security_off", reason=why, address=address,
                hint=f"anyone who reaches {address} can claim to be any peer; make keys with {how_to_make(cfg)}")
    return dataclasses.replace(cfg, security=dataclasses.replace(sec, curve=False))


def launch_keys(cfg: Config, run_dir: Path) -> Config:
    """For ``gossip.launch``: ``cfg`` with keys, made in ``run_dir/keys`` unless ``security.curve_keys``
    already holds a full set (``security.curve=false``: unchanged)."""
    if not cfg.security.curve:
        return cfg
    if has_keys(cfg) and all(has_keys(cfg, p) for p in range(cfg.peers)):
        folder = keys_dir(cfg).resolve()
    else:
        folder = (run_dir / "keys").resolve()
        made = create(folder, cfg.peers)
        log.info("keys_made", directory=str(folder), new=len(made))
    return dataclasses.replace(cfg, security=dataclasses.replace(cfg.security, curve_keys=str(folder)))


class Refusals:
    """Counts security refusals by reason into ``counts``; logs ``security_refused`` at the 1st, 2nd,
    4th, 8th... of each reason (a flood of handshakes costs a few lines, not one per attempt)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self._lock = threading.Lock()  # ZAP runs in the loop, but cheap insurance

    def __call__(self, reason: str, peer: int | None, detail: str) -> None:
        with self._lock:
            n = self.counts[reason] = self.counts.get(reason, 0) + 1
        if n & (n - 1) == 0:
            log.warning("security_refused", reason=reason, peer=peer, count=n, detail=detail[:200])


class _Allowlist(AsyncioAuthenticator):
    """ZAP handler: a client is allowed when its key is a peer's; its user id names that peer."""

    def __init__(self, ctx: zmq.Context, keys: Keys, on_refused: OnRefused | None) -> None:
        super().__init__(ctx)
        self.ids = {key: p for p, key in keys.public.items()}
        self.on_refused = on_refused

    def callback(self, domain: str, client_key: bytes) -> bool:
        allowed = client_key in self.ids
        if not allowed and self.on_refused is not None:
            self.on_refused("unknown_key", None, f"client key {client_key.decode('ascii', 'replace')}")
        return allowed

    def curve_user_id(self, client_public_key: bytes) -> str:
        return f"p{self.ids[z85.encode(client_public_key)]}"


def secure_inbox(ctx: zmq.asyncio.Context, inbox: zmq.asyncio.Socket, keys: Keys,
                 on_refused: OnRefused | None = None) -> _Allowlist:
    """Make ``inbox`` (before bind) a CURVE server behind the allowlist; returns the running handler."""
    auth = _Allowlist(ctx, keys, on_refused)
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


async def recv_signed(inbox: zmq.asyncio.Socket, claimed: Callable[[bytes], int | None],
                      on_refused: OnRefused) -> tuple[int, list[bytes]]:
    """The next frames on a CURVE ``inbox`` with their sender: whose key signed them. Frames whose
    routing identity (``claimed`` parses it) names another peer are refused as ``identity_taken``."""
    while True:
        raw = await inbox.recv_multipart(copy=False)
        signed, says = authenticated_sender(raw[-1]), claimed(raw[0].bytes)
        if signed is None:  # cannot happen behind ZAP; refuse rather than trust a routing id
            on_refused("unauthenticated", says, "a frame without a ZAP user id")
        elif says is not None and says != signed:
            on_refused("identity_taken", signed, f"peer {signed}'s key announced routing identity p{says}")
        else:
            return signed, [f.bytes for f in raw]


# a link's CURVE handshake failed: the server at the neighbour's address does not hold the
# neighbour's secret key (a squatter on its port, or a peer without CURVE), or it refused our key
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


# on the inbox: a client that did not complete the handshake (no CURVE, a bad box); a key that
# ZAP refused is counted by the allowlist itself (unknown_key)
CLIENT_FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL


def client_failed(frames: list[bytes], on_refused: OnRefused) -> bool:
    """Count an inbox monitor event that is a failed client handshake (``unauthenticated``)."""
    event = struct.unpack("=H", frames[0][:2])[0]
    if event & CLIENT_FAILED:
        on_refused("unauthenticated", None, f"a client of {frames[1].decode(errors='replace')} "
                   "failed the handshake (no CURVE, or not the peers' protocol)")
    return bool(event & CLIENT_FAILED)


def handshake_failed(event: int, neighbour: int, address: str, on_refused: OnRefused) -> None:
    """Count a failed handshake of the link to ``neighbour`` (its monitor's ``event``)."""
    if event & zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        on_refused("our_key_refused", neighbour, f"{address} refused this peer's key")
    else:
        on_refused("server_key_mismatch", neighbour,
                   f"{address} did not prove it holds peer {neighbour}'s key (another process on its port?)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gossip.curve",
                                 description="Make CurveZMQ key pairs for a swarm (security.curve_keys).",
                                 epilog="example: python -m gossip.curve keys swarm-keys --peers 4 "
                                 "(the older form without 'keys' works too)")
    ap.add_argument("words", nargs="+", metavar="[keys] DIRECTORY",
                    help="where to write peer-<i>.key and peer-<i>.key_secret")
    ap.add_argument("--peers", type=int, required=True, help="how many peers")
    args = ap.parse_args(argv)
    if len(args.words) == 2 and args.words[0] == "keys":
        directory = args.words[1]
    elif len(args.words) == 1:
        directory = args.words[0]  # the old form: python -m gossip.curve DIR --peers N
    else:
        ap.error("expected: keys DIRECTORY --peers N")

    def go() -> int:
        if args.peers < 1:
            raise ConfigError("--peers: expected at least 1")
        made = create(directory, args.peers)
        print(f"{len(made)} new key pairs in {directory} (public: peer-<i>.key, for every host; secret: "
              f"peer-<i>.key_secret, only on the host of peer i)")
        return 0

    return guarded(go)


if __name__ == "__main__":
    raise SystemExit(main())
