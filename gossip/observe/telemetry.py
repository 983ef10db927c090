"""Peer telemetry: one JSON snapshot at a time on a ZeroMQ PUB socket.

Each peer binds ``tcp://<its host>:<dashboard.telemetry_port + peer_id>`` (on 127.0.0.1 only
under the default ``security.telemetry: loopback``: snapshots carry no key) and publishes a
snapshot every ``dashboard.interval_s`` and on state changes. Anyone who reaches the port may
subscribe (the dashboard does); nobody has to. The socket is tuned so that
telemetry can never slow training down:

* ``publish`` sends with ``zmq.NOBLOCK``; when the send queue is full the
  snapshot is dropped (the next one supersedes it anyway).
* ``SNDHWM`` is :data:`SEND_QUEUE_MESSAGES` per subscriber: a stalled observer
  costs at most a few KiB, never a growing backlog.
* ``LINGER`` is 0 while running; ``close`` waits at most ``flush_s`` so that
  the final ``state="done"`` snapshot reaches a connected dashboard.

Snapshot fields (the runtime fills them, :class:`TelemetryPublisher` stamps
``type``, ``peer_id``, ``ts`` and the resource fields) are listed with their
kinds in :data:`SNAPSHOT_FIELDS`; the dashboard keeps only those and drops
values of the wrong kind.

Observers (the dashboard, the launcher's progress lines, the experiment's recorder)
all read through one :class:`TelemetrySubscriber`: one SUB socket per peer, so a
snapshot is known to come from the endpoint of the peer it is filed under.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import psutil
import zmq
import zmq.asyncio

from gossip.config import Config
from gossip.observe.log import get_logger

log = get_logger(__name__)

SEND_QUEUE_MESSAGES = 4  # per subscriber; older snapshots are worthless once a newer one exists
RECEIVE_QUEUE_MESSAGES = 16  # per peer on the observer's side: a slow observer keeps only recent ones
MAX_TELEMETRY_BYTES = 1 << 20  # a bigger "snapshot" is hostile; ZeroMQ drops the connection
STATES = ("starting", "training", "syncing", "finishing", "done")

# field -> kind. Kinds: "int", "float" (null allowed), "str", "ids" (list of peer ids),
# "counts" ({name: int}), "links" ({"<nbr id>": {"bytes_sent": int, "bytes_received": int}}).
SNAPSHOT_FIELDS: dict[str, str] = {
    "type": "str",  # always "peer"
    "peer_id": "int",
    "ts": "float",  # publisher's wall clock, seconds since the epoch
    "state": "str",  # one of STATES
    "epoch": "int",  # current epoch, 0-based while training; == epochs when finished
    "epochs": "int",
    "step": "int",  # batches done in the current epoch
    "steps_per_epoch": "int",
    "loss": "float",  # recent training loss
    "test_accuracy": "float",  # 0..1, null until the first evaluation
    "bytes_sent": "int",  # wire bytes, all neighbours together
    "bytes_received": "int",
    "updates_sent": "int",
    "updates_applied": "int",
    "updates_rejected": "int",
    "rejected_by_reason": "counts",  # ProtocolError.reason -> n
    "triggers": "counts",  # "sync_interval" | "confidence" | "grad_norm" | "final" -> n
    "mb_per_epoch": "float",  # MB sent per epoch
    "compression_ratio": "float",  # dense fp32 bytes / wire bytes
    "bandwidth_cap_bps": "float",  # the link shaper's cap, bits/s; null when unlimited
    "neighbours": "ids",
    "neighbours_down": "ids",
    "links": "links",  # per neighbour byte counters; the dashboard derives link bandwidth from them
    "density": "float",  # the density updates are encoded at now (gossip.runtime.adapt), kept / eligible
    "backlog_s": "float",  # worst live link's unsent bytes / its measured throughput, seconds
    "sync_gap": "int",  # batches between syncs at least (1 unless the link is behind at min_density)
    "lead_wait_s": "float",  # seconds the thread waited for slower neighbours (communication.max_lead_steps)
    # added by TelemetryPublisher:
    "cpu_percent": "float",  # this process; can exceed 100 with several threads
    "rss_mb": "float",
    "gpu_util": "float",  # percent of the GPU this process runs on; null without one
    "gpu_mem_mb": "float",  # this process's memory on that GPU; null without one
}


def telemetry_endpoint(cfg: Config, peer_id: int) -> str:
    """Where peer ``peer_id`` publishes: its host from ``topology.hosts``, port ``telemetry_port + id``."""
    hosts = cfg.topology.hosts
    host = hosts[peer_id] if len(hosts) > 1 else hosts[0]
    return f"tcp://{host}:{cfg.dashboard.telemetry_port + peer_id}"


def bind_endpoint(cfg: Config, peer_id: int) -> str:
    """What the publisher binds: :func:`telemetry_endpoint`, or its port on 127.0.0.1 under
    ``security.telemetry: loopback`` (the default: telemetry has no key, so only this host reads it)."""
    if cfg.security.telemetry == "loopback":
        return f"tcp://127.0.0.1:{cfg.dashboard.telemetry_port + peer_id}"
    return telemetry_endpoint(cfg, peer_id)


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf (browsers reject them): replace with null, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return _finite(value.item())
    return value


class _Gpu:
    """GPU utilisation and memory of this process via NVML, or None; never raises."""

    def __init__(self, enabled: bool) -> None:
        self._nvml: Any = None
        self._tried = not enabled  # device="cpu": never touch NVML

    def _init(self) -> Any:
        self._tried = True
        try:
            import pynvml  # nvidia-ml-py; imported lazily: most CPU-only hosts lack libnvidia-ml

            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() == 0:
                return None
            self._nvml = pynvml
        except Exception:  # no driver, no library, no permission: report no GPU
            self._nvml = None
        return self._nvml

    def sample(self) -> tuple[float | None, float | None]:
        nvml = self._nvml if self._tried else self._init()
        if nvml is None:
            return None, None
        pid = os.getpid()
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid:
                        util = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                        used = proc.usedGpuMemory
                        mem = float(used) / 2**20 if isinstance(used, int) else None
                        return util, mem
        except Exception:  # NVML hiccups (driver reload, container limits) must not reach training
            return None, None
        return None, None  # this process has not touched a GPU (yet)

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None


class TelemetryPublisher:
    """Publishes peer snapshots; cheap, thread-safe and never blocking.

    ``publish`` costs one ``json.dumps`` plus a few psutil/NVML reads (about 0.1-0.2 ms
    on a busy 2-core host, i.e. < 0.05 % of a core at 2 snapshots/s); call it every
    ``cfg.dashboard.interval_s`` and on state changes. Telemetry is optional, so a port that
    cannot be bound (taken by another program) costs only the dashboard's view of this peer: it is
    logged once as ``telemetry_unavailable`` (warning) and ``publish`` does nothing.
    """

    def __init__(self, cfg: Config, peer_id: int) -> None:
        self.peer_id = peer_id
        self.endpoint = telemetry_endpoint(cfg, peer_id)
        self.dropped = 0  # snapshots not sent because the queue was full
        self._lock = threading.Lock()  # ZeroMQ sockets are not thread-safe
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only starts the measurement
        self._gpu = _Gpu(enabled=cfg.device != "cpu")
        self._ctx = zmq.Context(io_threads=1)
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, SEND_QUEUE_MESSAGES)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._closed = False
        self.bound = True
        try:
            self._sock.bind(bind_endpoint(cfg, peer_id))
        except zmq.ZMQError as exc:
            self._closed, self.bound = True, False
            self._sock.close(0)
            log.warning("telemetry_unavailable", endpoint=self.endpoint, error=exc.strerror,
                        hint="the peer trains on without telemetry; set dashboard.telemetry_port")
            return
        log.info("telemetry_bound", endpoint=self.endpoint)

    def resources(self) -> dict[str, float | None]:
        """CPU %, resident memory and GPU use of this process right now."""
        try:
            cpu: float | None = self._process.cpu_percent(None)
            rss: float | None = self._process.memory_info().rss / 2**20
        except psutil.Error:
            cpu = rss = None
        gpu_util, gpu_mem = self._gpu.sample()
        return {
            "cpu_percent": None if cpu is None else round(cpu, 1),
            "rss_mb": None if rss is None else round(rss, 1),
            "gpu_util": gpu_util,
            "gpu_mem_mb": None if gpu_mem is None else round(gpu_mem, 1),
        }

    def publish(self, snapshot: dict[str, Any]) -> None:
        """Send ``snapshot`` (plus type, peer_id, ts and resources); drop it if the queue is full."""
        message = {"type": "peer", "peer_id": self.peer_id, "ts": time.time(), **snapshot}
        message.update(self.resources())
        data = json.dumps(_finite(message), separators=(",", ":"), default=repr).encode()
        with self._lock:
            if self._closed:
                return
            try:
                self._sock.send(data, zmq.NOBLOCK)
            except zmq.Again:
                self.dropped += 1

    def close(self, flush_s: float = 0.25) -> None:
        """Close the socket, giving queued snapshots at most ``flush_s`` to leave. Idempotent."""
        with self._lock:
            if self._ctx.closed:
                return
            self._closed = True
            if not self._sock.closed:
                self._sock.setsockopt(zmq.LINGER, max(0, int(flush_s * 1000)))
                self._sock.close()
            self._ctx.term()
            self._gpu.close()

    def __enter__(self) -> TelemetryPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Received(NamedTuple):
    """One telemetry message: the peer whose endpoint sent it, the decoded JSON (None if not JSON), its size."""

    peer_id: int
    message: Any
    size: int


def decode(data: bytes) -> Any:
    """The JSON value in ``data``, or None when it is not JSON (or nested deep enough to hurt)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


