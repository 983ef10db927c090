"""TelemetryPublisher over real ZeroMQ sockets: what it sends, that it never blocks, and its failures."""

from __future__ import annotations

import json
import math
import sys
import time
import types

import pytest
import zmq
from ports import free_port_block

from gossip.config import load
from gossip.errors import PeerError
from gossip.observe import telemetry
from gossip.observe.telemetry import SNAPSHOT_FIELDS, TelemetryPublisher, telemetry_endpoint


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


def test_port_in_use_is_a_peer_error_naming_the_setting() -> None:
    cfg = _cfg()
    with TelemetryPublisher(cfg, 0), pytest.raises(PeerError, match="dashboard.telemetry_port"):
        TelemetryPublisher(cfg, 0)


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
