"""One swarm of tests/test_slow_links.py's 50 Mbit experiment, for repeated measurements (root).

    GOSSIP_DATA=../shared/data python tests/run_50mbit.py NAME [unshaped=1] [key=value ...]

Builds the test's network lab (3 namespaces, a bridge), puts the kernel ``tbf`` of 50 Mbit on
every peer's egress unless ``unshaped=1``, runs the test's swarm (3 epochs, fp32 at density 0.2,
a sync every batch) with the overrides into ``runs/50mbit/NAME`` and prints the mean accuracy,
the bytes sent, when the first ``adapt`` decision came, and each peer's controller summary.
The README's bandwidth section quotes runs of it, with the load beside them.
"""
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_slow_links as t  # noqa: E402
from netlab import lab_fixture  # noqa: E402

name = sys.argv[1]
extra = dict(a.split("=", 1) for a in sys.argv[2:])
unshaped = extra.pop("unshaped", "0") == "1"
out = Path("runs/50mbit") / name
gen = lab_fixture(t.PEERS)
lab = next(gen)
try:
    if not unshaped:
        for i in range(t.PEERS):
            lab.bottleneck(i, "50mbit", burst="64kb", latency="400ms")
    t0 = time.monotonic()
    res = t.run_swarm(lab, out, **{**t.LONGER, **extra})
    dt = time.monotonic() - t0
    mb = sum(r["bytes_sent"] for r in res.values()) / 1e6
    adapted = [e for i in range(t.PEERS) for e in t.events(out, i, "adapt")]
    first = min((e["ts"] for e in adapted), default=None)
    starts = [e["ts"] for i in range(t.PEERS) for e in t.events(out, i, "neighbours_met")]
    ep0 = [e.get("test_accuracy") for i in range(t.PEERS) for e in t.events(out, i, "epoch_end") if e.get("epoch") == 0]
    print(f"{name}: acc {t.mean_accuracy(res):.4f} {mb:.0f} MB {dt:.0f} s; adapt events {len(adapted)}, first after "
          f"{(first - min(starts)) if first and starts else None}; epoch0 {ep0}")
    for i in range(t.PEERS):
        s = (t.events(out, i, "adapt_summary") or [{}])[-1]
        print(f"  peer {i}: {res[i]['test_accuracy']:.4f} held {s.get('held_batches')} lowest {s.get('lowest_density')} "
              f"values {s.get('values')} gap {s.get('sync_gap')} changes {s.get('changes')} "
              f"stall-held {s.get('stalled_decisions')} worst stall {res[i]['adapt'].get('worst_stall_s')} s")
finally:
    with contextlib.suppress(StopIteration):
        next(gen)  # the fixture's teardown: the namespaces go
