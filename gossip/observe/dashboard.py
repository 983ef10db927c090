"""The live dashboard: a read-only observer of peer telemetry, served to a browser.

``python -m gossip.dashboard [--config CFG] [--host H] [--port P] [key=value ...]``
serves the page (``web/``, found by :func:`web_dir`) on ``http://127.0.0.1:3000/``
(``dashboard.host``/``dashboard.port``) and a websocket feed on ``/ws``. It SUB-connects
to every peer's telemetry endpoint named by the config
(:class:`gossip.observe.telemetry.TelemetrySubscriber`); ZeroMQ keeps reconnecting, so
peers may start before or after it, die and come back. Peers never talk to the
dashboard, so training is the same with or without it.

Feed: a ``snapshot`` message on connect, then ``delta`` messages at most every
:data:`TICK_S` (only when something changed; see :mod:`gossip.observe.swarmview`).

Tuning guide and safety:

* Slow browsers: each client has a queue of :data:`CLIENT_QUEUE` messages. When it
  is full the client's pending deltas are dropped and it gets a fresh snapshot
  instead; a send that takes longer than :data:`SEND_TIMEOUT_S` closes the client.
  The broadcast loop itself never waits for a client.
* The websocket refuses (403) an ``Origin`` that is not this dashboard's own
  ``http://host:port``; every route refuses a ``Host`` header naming another
  server (DNS rebinding) unless the dashboard listens on a wildcard address.
  Routes are GET-only; incoming websocket frames are ignored.
* At most ``dashboard.max_clients`` websocket feeds are open at once, and at most
  ``dashboard.max_clients_per_address`` from one client address; one more is refused with
  503 before the upgrade, counted in :attr:`Dashboard.refused` and logged as
  ``dashboard_client_refused`` at most once per :data:`REFUSE_LOG_S` (with the count since).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.resources
import ipaddress
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, web

from gossip.cli import guarded
from gossip.config import Config, load
from gossip.errors import ConfigError
from gossip.observe.log import configure, get_logger
from gossip.observe.swarmview import SwarmView
from gossip.observe.telemetry import TelemetrySubscriber

log = get_logger(__name__)


def web_dir() -> Path:
    """The page's files: ``gossip/_web`` in an installed wheel, else the source checkout's ``web/``."""
    packaged = importlib.resources.files("gossip") / "_web"  # copied there by setup.py's build hook
    if isinstance(packaged, Path) and (packaged / "index.html").is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "web"  # editable install or a plain checkout


WEB_DIR = web_dir()
TICK_S = 0.25  # delta cadence: the page is at most ~TICK_S + one telemetry interval behind
CLIENT_QUEUE = 8  # messages (~2 s of deltas) before a client is resynced with a snapshot
SEND_TIMEOUT_S = 5.0
REFUSE_LOG_S = 5.0  # a connection flood writes one log line per interval, not one per refusal
_RESYNC = object()  # queue marker: send a fresh snapshot here
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_WILDCARDS = ("0.0.0.0", "::", "")


class _Client:
    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.transport = request.transport
        self.address = request.remote or ""
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=CLIENT_QUEUE)
        self.resyncs = 0

    def offer(self, text: str) -> None:
        """Queue a delta without waiting; a full queue is replaced by one resync marker."""
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(_RESYNC)
            self.resyncs += 1


class Dashboard:
    """Telemetry collector + browser feed. ``app()`` is the aiohttp application."""

    def __init__(self, cfg: Config, host: str | None = None) -> None:
        self.cfg = cfg
        self.host = (host if host is not None else cfg.dashboard.host).lower()
        self.view = SwarmView(cfg)
        self.clients: set[_Client] = set()
        self.refused: dict[str, int] = {"too_many_clients": 0, "too_many_from_address": 0}
        self._refused_logged = (-REFUSE_LOG_S, 0)  # (when, total then)
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------ telemetry in
    async def _receive(self, sub: TelemetrySubscriber) -> None:
        while True:
            for got in await sub.receive():
                if not self.view.ingest(got.peer_id, got.message):
                    log.warning("telemetry_rejected", peer=got.peer_id, size=got.size)

    # ------------------------------------------------------------ browser out
    async def _broadcast(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            delta = self.view.tick()
            if delta is not None and self.clients:
                text = json.dumps(delta, separators=(",", ":"))
                for client in list(self.clients):
                    client.offer(text)

    def snapshot_text(self) -> str:
        return json.dumps(self.view.snapshot(), separators=(",", ":"))

    async def _write(self, client: _Client) -> None:
        while True:
            item = await client.queue.get()
            text = self.snapshot_text() if item is _RESYNC else item
            try:
                await asyncio.wait_for(client.ws.send_str(text), SEND_TIMEOUT_S)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                log.info("dashboard_client_dropped", resyncs=client.resyncs)
                if client.transport is not None:
                    client.transport.abort()  # a closing handshake could block as well
                return

    def _admit(self, address: str) -> None:
        """Refuse (503, counted) a feed over ``dashboard.max_clients`` or the per-address cap."""
        d = self.cfg.dashboard
        if len(self.clients) >= d.max_clients:
            reason = "too_many_clients"
        elif sum(c.address == address for c in self.clients) >= d.max_clients_per_address:
            reason = "too_many_from_address"
        else:
            return
        self.refused[reason] += 1
        now, (logged_at, logged_total) = asyncio.get_running_loop().time(), self._refused_logged
        total = sum(self.refused.values())
        if now - logged_at >= REFUSE_LOG_S:
            log.warning("dashboard_client_refused", reason=reason, address=address, refused=total - logged_total,
                        open=len(self.clients), max_clients=d.max_clients,
                        max_clients_per_address=d.max_clients_per_address)
            self._refused_logged = (now, total)
        raise web.HTTPServiceUnavailable(text=f"dashboard: {reason.replace('_', ' ')}")

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() != f"http://{request.host.lower()}":
            raise web.HTTPForbidden(text="websocket origin not allowed")
        self._admit(request.remote or "")
        ws = web.WebSocketResponse(heartbeat=15.0, max_msg_size=4096)
        client = _Client(ws, request)
        self.clients.add(client)  # before the first await: concurrent upgrades count one another
        writer: asyncio.Task[None] | None = None
        try:
            await ws.prepare(request)
            client.queue.put_nowait(_RESYNC)  # the snapshot is built when it is sent: never stale
            writer = asyncio.create_task(self._write(client))
            async for _ in ws:  # read-only feed: frames from the browser are ignored
                pass
        finally:
            self.clients.discard(client)
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
        return ws

    # ------------------------------------------------------------ http
    def _host_allowed(self, request: web.Request) -> bool:
        if self.host in _WILDCARDS:
            return True
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if not sockname:
            return True  # not a TCP socket (tests over unix sockets): nothing to rebind
        ip, port = str(sockname[0]), sockname[1]
        names = {self.host, ip, f"[{ip}]"}
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(ip).is_loopback:
                names |= {"localhost", "127.0.0.1", "[::1]"}
        return request.host.lower() in {f"{name}:{port}" for name in names}

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not self._host_allowed(request):
            raise web.HTTPForbidden(text="unexpected Host header")
        response = await handler(request)
        if not response.prepared:
            response.headers.update({
                "Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
            })  # fmt: skip
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB_DIR / "index.html")

    async def _api_snapshot(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=self.snapshot_text(), content_type="application/json")

    async def _lifecycle(self, app: web.Application) -> Any:
        sub = TelemetrySubscriber(self.cfg, aio=True)
        self._tasks = [asyncio.create_task(self._receive(sub)), asyncio.create_task(self._broadcast())]
        log.info("dashboard_started", peers=self.cfg.peers)
        yield
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in list(self.clients):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.ws.close(code=WSCloseCode.GOING_AWAY), 1.0)
        sub.close()

    def app(self) -> web.Application:
        if not (WEB_DIR / "index.html").is_file():
            raise ConfigError(f"dashboard: page not found at {WEB_DIR} (a broken install: reinstall gossip)")
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/api/snapshot", self._api_snapshot)
        app.router.add_static("/static/", WEB_DIR)
        app.cleanup_ctx.append(self._lifecycle)
        return app


async def serve(
    cfg: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    stop: asyncio.Event | None = None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until ``stop`` is set; ``ready(url)`` is called once listening (``port=0``: any free port)."""
    host = cfg.dashboard.host if host is None else host
    port = cfg.dashboard.port if port is None else port
    runner = web.AppRunner(Dashboard(cfg, host).app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio's strerror repeats the address
        raise ConfigError(f"dashboard.port: cannot listen on {host}:{port} ({reason})") from None
    bound = runner.addresses[0][1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound}/"
    log.info("dashboard_listening", url=url)
    if ready is not None:
        ready(url)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gossip.dashboard",
        description="Live swarm dashboard: observes peer telemetry and serves it to a browser.",
    )
    parser.add_argument("--config", help="swarm config (YAML); default: built-in defaults")
    parser.add_argument("--host", help="listen address (default dashboard.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default dashboard.port, 3000; 0: any)")
    parser.add_argument("--log", help="append JSON log lines to this file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)

    def go() -> int:
        cfg = load(args.config, args.overrides)
        configure(args.log)
        host = cfg.dashboard.host if args.host is None else args.host
        if host in _WILDCARDS or not host.startswith(("127.", "localhost", "::1")):
            print(f"warning: dashboard reachable from the network on {host}", file=sys.stderr)

        async def run() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await serve(cfg, host=host, port=args.port, stop=stop,
                        ready=lambda url: print(f"dashboard: {url}", file=sys.stderr, flush=True))  # fmt: skip

        asyncio.run(run())
        return 0

    return guarded(go)


if __name__ == "__main__":
    sys.exit(main())
