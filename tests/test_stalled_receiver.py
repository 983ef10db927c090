"""A receiver that stalls is not a slow link (gossip.runtime.stall, gossip.runtime.adapt).

Three real peer processes on loopback, unshaped (10 Gbps), with updates heavy enough (the MNIST
CNN's 1.16 M parameters at fp32 and density 0.2, a sync every batch: ~1 MB per update) that a
receiver which stops reading backs up its neighbours' links within a second. Peer 2 is stopped
(SIGSTOP) for 2.5 s mid-run, the way a CPU-starved host stops a process. Its neighbours' links to
it fill and then drain at the pace at which it catches up, a throughput far below the link's; the
density must stay where it was (no ``adapt`` event: it is the receiver, not the link, and fewer
bytes per update would only lose precision), on the neighbours and on the stopped peer itself
(which wakes to a pipe full of its own sends), and nothing is lost.
"""

from __future__ import annotations

import time

import faultkit as fk
import pytest

pytestmark = pytest.mark.slow

HEAVY = {
    "peers": 3, "model.name": "mnist_cnn", "data.limit_train": 6000, "data.limit_test": 1000,
    "train.epochs": 2, "train.batch_size": 32, "train.lr": 0.05,
    "codec.density": 0.2, "codec.values": "fp32", "communication.sync_interval": 1,
    "communication.max_lead_steps": 20, "timeouts.silence_s": 10, "checkpoint.every_epochs": 0,
}
STOP_S = 2.5


def test_a_stopped_receiver_holds_the_syncs_and_keeps_the_density(data_root, tmp_path):
    cfg = fk.make_cfg(**HEAVY)
    _, procs = fk.start_swarm(tmp_path, cfg)
    try:
        fk.wait_event(tmp_path, 2, "epoch_end", timeout=180, epoch=0)
        fk.sigstop(procs[2])
        time.sleep(STOP_S)
        fk.sigcont(procs[2])
        codes = fk.wait_all(procs)
    finally:
        fk.kill_all(procs)
    assert codes == {0: 0, 1: 0, 2: 0}, [(tmp_path / f"peer-{i}.stderr").read_text()[-2000:] for i in range(3)]
    results = {i: fk.result(tmp_path, i) for i in range(3)}
    for i, r in results.items():
        print(f"peer {i}: {r['test_accuracy']:.4f} adapt {r['adapt']}")
    adapted = [(i, e.get("link"), e.get("why"), e.get("backlog_bytes"), e.get("throughput_mbps"))
               for i in range(3) for e in fk.events(tmp_path, i) if e.get("event") == "adapt"]
    assert adapted == [], adapted  # neither the neighbours nor the stopped peer took it for a slow link
    assert results[2]["adapt"]["worst_stall_s"] >= STOP_S * 0.8  # its own probe saw the stop
    for p, r in results.items():
        assert r["updates_lost"] == 0 and r["finish_reason"] == "all_delivered", (p, r["finish_reason"])
        for o, other in results.items():
            if o != p:
                assert r["applied_by_origin"].get(str(o)) == other["next_seq"], (p, o)
