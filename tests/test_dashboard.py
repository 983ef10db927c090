"""Dashboard protocol over HTTP/websocket (aiohttp's test client) fed by real ZeroMQ telemetry."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fake_swarm import FakeSwarm, swarm_config
from ports import free_port_block

from gossip.config import Config
from gossip.observe import dashboard
from gossip.observe.dashboard import Dashboard, _Client

ROOT = Path(__file__).resolve().parent.parent


def run_with_client(cfg: Config, body: Callable[[TestClient, Dashboard], Awaitable[None]]) -> None:
    async def main() -> None:
        dash = Dashboard(cfg)
        async with TestClient(TestServer(dash.app(), host="127.0.0.1")) as client:
            await body(client, dash)

    asyncio.run(main())


async def receive_until(ws: aiohttp.ClientWebSocketResponse, state: dict[str, Any],
                        done: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Apply messages to ``state`` like the page does, until ``done(state)``; returns the messages."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while not done(state):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out; last state: {json.dumps(state)[:2000]}"
        msg = json.loads(await ws.receive_str(timeout=remaining))
        seen.append(msg)
        if msg["type"] == "snapshot":
            state.clear()
            state.update(msg)
        else:
            assert msg["type"] == "delta" and state, "a delta before the snapshot"
            state["peers"].update(msg.get("peers", {}))
            for key in ("links", "swarm", "summary"):
                if key in msg:
                    state[key] = msg[key]
    return seen


def states(state: dict[str, Any]) -> list[str]:
    return [state["peers"][str(i)]["state"] for i in range(len(state["peers"]))]


def test_snapshot_on_connect_lists_configured_peers_as_starting() -> None:
    cfg = swarm_config(4)

    async def body(client: TestClient, dash: Dashboard) -> None:
        async with client.ws_connect("/ws") as ws:
            first = json.loads(await ws.receive_str(timeout=5))
        assert first["type"] == "snapshot"
        assert first["config"]["peers"] == 4 and first["config"]["link_bandwidth"] == "100Mbps"
        assert states(first) == ["starting"] * 4
        assert first["links"] == [] and first["summary"] is None and first["swarm"]["cap_bps"] == 100e6

    run_with_client(cfg, body)


def test_deltas_follow_live_telemetry_and_a_dying_peer_goes_down() -> None:
    cfg = swarm_config(4)

    async def body(client: TestClient, dash: Dashboard) -> None:
        with FakeSwarm(cfg, rate_bps=2e6) as swarm:
            async with client.ws_connect("/ws") as ws:
                state: dict[str, Any] = {}
                # every link's rate window fills at its own pace on a loaded machine: wait for all 12
                msgs = await receive_until(ws, state, lambda s: bool(s) and states(s) == ["training"] * 4
                                           and s["swarm"]["bps"] > 12e6)
                assert msgs[0]["type"] == "snapshot" and any(m["type"] == "delta" for m in msgs)
                assert len(state["links"]) == 6  # full mesh of 4
                # 2 Mb/s on each of 12 directed links, give or take the sampling jitter
                assert 12e6 < state["swarm"]["bps"] < 36e6, state["swarm"]
                peer = state["peers"]["2"]
                assert peer["cpu_percent"] is not None and peer["rss_mb"] > 0 and peer["triggers"]["sync_interval"] >= 0

                swarm.kill(3)
                t_kill = time.monotonic()
                await receive_until(ws, state, lambda s: s["peers"]["3"]["state"] == "down")
                # down_after_s=1 plus one tick: the page learns within ~1.5 s
                assert time.monotonic() - t_kill < 1.0 + 3.0
                assert states(state)[:3] == ["training"] * 3
                assert all(link["down"] for link in state["links"] if 3 in (link["a"], link["b"]))

                for i in range(3):
                    swarm.finish(i)
                await receive_until(ws, state, lambda s: s["summary"] is not None)
                assert state["summary"]["peers_done"] == 3 and state["summary"]["peers_down"] == [3]

            # a late browser gets everything in one snapshot, including the summary and history
            async with client.ws_connect("/ws") as ws2:
                snap = json.loads(await ws2.receive_str(timeout=5))
            assert snap["type"] == "snapshot" and snap["summary"]["peers_done"] == 3
            assert states(snap) == ["done", "done", "done", "down"]
            assert snap["bandwidth"] and max(p[1] for p in snap["bandwidth"]) > 0

    run_with_client(cfg, body)


def rates_agree(snap: dict[str, Any]) -> bool:
    """The one-source rule: swarm.bps is the edges' sum and the chart's latest point, at one sample."""
    edges = sum(link["bps_ab"] + link["bps_ba"] for link in snap["links"])
    point = snap["bandwidth"][-1]
    return bool(snap["swarm"]["bps"] == edges == point[1] and snap["swarm"]["sample_ts"] == point[0])


def test_every_rate_comes_from_one_sample_in_the_feed_and_the_api() -> None:
    cfg = swarm_config(4)

    async def body(client: TestClient, dash: Dashboard) -> None:
        with FakeSwarm(cfg, rate_bps=2e6):
            async with client.ws_connect("/ws") as ws:
                state: dict[str, Any] = {}
                await receive_until(ws, state, lambda s: bool(s) and s["swarm"]["bps"] > 12e6)
                for _ in range(3):  # the page's view, sample after sample
                    msg: dict[str, Any] = {}
                    while "bandwidth" not in msg:
                        msg = json.loads(await ws.receive_str(timeout=5))
                    assert msg["swarm"]["bps"] == msg["bandwidth"][-1][1]
                    assert msg["swarm"]["sample_ts"] == msg["bandwidth"][-1][0]
                    edges = sum(link["bps_ab"] + link["bps_ba"] for link in msg.get("links", state["links"]))
                    state["links"] = msg.get("links", state["links"])
                    assert edges == msg["swarm"]["bps"]
            async with client.get("/api/snapshot") as resp:
                snap = await resp.json()
            assert snap["swarm"]["bps"] > 12e6 and rates_agree(snap)

    run_with_client(cfg, body)


def test_websocket_checks_origin_and_routes_check_host() -> None:
    cfg = swarm_config(2)

    async def body(client: TestClient, dash: Dashboard) -> None:
        own = f"http://127.0.0.1:{client.port}"
        async with client.ws_connect("/ws", headers={"Origin": own}) as ws:
            assert json.loads(await ws.receive_str(timeout=5))["type"] == "snapshot"
        for bad in ("http://evil.example", f"http://127.0.0.1:{client.port + 1}", "null"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await client.ws_connect("/ws", headers={"Origin": bad})
            assert err.value.status == 403
        resp = await client.get("/", headers={"Host": f"evil.example:{client.port}"})  # DNS rebinding
        assert resp.status == 403
        resp = await client.get("/", headers={"Host": f"localhost:{client.port}"})
        assert resp.status == 200

    run_with_client(cfg, body)


def test_websocket_feeds_are_capped_in_all_and_per_address_and_refusals_counted() -> None:
    cfg = swarm_config(2, "dashboard.max_clients=3", "dashboard.max_clients_per_address=2")

    async def body(client: TestClient, dash: Dashboard) -> None:
        a = await client.ws_connect("/ws")
        b = await client.ws_connect("/ws")
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:  # a third from 127.0.0.1
            await client.ws_connect("/ws")
        assert err.value.status == 503 and dash.refused["too_many_from_address"] == 1
        other = _Client(SimpleNamespace(), SimpleNamespace(transport=None, remote="10.0.0.9"))
        dash.clients.add(other)  # somebody else holds the last slot
        await b.close()
        for _ in range(50):
            if len(dash.clients) == 2:
                break
            await asyncio.sleep(0.02)
        c = await client.ws_connect("/ws")  # a slot of ours came free
        assert json.loads(await c.receive_str(timeout=5))["type"] == "snapshot"
        dash.clients.discard(other)
        dash.clients.add(_Client(SimpleNamespace(), SimpleNamespace(transport=None, remote="10.0.0.8")))
        for _ in range(20):
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await client.ws_connect("/ws")
        assert err.value.status == 503 and dash.refused["too_many_clients"] == 20
        assert json.loads(await a.receive_str(timeout=5))["type"] == "snapshot"  # the open feeds carry on
        await a.close()
        await c.close()

    run_with_client(cfg, body)


def test_page_and_assets_are_served_read_only_with_a_strict_policy() -> None:
    cfg = swarm_config(2)

    async def body(client: TestClient, dash: Dashboard) -> None:
        resp = await client.get("/")
        assert resp.status == 200
        html = await resp.text()
        assert "/static/app.js" in html and "http" not in html.replace("http-equiv", "").split("<body")[0]
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        for asset in ("/static/app.js", "/static/style.css"):
            r = await client.get(asset)
            assert r.status == 200 and not re.search(r"https?://(?!www\.w3\.org/2000/svg)", await r.text())
        snap = await client.get("/api/snapshot")
        assert (await snap.json())["type"] == "snapshot"
        for method in ("POST", "PUT", "DELETE"):
            assert (await client.request(method, "/")).status == 405
        assert (await client.get("/static/../gossip/config.py")).status in (403, 404)

    run_with_client(cfg, body)


def test_page_files_come_from_the_package_when_installed_else_from_the_checkout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert dashboard.web_dir() == ROOT / "web"  # editable install: gossip/_web does not exist
    (tmp_path / "_web").mkdir()
    monkeypatch.setattr(dashboard.importlib.resources, "files", lambda package: tmp_path)
    assert dashboard.web_dir() == ROOT / "web"  # an empty _web (no index.html) is not a page
    (tmp_path / "_web" / "index.html").write_text("<html></html>")
    assert dashboard.web_dir() == tmp_path / "_web"


def test_a_slow_client_is_resynced_instead_of_growing_a_backlog() -> None:
    async def body() -> None:
        client = _Client(None, SimpleNamespace(transport=None, remote="127.0.0.1"))  # type: ignore[arg-type]
        for i in range(100):
            client.offer(f"delta {i}")
        assert client.queue.qsize() <= 8 and client.resyncs > 0
        items = [client.queue.get_nowait() for _ in range(client.queue.qsize())]
        assert items[0] is dashboard._RESYNC  # the resync marker comes first
        assert all(isinstance(x, str) for x in items[1:])

    asyncio.run(body())


def test_resync_marker_is_sent_as_a_fresh_snapshot() -> None:
    cfg = swarm_config(2)

    async def body(client: TestClient, dash: Dashboard) -> None:
        async with client.ws_connect("/ws") as ws:
            assert json.loads(await ws.receive_str(timeout=5))["type"] == "snapshot"
            (server_side,) = dash.clients
            for i in range(50):  # as if the browser had stalled for 12 s of deltas
                server_side.offer(json.dumps({"type": "delta", "n": i}))
            queued = server_side.queue.qsize()
            msgs = [json.loads(await ws.receive_str(timeout=5)) for _ in range(queued)]
        assert msgs[-1]["type"] in ("snapshot", "delta")
        assert [m["type"] for m in msgs].count("snapshot") == 1
        assert all(m["n"] > 40 for m in msgs if m["type"] == "delta" and "n" in m)  # stale ones dropped

    run_with_client(cfg, body)


# ---------------------------------------------------------------- the command line


def _cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gossip.dashboard", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, **kw)


def test_cli_help_and_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    assert _cli("--help").returncode == 0
    bad = _cli("dashboard.port=http")
    assert bad.returncode == 2 and bad.stderr.startswith("error: dashboard.port") and "Traceback" not in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = _cli("--port", str(taken.getsockname()[1]), f"dashboard.telemetry_port={free_port_block(4)}")
    assert busy.returncode == 2 and "cannot listen" in busy.stderr and "Traceback" not in busy.stderr


def test_cli_serves_the_page_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(f"peers: 2\ndashboard:\n  telemetry_port: {free_port_block(2)}\n")
    proc = subprocess.Popen([sys.executable, "-m", "gossip.dashboard", "--config", str(cfg_file), "--port", "0"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("dashboard: http://127.0.0.1:"), line
        url = line.split()[1]

        async def fetch() -> tuple[int, str]:
            async with aiohttp.ClientSession() as s, s.get(url + "api/snapshot") as r:
                return r.status, await r.text()

        status, text = asyncio.run(fetch())
        assert status == 200 and json.loads(text)["config"]["peers"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
