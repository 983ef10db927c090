"""End to end in headless Chromium (Debian's package), driven over its DevTools websocket.

Skipped when chromium is missing, unless GOSSIP_REQUIRE_BROWSER=1 (CI), which makes that a failure.
Screenshots land in each test's tmp_path; set GOSSIP_SCREENSHOT_DIR to also copy them there
(that is how docs/dashboard.png is made).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_swarm import FakeSwarm, swarm_config
from ports import free_port_block

from gossip.config import to_dict

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
WIDTH, HEIGHT = 1440, 900

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SWARM_STATE_JS = """(() => {
  if (!document.body || !document.getElementById('topology')) return null;  // still loading
  const nodes = [...document.querySelectorAll('#topology .node')];
  const edges = [...document.querySelectorAll('#topology .edge')];
  return {
    connected: document.body.dataset.connected === 'true',
    nodes: nodes.length,
    training: nodes.filter((n) => n.dataset.state === 'training').length,
    states: nodes.map((n) => n.dataset.state),
    edgeBps: edges.reduce((sum, e) => sum + Number(e.dataset.bps || 0), 0),
    headerTraining: Number(document.body.dataset.peersTraining),
    cards: document.querySelectorAll('#peers .peer').length,
    finished: document.body.dataset.finished === 'true',
    foreign: performance.getEntriesByType('resource').map((e) => e.name)
      .filter((u) => !u.startsWith(location.origin + '/')),
  };
})()"""


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("GOSSIP_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium not found (apt-get install chromium) and GOSSIP_REQUIRE_BROWSER=1")
        pytest.skip("chromium not installed")
    return CHROMIUM


class Browser:
    """One headless Chromium with a page, commanded over the DevTools protocol."""

    def __init__(self, binary: str, tmp_path: Path) -> None:
        profile = tmp_path / "chromium-profile"
        (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a reused profile's stale port
        self.log = (tmp_path / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1",
             f"--window-size={WIDTH},{HEIGHT}", f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.port_file = profile / "DevToolsActivePort"
        self.events: list[dict[str, Any]] = []
        self._id = 0

    async def start(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 60
        pages: list[dict[str, Any]] = []
        while not pages:
            assert self.proc.poll() is None, "chromium exited; see chromium.log"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
            try:  # the port file can appear a moment before the port accepts connections
                port = int(self.port_file.read_text().split()[0])
                async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    pages = [t for t in await resp.json(content_type=None) if t["type"] == "page"]
            except (OSError, IndexError, ValueError, aiohttp.ClientError):
                continue
        self.ws = await session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        for domain in ("Page", "Runtime", "Log"):
            await self.cmd(f"{domain}.enable")

    async def cmd(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        await self.ws.send_str(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.receive_str(timeout=60))
            if msg.get("id") == self._id:
                assert "error" not in msg, msg
                return msg["result"]  # type: ignore[no-any-return]
            self.events.append(msg)

    async def evaluate(self, expression: str) -> Any:
        result = await self.cmd("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def wait_for(self, expression: str, ok: Any, timeout_s: float,
                       alive: Callable[[], None] = lambda: None) -> dict[str, Any]:
        """Poll ``expression`` in the page until ``ok(value)``; ``alive()`` may fail the wait early."""
        deadline = time.monotonic() + timeout_s
        value: dict[str, Any] = {}
        while time.monotonic() < deadline:
            alive()
            value = await self.evaluate(expression)
            if value and ok(value):
                return value
            await asyncio.sleep(0.2)
        raise AssertionError(f"page never got there; last seen: {value}")

    async def screenshot(self, path: Path) -> bytes:
        metrics = await self.cmd("Page.getLayoutMetrics")
        height = max(HEIGHT, int(metrics["cssContentSize"]["height"]))
        await self.cmd("Emulation.setDeviceMetricsOverride", width=WIDTH, height=height, deviceScaleFactor=1,
                       mobile=False)
        await asyncio.sleep(0.3)  # one frame for the canvases to redraw at the new size
        shot = base64.b64decode((await self.cmd("Page.captureScreenshot", format="png"))["data"])
        path.write_bytes(shot)
        if os.environ.get("GOSSIP_SCREENSHOT_DIR"):
            shutil.copy(path, Path(os.environ["GOSSIP_SCREENSHOT_DIR"]) / path.name)
        return shot

    def page_errors(self) -> list[str]:
        errors = []
        for ev in self.events:
            if ev.get("method") == "Runtime.exceptionThrown":
                errors.append(json.dumps(ev["params"]["exceptionDetails"])[:500])
            elif ev.get("method") == "Log.entryAdded" and ev["params"]["entry"]["level"] == "error":
                errors.append(ev["params"]["entry"]["text"])
        return errors

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def start_dashboard(cfg_file: Path, tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "gossip.dashboard", "--config", str(cfg_file), "--port", "0",
                             "--log", str(tmp_path / "dashboard.jsonl")],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.startswith("dashboard: http://"), line
    return proc, line.split()[1]


RATES_JS = """(() => ({
  ts: document.body.dataset.swarmTs, bps: Number(document.body.dataset.swarmBps),
  header: document.getElementById('swarm-bps').textContent,
  chartTs: document.body.dataset.chartTs, chartBps: Number(document.body.dataset.chartBps),
  edges: [...document.querySelectorAll('#topology .edge')].map((e) => Number(e.dataset.bps)),
  labels: [...document.querySelectorAll('#topology .edge-label')].map((e) => e.textContent),
}))()"""
PREFIX = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def parse_rate(text: str) -> float:
    value, unit = text.split()
    assert unit.endswith("b/s"), text
    return float(value) * PREFIX[unit[:-3]]


async def rates_match_the_snapshot(browser: Browser, session: aiohttp.ClientSession, url: str) -> None:
    """Header, edge labels and chart show the figure /api/snapshot gives for the same sample."""
    deadline = time.monotonic() + 20
    while True:
        async with session.get(url + "api/snapshot") as resp:
            snap = await resp.json()
        page = await browser.evaluate(RATES_JS)
        swarm = snap["swarm"]
        if swarm["sample_ts"] is not None and swarm["bps"] > 0 and page["ts"] == str(swarm["sample_ts"]):
            break  # the page shows the same sample as the API (they advance once a second)
        assert time.monotonic() < deadline, f"page never showed the API's sample: {page} vs {swarm}"
        await asyncio.sleep(0.05)
    assert page["bps"] == swarm["bps"] == sum(page["edges"]) == page["chartBps"]
    assert page["chartTs"] == page["ts"]
    assert abs(parse_rate(page["header"]) - swarm["bps"]) <= 0.005 * swarm["bps"], page["header"]
    labelled = sum(parse_rate(t) for t in page["labels"])  # 3 significant digits per label
    assert abs(labelled - swarm["bps"]) <= 0.005 * swarm["bps"], page["labels"]


def check_png(shot: bytes) -> None:
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(shot[16:20], "big"), int.from_bytes(shot[20:24], "big")
    assert width == WIDTH and height >= HEIGHT and len(shot) > 20_000


def test_page_shows_a_live_fake_swarm(chromium: str, tmp_path: Path) -> None:
    import yaml

    cfg = swarm_config(4)
    cfg_file = tmp_path / "swarm.yaml"
    cfg_file.write_text(yaml.safe_dump(to_dict(cfg)))
    dashboard, url = start_dashboard(cfg_file, tmp_path)
    browser = Browser(chromium, tmp_path)

    async def drive() -> None:
        async with aiohttp.ClientSession() as session:
            await browser.start(session)
            await browser.cmd("Page.navigate", url=url)
            first = await browser.wait_for(SWARM_STATE_JS, lambda v: v["connected"] and v["nodes"] == 4, 30)
            assert first["training"] == 0 and first["states"] == ["starting"] * 4  # before any telemetry
            with FakeSwarm(cfg, rate_bps=3e6) as swarm:
                live = await browser.wait_for(
                    SWARM_STATE_JS, lambda v: v["training"] == 4 and v["edgeBps"] > 0 and v["headerTraining"] == 4, 30)
                assert live["cards"] == 4 and live["foreign"] == []
                await rates_match_the_snapshot(browser, session, url)
                await browser.wait_for("document.querySelectorAll('#acc-chart').length", bool, 5)
                await asyncio.sleep(3)  # a few chart points and an evaluation for a useful picture
                check_png(await browser.screenshot(tmp_path / "dashboard-fake.png"))
                swarm.kill(3)
                down = await browser.wait_for(SWARM_STATE_JS, lambda v: v["states"][3] == "down", 10)
                assert down["training"] == 3
                for i in range(3):
                    swarm.finish(i)
                await browser.wait_for(SWARM_STATE_JS, lambda v: v["finished"], 10)
                assert not await browser.evaluate("document.getElementById('summary').hidden")
            assert browser.page_errors() == []

    try:
        asyncio.run(drive())
    finally:
        browser.close()
        dashboard.send_signal(signal.SIGTERM)
        assert dashboard.wait(10) == 0


RUNTIME = ("gossip.runtime.launch", "gossip.peer", "gossip.runtime.node", "gossip.protocol.wire", "gossip.protocol.codec", "gossip.training.trainer")


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in RUNTIME), reason="runtime not complete yet")
def test_page_shows_a_real_four_peer_swarm(chromium: str, tmp_path: Path) -> None:
    if not os.environ.get("GOSSIP_DATA"):
        pytest.skip("GOSSIP_DATA is not set")
    port, base, telemetry = free_port_block(1), free_port_block(8), free_port_block(4)
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "gossip.launch", "--run-dir", str(run_dir), "configs/mnist_4peers.yaml",
         "data.limit_train=4000", "data.limit_test=1000", "train.epochs=1", "device=cpu",
         f"dashboard.port={port}", f"topology.base_port={base}", f"dashboard.telemetry_port={telemetry}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp_path / "launch.log").open("w"), start_new_session=True,
    )  # fmt: skip
    browser = Browser(chromium, tmp_path)
    url = f"http://127.0.0.1:{port}/"

    def launcher_alive() -> None:
        assert launcher.poll() is None, "launcher ended early:\n" + (tmp_path / "launch.log").read_text()[-3000:]

    async def drive() -> None:
        async with aiohttp.ClientSession() as session:
            await browser.start(session)
            deadline = time.monotonic() + 60
            while True:  # the launcher starts the dashboard alongside the peers
                try:
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                launcher_alive()
                assert time.monotonic() < deadline, "dashboard never came up"
                await asyncio.sleep(0.2)
            await browser.cmd("Page.navigate", url=url)
            live = await browser.wait_for(
                SWARM_STATE_JS, lambda v: v["training"] == 4 and v["edgeBps"] > 0, 180, alive=launcher_alive)
            assert live["nodes"] == 4 and live["foreign"] == []
            # heartbeats alone make the bandwidth non-zero; wait for gradient updates on the edges too
            await browser.wait_for(SWARM_STATE_JS, lambda v: v["edgeBps"] > 10_000, 120, alive=launcher_alive)
            check_png(await browser.screenshot(tmp_path / "dashboard.png"))
            assert browser.page_errors() == []

    try:
        asyncio.run(drive())
        assert launcher.wait(300) == 0, (tmp_path / "launch.log").read_text()[-3000:]
        result = json.loads((run_dir / "result.json").read_text())
        assert result["finished_peers"] == 4
    finally:
        browser.close()
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGINT)
            try:
                launcher.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(launcher.pid, signal.SIGKILL)
