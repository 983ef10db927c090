"""TelemetryPublisher over real ZeroMQ sockets: what it sends, that it never blocks, and its failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
import types

import pytest
import zmq
from ports import free_port_block

from gossip.config import load
from gossip.observe import telemetry
from gossip.observe.telemetry import (
    MAX_TELEMETRY_BYTES,
    SNAPSHOT_FIELDS,
    Received,
    TelemetryPublisher,
    TelemetrySubscriber,
    telemetry_endpoint,
)


def _cfg(*extra: str):
    return load(None, [f"dashboard.telemetry_port={free_port_block(4)}", "device=cpu", *extra])


def _subscriber(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


def _receive_one(pub: TelemetryPublisher, sub: zmq.Socket, snapshot: dict, timeout_s: float = 5.0) -> dict:
    """Publish until the subscription is live (ZeroMQ drops messages before the SUB has joined)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pub.publish(snapshot)
        if sub.poll(100):
            return json.loads(sub.recv())
    raise AssertionError("no telemetry received")


def test_endpoint_uses_each_peers_host_and_port_offset() -> None:
    cfg = load(None, ["peers=3", "topology.hosts=[10.0.0.1, 10.0.0.2, 10.0.0.3]", "dashboard.telemetry_port=50000"])
    assert telemetry_endpoint(cfg, 0) == "tcp://10.0.0.1:50000"
    assert telemetry_endpoint(cfg, 2) == "tcp://10.0.0.3:50002"
    one_host = load(None, ["peers=3", "dashboard.telemetry_port=50000"])
    assert telemetry_endpoint(one_host, 2) == "tcp://127.0.0.1:50002"


def test_publish_stamps_identity_and_resources_and_makes_json_strict() -> None:
    cfg = _cfg()
    with TelemetryPublisher(cfg, 1) as pub:
        sub = _subscriber(telemetry_endpoint(cfg, 1))
        scalar = types.SimpleNamespace(item=lambda: 0.25)  # like a numpy/torch scalar
        got = _receive_one(pub, sub, {"state": "training", "loss": float("nan"), "test_accuracy": scalar,
                                      "bandwidth_cap_bps": float("inf"), "links": {"0": {"bytes_sent": 7}}})
        sub.close()
    assert got["type"] == "peer" and got["peer_id"] == 1 and got["state"] == "training"
    assert abs(got["ts"] - time.time()) < 10
    assert got["loss"] is None and got["bandwidth_cap_bps"] is None  # NaN/inf are not JSON
    assert got["test_accuracy"] == 0.25
    assert got["links"] == {"0": {"bytes_sent": 7}}
    assert got["rss_mb"] > 1 and got["cpu_percent"] >= 0
    assert got["gpu_util"] is None and got["gpu_mem_mb"] is None  # device=cpu never asks NVML
    assert set(got) <= set(SNAPSHOT_FIELDS)


def test_publish_never_blocks_with_a_stalled_or_absent_subscriber() -> None:
    cfg = _cfg()
    big = {"state": "training", "links": {str(i): {"bytes_sent": i, "bytes_received": i} for i in range(200)}}
    with TelemetryPublisher(cfg, 0) as pub:
        t0 = time.perf_counter()
        for _ in range(200):  # nobody subscribed
            pub.publish(big)
        sub = _subscriber(telemetry_endpoint(cfg, 0))
        sub.setsockopt(zmq.RCVHWM, 1)
        _receive_one(pub, sub, big)
        for _ in range(1000):  # subscribed but never reading: queues fill, sends must not wait
            pub.publish(big)
        elapsed = time.perf_counter() - t0
        sub.close()
    assert elapsed < 15, f"1200 publishes took {elapsed:.1f} s"


def test_final_snapshot_survives_an_immediate_close() -> None:
    cfg = _cfg()
    pub = TelemetryPublisher(cfg, 2)
    sub = _subscriber(telemetry_endpoint(cfg, 2))
    _receive_one(pub, sub, {"state": "training"})
    links = {str(i): {"bytes_sent": i, "bytes_received": i} for i in range(5000)}  # ~250 KB in flight
    pub.publish({"state": "done", "links": links})
    pub.close()
    states = []
    while sub.poll(1000):
        states.append(json.loads(sub.recv())["state"])
    sub.close()
    assert states and states[-1] == "done"


def test_close_is_idempotent_and_publish_after_close_is_ignored() -> None:
    cfg = _cfg()
    pub = TelemetryPublisher(cfg, 0)
    pub.close()
    pub.close()
    pub.publish({"state": "done"})  # no exception, nothing sent
    TelemetryPublisher(cfg, 0).close()  # the port is free again