class TelemetrySubscriber:
    """SUB-connects to every peer's telemetry endpoint; peers may come and go (ZeroMQ reconnects).

    ``poll(timeout_ms)`` (blocking sockets) returns what arrived, waiting at most ``timeout_ms``
    for the first message; with ``aio=True`` (asyncio sockets) use ``await receive()`` instead. ``secure(sock,
    peer_id)``, if given, is called on each peer's socket before it connects (e.g. to set CURVE
    keys: each peer has its own socket, hence its own server key). Use it as a context manager
    or call ``close``.
    """

    def __init__(self, cfg: Config, *, aio: bool = False,
                 secure: Callable[[zmq.Socket[Any], int], None] | None = None) -> None:
        self.ctx: zmq.Context[Any] = zmq.asyncio.Context() if aio else zmq.Context()
        self.sockets: list[zmq.Socket[Any]] = []
        for peer_id in range(cfg.peers):
            sock = self.ctx.socket(zmq.SUB)
            for opt, value in ((zmq.LINGER, 0), (zmq.RCVHWM, RECEIVE_QUEUE_MESSAGES),
                               (zmq.MAXMSGSIZE, MAX_TELEMETRY_BYTES),
                               (zmq.RECONNECT_IVL, 200), (zmq.RECONNECT_IVL_MAX, 0)):  # fmt: skip
                sock.setsockopt(opt, value)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            if secure is not None:
                secure(sock, peer_id)
            sock.connect(telemetry_endpoint(cfg, peer_id))
            self.sockets.append(sock)
        self._peer_of = {sock: peer_id for peer_id, sock in enumerate(self.sockets)}
        # Any: pyzmq's stubs type zmq.asyncio.Poller.poll as returning a list, not an awaitable
        self._poller: Any = zmq.asyncio.Poller() if aio else zmq.Poller()
        for sock in self.sockets:
            self._poller.register(sock, zmq.POLLIN)

    def poll(self, timeout_ms: int) -> list[Received]:
        """Everything queued now, after waiting at most ``timeout_ms`` for anything (blocking sockets)."""
        out: list[Received] = []
        for sock, _ in self._poller.poll(timeout_ms):
            while True:
                try:
                    data = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                out.append(Received(self._peer_of[sock], decode(data), len(data)))
        return out

    async def receive(self) -> list[Received]:
        """Wait for the next messages, one per peer that has any (``aio=True``)."""
        out: list[Received] = []
        for sock, _ in await self._poller.poll():
            data = await sock.recv()
            out.append(Received(self._peer_of[sock], decode(data), len(data)))
        return out

    def close(self) -> None:
        """Close every socket and the context; idempotent."""
        if self.ctx.closed:
            return
        for sock in self.sockets:
            sock.close(0)
        self.sockets = []
        self.ctx.term()

    def __enter__(self) -> TelemetrySubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
