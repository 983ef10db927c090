"""Who talks to whom: neighbour lists and socket addresses from the config.

Kinds (``topology.kind``):

* ``full``      every peer is a neighbour of every other (the default; fine up to ~8 peers).
* ``ring``      peer i talks to i-1 and i+1.
* ``torus``     a 2-D grid with wrap-around, as square as the peer count allows.
* ``kregular``  a circulant graph: i talks to i±1 … i±k/2 (k rounded up to even).
* ``random_k``  each peer draws k random others (seeded by ``seed``), made symmetric.
* ``edges``     an explicit undirected edge list ``[[0, 1], [1, 2], ...]``.

Every kind is symmetric (if a hears b, b hears a). Updates reach non-neighbours by relay,
so any connected graph works; :func:`check_connected` refuses one that is not.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from gossip.config import Config
from gossip.errors import ConfigError


def _grid(n: int) -> tuple[int, int]:
    rows = int(math.isqrt(n))
    while n % rows:
        rows -= 1
    return rows, n // rows


def edges(cfg: Config) -> set[tuple[int, int]]:
    """The undirected edges as ``(low, high)`` pairs."""
    n, kind = cfg.peers, cfg.topology.kind
    out: set[tuple[int, int]] = set()

    def add(a: int, b: int) -> None:
        if a != b:
            out.add((min(a, b), max(a, b)))

    if kind == "full":
        for a in range(n):
            for b in range(a + 1, n):
                add(a, b)
    elif kind == "ring":
        for a in range(n):
            add(a, (a + 1) % n)
    elif kind == "torus":
        rows, cols = _grid(n)
        for a in range(n):
            r, c = divmod(a, cols)
            add(a, r * cols + (c + 1) % cols)
            add(a, ((r + 1) % rows) * cols + c)
    elif kind == "kregular":
        for a in range(n):
            for off in range(1, (cfg.topology.k + 1) // 2 + 1):
                add(a, (a + off) % n)
    elif kind == "random_k":
        rng = random.Random(cfg.seed)
        k = min(cfg.topology.k, n - 1)
        for a in range(n):
            for b in rng.sample([p for p in range(n) if p != a], k):
                add(a, b)
    elif kind == "edges":
        for a, b in cfg.topology.edges:
            add(a, b)
    return out


def neighbours(cfg: Config, peer_id: int) -> list[int]:
    """Sorted neighbour ids of ``peer_id``."""
    return sorted({b if a == peer_id else a for a, b in edges(cfg) if peer_id in (a, b)})


def hops_from(cfg: Config, origin: int) -> list[int]:
    """Hops from ``origin`` to every peer (breadth-first; -1: unreachable)."""
    adj: dict[int, set[int]] = {p: set() for p in range(cfg.peers)}
    for a, b in edges(cfg):
        adj[a].add(b)
        adj[b].add(a)
    hops = [-1] * cfg.peers
    hops[origin], frontier = 0, [origin]
    while frontier:
        nxt = []
        for p in frontier:
            for nb in adj[p]:
                if hops[nb] < 0:
                    hops[nb] = hops[p] + 1
                    nxt.append(nb)
        frontier = nxt
    return hops


def relay_targets(cfg: Config, peer_id: int) -> dict[int, tuple[int, ...]]:
    """For each origin, the neighbours of ``peer_id`` farther from it than ``peer_id`` is: where
    ``topology.relay: shortest_paths`` forwards that origin's updates.

    An origin is left out (its updates flood) when some peer two or more hops from it would have
    only one nearer neighbour: one lost or dead relay would cut it off, where flooding still
    brings a copy the long way round (a ring is such a graph for every origin).
    """
    adj = {p: neighbours(cfg, p) for p in range(cfg.peers)}
    out = {}
    for origin in range(cfg.peers):
        if origin == peer_id:
            continue
        hops = hops_from(cfg, origin)
        nearer = [sum(hops[n] == hops[p] - 1 for n in adj[p]) for p in range(cfg.peers)]
        if all(nearer[p] >= 2 for p in range(cfg.peers) if hops[p] >= 2):
            out[origin] = tuple(n for n in adj[peer_id] if hops[n] > hops[peer_id])
    return out


def check_connected(cfg: Config) -> None:
    """Raise ConfigError when some peer cannot reach another even through relays."""
    if cfg.peers == 1:
        return
    adj: dict[int, set[int]] = {p: set() for p in range(cfg.peers)}
    for a, b in edges(cfg):
        adj[a].add(b)
        adj[b].add(a)
    seen, todo = {0}, [0]
    while todo:
        for nb in adj[todo.pop()] - seen:
            seen.add(nb)
            todo.append(nb)
    if len(seen) != cfg.peers:
        missing = sorted(set(range(cfg.peers)) - seen)
        raise ConfigError(f"topology: peers {missing} are unreachable from peer 0 (graph not connected)")


def host(cfg: Config, peer_id: int) -> str:
    hosts = cfg.topology.hosts
    return hosts[peer_id] if len(hosts) > 1 else hosts[0]


def inbox_address(cfg: Config, peer_id: int) -> str:
    """Where ``peer_id`` receives: ``tcp://host:base_port+id`` or ``ipc://ipc_dir/peer-id.sock``.

    The same string is bound by the peer and connected to by its neighbours, so a
    multi-host config simply names each peer's machine in ``topology.hosts``.
    """
    if cfg.topology.transport == "ipc":
        return f"ipc://{Path(cfg.topology.ipc_dir) / f'peer-{peer_id}.sock'}"
    return f"tcp://{host(cfg, peer_id)}:{cfg.topology.base_port + peer_id}"