def test_a_port_in_use_degrades_to_a_warning_and_publish_does_nothing() -> None:
    cfg = _cfg()
    with TelemetryPublisher(cfg, 0) as first:
        second = TelemetryPublisher(cfg, 0)  # the port is taken: telemetry is optional, the peer goes on
        assert first.bound and not second.bound
        second.publish({"state": "training"})  # no exception, nothing sent
        second.close()
        second.close()
        assert second._ctx.closed


def test_gpu_sampling_tolerates_a_broken_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=boom))
    assert telemetry._Gpu(enabled=True).sample() == (None, None)


def test_gpu_sampling_reports_this_process_on_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    proc = types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=512 * 2**20)
    other = types.SimpleNamespace(pid=-1, usedGpuMemory=2**30)
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetComputeRunningProcesses=lambda h: [other] if h == 0 else [proc],
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=37 if h == 1 else 99),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpu = telemetry._Gpu(enabled=True)
    util, mem = gpu.sample()
    gpu.close()
    assert util == 37 and mem is not None and math.isclose(mem, 512)


# ---------------------------------------------------------------- the one subscriber


def _collect(sub: TelemetrySubscriber, pubs: list[TelemetryPublisher], want: int, timeout_s: float = 10.0
             ) -> list[Received]:
    """Publish from every publisher until ``want`` peers have been heard (the SUBs join late)."""
    got: list[Received] = []
    deadline = time.monotonic() + timeout_s
    while len({r.peer_id for r in got}) < want:
        assert time.monotonic() < deadline, f"heard only {sorted({r.peer_id for r in got})}"
        for pub in pubs:
            pub.publish({"state": "training", "step": pub.peer_id * 10})
        got += sub.poll(100)
    return got


def test_subscriber_hears_every_peer_and_files_snapshots_under_the_sending_endpoint() -> None:
    cfg = _cfg("peers=3")
    with TelemetryPublisher(cfg, 0) as p0, TelemetryPublisher(cfg, 2) as p2, TelemetrySubscriber(cfg) as sub:
        assert len(sub.sockets) == 3  # peer 1 is absent: its socket keeps reconnecting, nothing fails
        got = _collect(sub, [p0, p2], want=2)
    assert {r.peer_id for r in got} == {0, 2}
    for r in got:
        assert r.message["peer_id"] == r.peer_id and r.message["step"] == r.peer_id * 10
        assert r.size == len(json.dumps(r.message, separators=(",", ":")).encode())


def test_subscriber_decodes_garbage_as_none_and_drops_oversized_frames() -> None:
    cfg = _cfg("peers=1")
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(telemetry_endpoint(cfg, 0))
    try:
        with TelemetrySubscriber(cfg) as sub:
            got: list[Received] = []
            deadline = time.monotonic() + 10
            while not got:
                assert time.monotonic() < deadline, "nothing received"
                pub.send(b"\xffnot json")
                got = sub.poll(100)
            assert got[0] == Received(0, None, 9)
            assert telemetry.decode(b"[" * 100_000) is None  # nesting deep enough to hurt is not JSON
            pub.send(b"x" * (MAX_TELEMETRY_BYTES + 1))  # hostile: ZeroMQ drops it and the connection
            pub.send(b"{}")
            late = sub.poll(500)
            assert all(r.size <= MAX_TELEMETRY_BYTES for r in late)
    finally:
        pub.close(0)


def test_subscriber_poll_waits_at_most_its_timeout_and_close_is_idempotent() -> None:
    cfg = _cfg("peers=2")
    sub = TelemetrySubscriber(cfg)
    t0 = time.monotonic()
    assert sub.poll(200) == []
    assert 0.15 < time.monotonic() - t0 < 5
    sub.close()
    sub.close()


def test_subscriber_calls_the_secure_hook_on_each_peers_socket_before_connecting() -> None:
    cfg = _cfg("peers=3")
    seen: list[tuple[int, bytes]] = []

    def secure(sock: zmq.Socket, peer_id: int) -> None:
        seen.append((peer_id, sock.getsockopt(zmq.LAST_ENDPOINT)))

    with TelemetrySubscriber(cfg, secure=secure) as sub:
        assert [p for p, _ in seen] == [0, 1, 2] and all(ep == b"" for _, ep in seen)  # not connected yet
        assert sub.sockets[2].getsockopt(zmq.LAST_ENDPOINT).decode() == telemetry_endpoint(cfg, 2)


def test_subscriber_receives_on_asyncio_sockets() -> None:
    cfg = _cfg("peers=2")

    async def main() -> list[Received]:
        with TelemetryPublisher(cfg, 1) as pub, TelemetrySubscriber(cfg, aio=True) as sub:
            for _ in range(100):
                pub.publish({"state": "syncing"})
                with contextlib.suppress(asyncio.TimeoutError):
                    return await asyncio.wait_for(sub.receive(), 0.1)
        raise AssertionError("no telemetry received")

    (got,) = asyncio.run(main())
    assert got.peer_id == 1 and got.message["state"] == "syncing"
