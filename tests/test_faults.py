"""Churn and faults injected into real peer processes on loopback (settings: tests/faultkit.BASE).

Accuracy after a fault is compared with fault-free swarms of the same config and seed
(``faultkit.clean_runs``, run once per session): it must not fall more than 0.5 points below
the lowest of them (clean runs themselves differ by up to about 0.4 points, see faultkit).
What must hold is in each docstring. A peer "applied an update twice" if it folded in more
updates of an originator than that originator has used sequence numbers (``applied_by_origin``,
counted by the training thread after the node's (node_id, seq) de-duplication).
"""

from __future__ import annotations

import os
import signal
import socket
import time

import faultkit as fk
import pytest

from gossip.runtime import launch

pytestmark = pytest.mark.slow

TOLERANCE = 0.005  # 0.5 accuracy points


@pytest.fixture(scope="module")
def clean(data_root, tmp_path_factory):
    """The lowest mean accuracy of the clean runs."""
    return fk.clean_floor(tmp_path_factory.mktemp("clean"))


def assert_no_double_application(results):
    """Nobody folded in more updates of an originator than it has sequence numbers (0 .. next_seq-1)."""
    sent = {p: r["next_seq"] for p, r in results.items()}
    for p, r in results.items():
        for origin, n in r["applied_by_origin"].items():
            if int(origin) in sent:
                assert n <= sent[int(origin)], f"peer {p} folded {n} updates of {origin}, which used {sent[int(origin)]} seqs"


def test_kill9_one_of_four_the_others_finish(clean, tmp_path):
    """kill -9 a peer mid-epoch: the others mark it down, share out its shard from the next epoch
    (data.adopt_down_shards) and finish; accuracy within 0.5 points of clean. Ten epochs, not four:
    an epoch of BASE takes 0.5-2 s here, the others need silence_s (3 s) and a tick to mark it
    down, and there must be a next epoch to adopt the shard in."""
    cfg = fk.make_cfg(**{"train.epochs": 10})
    _, procs = fk.start_swarm(tmp_path, cfg)
    try:
        fk.wait_event(tmp_path, 3, "epoch_end", epoch=0)
        time.sleep(0.2)
        procs[3].send_signal(signal.SIGKILL)
        procs[3].wait()
        codes = fk.wait_all({p: procs[p] for p in range(3)})
    finally:
        fk.kill_all(procs)
    assert codes == {0: 0, 1: 0, 2: 0}
    results = {p: fk.result(tmp_path, p) for p in range(3)}
    for p in range(3):
        assert 3 in results[p]["peers_down"]
        fk.wait_event(tmp_path, p, "peer_down", timeout=1, peer=3)
    assert_no_double_application(results)
    for p in range(3):
        fk.wait_event(tmp_path, p, "shards_adopted", timeout=1, down=[3])
    assert fk.mean_accuracy(results) >= clean - TOLERANCE


def test_kill9_then_resume_rejoins_and_agrees(clean, tmp_path):
    """Restart the killed peer with --resume: it continues from its checkpoint without reusing a
    sequence number, rejoins, and ends within 0.5 points of the others (and they of clean)."""
    cfg = fk.make_cfg()
    path, procs = fk.start_swarm(tmp_path, cfg)
    try:
        standby, go = fk.standby_peer(tmp_path, path, 3, "--resume")
        fk.wait_ready(go)
        fk.wait_event(tmp_path, 3, "checkpoint_saved", epoch=1)
        time.sleep(1.0)
        procs[3].send_signal(signal.SIGKILL)
        procs[3].wait()
        go.touch()
        procs[3] = standby
        codes = fk.wait_all(procs)
    finally:
        fk.kill_all(procs)
    assert codes == dict.fromkeys(range(4), 0)
    resumed = fk.wait_event(tmp_path, 3, "resumed", timeout=1)
    assert resumed["epoch"] >= 1
    fk.wait_event(tmp_path, 3, "seq_gap_filled", timeout=1)
    results = {p: fk.result(tmp_path, p) for p in range(4)}
    assert_no_double_application(results)
    others = fk.mean_accuracy(results, [0, 1, 2])
    assert abs(results[3]["test_accuracy"] - others) <= TOLERANCE
    assert results[0]["applied_by_origin"]["3"] > 0


def test_late_joiner_catches_up_from_a_neighbour(clean, tmp_path):
    """A peer that starts after the others' first epoch loads a neighbour's state and position,
    then trains the rest; it ends within 0.5 points of the others."""
    cfg = fk.make_cfg(**{"timeouts.startup_s": 10})
    path, procs = fk.start_swarm(tmp_path, cfg, ids=[0, 1, 2])
    try:
        late, go = fk.standby_peer(tmp_path, path, 3)
        fk.wait_ready(go)
        fk.wait_event(tmp_path, 0, "epoch_end", epoch=0)
        go.touch()
        procs[3] = late
        codes = fk.wait_all(procs)
    finally:
        fk.kill_all(procs)
    assert codes == dict.fromkeys(range(4), 0)
    adopted = fk.wait_event(tmp_path, 3, "state_adopted", timeout=1)
    assert adopted["epoch"] >= 1 and adopted["source"] in (0, 1, 2)
    results = {p: fk.result(tmp_path, p) for p in range(4)}
    assert_no_double_application(results)
    assert results[3]["state_from"] in (0, 1, 2)
    others = fk.mean_accuracy(results, [0, 1, 2])
    assert abs(results[3]["test_accuracy"] - others) <= TOLERANCE


