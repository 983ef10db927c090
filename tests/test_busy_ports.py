"""The default ports on a host whose outgoing connections hold every ephemeral port.

Linux hands each outgoing TCP connection a local port from ``net.ipv4.ip_local_port_range``
(32768-60999 by default). A busy machine (browsers, package managers, a cluster's agents)
can hold any of those at any moment, and a peer that wants to listen on one of them fails.
The defaults (``topology.base_port`` 24000, ``dashboard.telemetry_port`` 24500, the dashboard
on 3000) lie below that range. Here, in a network namespace of its own (the range is per
namespace; shrunk to 1,000 ports so that holding all of them is cheap), a filler process holds
every ephemeral port with a real connection, and ``make demo``'s launch (configs/mnist_4peers.yaml,
smaller data) still runs to the end, while a swarm told to listen inside the range stops with
a one-line error naming the port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from netlab import netlab_or_skip

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RANGE = (32768, 33767)
FILLER = textwrap.dedent("""
    import resource, socket, sys
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 20999))  # below the range: the listener itself takes no ephemeral port
    srv.listen(4096)
    held = []
    while True:
        c = socket.socket()
        try:
            c.connect(("127.0.0.1", 20999))
        except OSError:  # EADDRNOTAVAIL: no ephemeral port left
            c.close()
            break
        held.append((c, srv.accept()[0]))
    print(len(held), flush=True)
    sys.stdin.read()  # hold them until the test closes our stdin
""")


def ns_run(ns: str, argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, **kw)


@pytest.fixture
def busy_namespace():
    netlab_or_skip()
    ns = f"glp{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    filler = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        ns_run(ns, ["sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={RANGE[0]} {RANGE[1]}"], check=True)
        filler = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", FILLER],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert filler.stdout is not None
        held = int(filler.stdout.readline())
        assert held >= RANGE[1] - RANGE[0] - 10  # (nearly) every ephemeral port is taken
        yield ns
    finally:
        if filler is not None:
            filler.stdin.close()
            filler.wait(10)
        subprocess.run(["ip", "netns", "del", ns], check=True)


def test_the_demo_runs_on_the_default_ports_while_outgoing_connections_hold_every_ephemeral_port(
        busy_namespace, data_root, tmp_path):
    ns = busy_namespace
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    probe = ns_run(ns, [sys.executable, "-c", "import socket; s = socket.socket(); s.connect(('127.0.0.1', 20999))"])
    assert probe.returncode != 0  # an outgoing connection finds no port: the range is really full
    small = ["data.limit_train=1200", "data.limit_test=400", "train.epochs=1", "device=cpu", f"data.root={data_root}"]
    done = ns_run(ns, [sys.executable, "-m", "gossip.launch", str(ROOT / "configs/mnist_4peers.yaml"),
                       "--run-dir", str(tmp_path / "demo"), "--fresh", *small], env=env, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "demo" / "result.json").read_text())
    assert result["finished_peers"] == 4 and not result["failed"]

    inside = ns_run(ns, [sys.executable, "-m", "gossip.launch", str(ROOT / "configs/mnist_4peers.yaml"),
                         "--run-dir", str(tmp_path / "inside"), "--no-dashboard", *small,
                         f"topology.base_port={RANGE[0] + 100}", "timeouts.startup_s=5"],
                    env=env, timeout=120)
    assert inside.returncode != 0
    text = inside.stdout + inside.stderr + "".join(
        p.read_text() for p in (tmp_path / "inside").glob("peer-*.log"))
    assert "Address already in use" in text and "change topology.base_port" in text
    assert "Traceback" not in text
