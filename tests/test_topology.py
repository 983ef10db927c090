import pytest

from gossip import config
from gossip.errors import ConfigError
from gossip.runtime import topology


def cfg(**kw):
    return config.load(None, [f"{k}={v}" for k, v in kw.items()])


@pytest.mark.parametrize("kind,peers,degree", [("full", 4, 3), ("ring", 8, 2), ("torus", 9, 4), ("kregular", 8, 4)])
def test_regular_kinds_have_expected_degree(kind, peers, degree):
    c = cfg(peers=peers, **{"topology.kind": kind, "topology.k": 4})
    for p in range(peers):
        assert len(topology.neighbours(c, p)) == degree
    topology.check_connected(c)


def test_neighbours_are_symmetric_for_random_k():
    c = cfg(peers=10, seed=3, **{"topology.kind": "random_k", "topology.k": 2})
    for p in range(10):
        for q in topology.neighbours(c, p):
            assert p in topology.neighbours(c, q)
            assert q != p


def test_random_k_depends_on_seed():
    a = topology.edges(cfg(peers=10, seed=1, **{"topology.kind": "random_k"}))
    b = topology.edges(cfg(peers=10, seed=2, **{"topology.kind": "random_k"}))
    assert a != b


def test_explicit_edges_and_disconnected_graph_is_refused():
    c = cfg(peers=4, **{"topology.kind": "edges", "topology.edges": "[[0, 1], [2, 3]]"})
    assert topology.neighbours(c, 0) == [1]
    with pytest.raises(ConfigError, match="not connected"):
        topology.check_connected(c)


def test_addresses_tcp_and_ipc():
    c = cfg(peers=3, **{"topology.base_port": 41000, "topology.hosts": "[a, b, c]"})
    assert topology.inbox_address(c, 2) == "tcp://c:41002"
    c = cfg(peers=3, **{"topology.transport": "ipc", "topology.ipc_dir": "/tmp/x"})
    assert topology.inbox_address(c, 1) == "ipc:///tmp/x/peer-1.sock"


def test_hosts_count_must_match_peers():
    with pytest.raises(ConfigError, match="topology.hosts"):
        cfg(peers=3, **{"topology.hosts": "[a, b]"})


def test_shortest_paths_relay_sends_every_copy_away_from_the_origin():
    ring = config.load(None, ["peers=8", "topology.kind=ring"])
    assert topology.hops_from(ring, 0) == [0, 1, 2, 3, 4, 3, 2, 1]
    assert topology.relay_targets(ring, 2) == {}  # one way in for everybody: a ring floods
    torus = config.load(None, ["peers=16", "topology.kind=torus"])
    copies = {p: 0 for p in range(16)}
    for p in range(16):  # every peer's copies of origin 0's update: one from each nearer neighbour
        for n in topology.relay_targets(torus, p).get(0, ()):
            copies[n] += 1
    hops = topology.hops_from(torus, 0)
    assert all(copies[p] >= 2 for p in range(16) if hops[p] >= 2)  # two ways in for every relayed copy
    # flooding: every peer but the origin relays to all neighbours but the sender and the origin
    flood = sum(len(topology.neighbours(torus, p)) - 1 - (0 in topology.neighbours(torus, p))
                for p in range(16) if p != 0)
    assert (sum(copies.values()), flood) == (28, 41)