def test_sigstop_10s_nobody_blocks_past_the_timeout(clean, tmp_path):
    """SIGSTOP a peer for 10 s: the others mark it down within timeouts.silence_s and keep training;
    after SIGCONT everybody finishes and no update is applied twice."""
    cfg = fk.make_cfg()
    _, procs = fk.start_swarm(tmp_path, cfg)
    try:
        fk.wait_event(tmp_path, 2, "epoch_end", epoch=0)
        fk.sigstop(procs[2])
        stopped_at = time.time()
        time.sleep(10)
        fk.sigcont(procs[2])
        codes = fk.wait_all(procs)
    finally:
        fk.kill_all(procs)
    assert codes == dict.fromkeys(range(4), 0)
    silence, slack = cfg.timeouts.silence_s, 2.5  # + a heartbeat period and a loaded machine
    live = (0, 1, 3)
    # a peer's "all delivered" waits for every live peer's Done (its last update), not only its own
    last_done = max(fk.wait_event(tmp_path, p, "training_done", timeout=1)["ts"] for p in live)
    for p in live:
        down = fk.wait_event(tmp_path, p, "peer_down", timeout=1, peer=2)
        assert down["ts"] - stopped_at <= silence + slack
        delivered = fk.wait_event(tmp_path, p, "all_delivered", timeout=1)
        if last_done < stopped_at + 10:  # all finished while peer 2 was frozen: nobody waited for it
            assert delivered["ts"] - max(last_done, stopped_at) <= silence + slack, (p, delivered["ts"] - stopped_at)
    results = {p: fk.result(tmp_path, p) for p in range(4)}
    assert_no_double_application(results)


def test_lossy_link_drop_duplicate_reorder(clean, tmp_path):
    """10% of messages dropped, 10% duplicated, 10% reordered on every link: duplicates are
    dropped (none applied twice), dropped updates are asked for again (ResendRequest) and all
    arrive, nobody hangs, accuracy within 0.5 points of clean."""
    cfg = fk.make_cfg(**{"link.drop": 0.1, "link.duplicate": 0.1, "link.reorder": 0.1})
    _, procs = fk.start_swarm(tmp_path, cfg)
    codes = fk.wait_all(procs)
    assert codes == dict.fromkeys(range(4), 0)
    results = {p: fk.result(tmp_path, p) for p in range(4)}
    assert sum(r["duplicates"] for r in results.values()) > 0
    assert sum(r["resent"] for r in results.values()) > 0
    expected = sum(r["next_seq"] for r in results.values()) * (len(results) - 1)  # updates to receive
    # A resend can be lost too (each ask and answer crosses the same lossy link; 5 asks), so a
    # rare update is given up: measured 0 or 1 of ~1000. Without resends it was ~10%.
    assert sum(r["updates_lost"] for r in results.values()) <= 0.01 * expected
    for p, r in results.items():  # every update of every other peer was folded in, but the given-up ones
        for origin, n in r["applied_by_origin"].items():
            assert n >= results[int(origin)]["next_seq"] - r["updates_lost"], f"peer {p}: {n} updates of {origin}"
    assert_no_double_application(results)
    assert fk.mean_accuracy(results) >= clean - TOLERANCE


def test_graceful_stop_then_resume_the_whole_launch(clean, tmp_path):
    """SIGINT/SIGTERM every peer mid-epoch: each writes a checkpoint, closes its sockets and exits 0
    within 5 s; ``launch --resume`` then finishes the run within 0.5 points of clean."""
    cfg = fk.make_cfg()
    path, procs = fk.start_swarm(tmp_path, cfg)
    try:
        fk.wait_event(tmp_path, 0, "epoch_end", epoch=0)
        time.sleep(1.0)
        t0 = {}
        for p, proc in procs.items():
            t0[p] = time.monotonic()
            proc.send_signal(signal.SIGINT if p % 2 else signal.SIGTERM)
        for p, proc in procs.items():
            assert proc.wait(10) == 0
            assert time.monotonic() - t0[p] <= 5.0, f"peer {p} took {time.monotonic() - t0[p]:.1f} s to stop"
    finally:
        fk.kill_all(procs)
    for p in range(4):
        saved = fk.wait_event(tmp_path, p, "checkpoint_saved", timeout=1, reason="stop")
        assert os.path.exists(saved["path"])
        fk.wait_event(tmp_path, p, "transport_closed", timeout=1)
        with socket.socket() as s:  # nobody listens on the inbox port any more (TIME_WAIT is fine, as for ZeroMQ)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", cfg.topology.base_port + p))
            s.listen()
    result = launch.run(cfg, tmp_path, dashboard=False, progress=None, resume=True)
    assert result["failed"] == {} and result["finished_peers"] == 4
    for p in range(4):
        fk.wait_event(tmp_path, p, "resumed", timeout=1)
    assert result["accuracy"]["mean"] >= clean - TOLERANCE
