"""SwarmView: peer states, link bandwidth, deltas and the run summary, from plain snapshot dicts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.config import load
from gossip.observe.swarmview import SwarmView, clean_snapshot
from gossip.observe.telemetry import SNAPSHOT_FIELDS


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _view(peers: int = 3, *extra: str) -> tuple[SwarmView, Clock]:
    clock = Clock()
    cfg = load(None, [f"peers={peers}", "dashboard.down_after_s=3", "link.bandwidth=100Mbps", *extra])
    return SwarmView(cfg, clock=clock), clock


def _snap(peer: int, ts: float, sent: dict[int, int] | None = None, **fields: Any) -> dict[str, Any]:
    sent = sent or {}
    return {"type": "peer", "peer_id": peer, "ts": ts, "state": "training", "neighbours": sorted(sent),
            "links": {str(n): {"bytes_sent": b, "bytes_received": 0} for n, b in sent.items()}, **fields}


def test_clean_snapshot_keeps_known_well_typed_fields_only() -> None:
    got = clean_snapshot({
        "type": "peer", "peer_id": 1, "state": "training", "loss": float("nan"), "epoch": True,
        "step": 3, "test_accuracy": None, "triggers": {"confidence": 2}, "rejected_by_reason": {"x": "many"},
        "neighbours": [0, "2"], "links": {"0": {"bytes_sent": 5, "dropped": 1}}, "evil": "<script>",
        "cpu_percent": 12.5,
    })  # fmt: skip
    assert got == {"type": "peer", "peer_id": 1, "state": "training", "step": 3, "test_accuracy": None,
                   "triggers": {"confidence": 2}, "links": {"0": {"bytes_sent": 5, "bytes_received": 0}},
                   "cpu_percent": 12.5}
    assert clean_snapshot({"type": "peer", "state": "hacking"}) == {"type": "peer"}
    assert clean_snapshot([1, 2]) is None and clean_snapshot({"type": "other"}) is None


def test_states_starting_then_reported_then_down_after_silence_but_done_stays_done() -> None:
    view, clock = _view()
    assert [p["state"] for p in view.snapshot()["peers"].values()] == ["starting"] * 3
    view.ingest(0, _snap(0, 1.0))
    view.ingest(1, _snap(1, 1.0, state="done"))
    states = {k: p["state"] for k, p in view.snapshot()["peers"].items()}
    assert states == {"0": "training", "1": "done", "2": "starting"}
    clock.now += 3.5
    states = {k: p["state"] for k, p in view.snapshot()["peers"].items()}
    assert states == {"0": "down", "1": "done", "2": "starting"}
    view.ingest(0, _snap(0, 5.0))  # it came back
    assert view.snapshot()["peers"]["0"]["state"] == "training"


def test_messages_from_the_wrong_peer_or_malformed_are_rejected() -> None:
    view, _ = _view()
    assert not view.ingest(0, _snap(1, 1.0))  # endpoint 0 cannot speak for peer 1
    assert not view.ingest(7, _snap(7, 1.0))
    assert not view.ingest(0, "garbage")
    assert view.rejected_messages == 3
    assert view.snapshot()["peers"]["0"]["state"] == "starting"


def test_link_bandwidth_is_the_byte_rate_between_snapshots_in_bits_per_second() -> None:
    view, _ = _view()
    view.ingest(0, _snap(0, 10.0, {1: 0, 2: 0}))
    view.ingest(1, _snap(1, 10.0, {0: 0}))
    view.ingest(0, _snap(0, 10.1, {1: 50_000, 2: 0}))  # too soon to tell
    bps = {(x["a"], x["b"]): x["bps_ab"] for x in view.snapshot()["links"]}
    assert bps[(0, 1)] == 0
    view.ingest(0, _snap(0, 10.5, {1: 62_500, 2: 0}))  # 62.5 kB in 0.5 s = 1 Mb/s
    view.ingest(1, _snap(1, 11.0, {0: 125_000}))
    links = {(x["a"], x["b"]): x for x in view.snapshot()["links"]}
    assert links[(0, 1)]["bps_ab"] == 1_000_000 and links[(0, 1)]["bps_ba"] == 1_000_000
    assert links[(0, 2)]["bps_ab"] == 0 and not links[(0, 2)]["down"]
    swarm = view.snapshot()["swarm"]
    assert swarm["bps"] == 2_000_000 and swarm["max_link_bps"] == 1_000_000 and swarm["cap_bps"] == 100e6
    # a burst then silence: the 2 s window averages it instead of jumping between 0 and a spike
    view.ingest(0, _snap(0, 11.0, {1: 312_500, 2: 0}))  # +250 kB in 0.5 s
    view.ingest(0, _snap(0, 11.5, {1: 312_500, 2: 0}))
    bps = {(x["a"], x["b"]): x["bps_ab"] for x in view.snapshot()["links"]}
    assert bps[(0, 1)] == round(312_500 * 8 / 1.5)  # 10.0 .. 11.5 is within the window
    view.ingest(0, _snap(0, 14.0, {1: 312_500, 2: 0}))  # the burst left the window
    bps = {(x["a"], x["b"]): x["bps_ab"] for x in view.snapshot()["links"]}
    assert bps[(0, 1)] == 0
    view.ingest(0, _snap(0, 14.5, {1: 10, 2: 0}))  # peer 0 restarted: counters went back
    view.ingest(0, _snap(0, 15.0, {1: 62_510, 2: 0}))
    bps = {(x["a"], x["b"]): x["bps_ab"] for x in view.snapshot()["links"]}
    assert bps[(0, 1)] == 1_000_000  # measured from the new baseline, no negative rate


def test_a_down_peer_has_a_down_link_without_bandwidth() -> None:
    view, clock = _view()
    view.ingest(0, _snap(0, 1.0, {1: 0}))
    view.ingest(0, _snap(0, 2.0, {1: 1000}))
    view.ingest(1, _snap(1, 2.0, {0: 0}))
    clock.now += 1
    view.ingest(1, _snap(1, 3.0, {0: 0}, neighbours_down=[]))
    clock.now += 2.5  # peer 0 silent 3.5 s, peer 1 silent 2.5 s
    (link,) = view.snapshot()["links"]
    assert link == {"a": 0, "b": 1, "down": True, "bps_ab": 0, "bps_ba": 0}


def test_tick_sends_only_what_changed() -> None:
    view, clock = _view(2)
    first = view.tick()
    assert first is not None and set(first["peers"]) == {"0", "1"} and "bandwidth" in first
    assert view.tick() is None  # nothing new within the sampling second
    view.ingest(1, _snap(1, 1.0, test_accuracy=0.9, epoch=1))
    delta = view.tick()
    assert delta is not None and set(delta["peers"]) == {"1"} and delta["peers"]["1"]["test_accuracy"] == 0.9
    assert delta["accuracy"][0][0] == 1 and delta["accuracy"][0][2] == 0.9
    assert delta["swarm"]["counts"] == {"starting": 1, "training": 1}
    clock.now += 4
    delta = view.tick()
    assert delta is not None and delta["peers"]["1"]["state"] == "down"


def test_summary_appears_once_every_peer_is_done_or_down() -> None:
    view, clock = _view(3)
    for i in range(3):
        view.ingest(i, _snap(i, 1.0, state="training"))
    assert view.summary() is None
    view.ingest(0, _snap(0, 2.0, state="done", test_accuracy=0.97, bytes_sent=1000, triggers={"final": 1},
                         mb_per_epoch=0.5, compression_ratio=40.0))
    view.ingest(1, _snap(1, 2.0, state="done", test_accuracy=0.99, bytes_sent=3000, triggers={"final": 1},
                         mb_per_epoch=1.5, compression_ratio=20.0, updates_rejected=2))
    assert view.summary() is None  # peer 2 still training
    clock.now += 10
    s = view.summary()
    assert s is not None
    assert s["peers_done"] == 2 and s["peers_down"] == [2]
    assert s["accuracy_mean"] == pytest.approx(0.98) and s["accuracy_min"] == 0.97
    assert s["bytes_sent_total"] == 4000 and s["triggers"] == {"final": 2} and s["updates_rejected"] == 2
    assert s["mb_per_epoch_mean"] == pytest.approx(1.0) and s["compression_ratio_mean"] == pytest.approx(30.0)
    assert view.tick()["summary"] == s  # type: ignore[index]


def test_unlimited_bandwidth_has_no_cap() -> None:
    view, _ = _view(2, "link.bandwidth=unlimited")
    assert view.snapshot()["swarm"]["cap_bps"] is None


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({"type": st.just("peer")}, optional={k: _json for k in SNAPSHOT_FIELDS if k != "type"}),
       st.dictionaries(st.sampled_from(["0", "1", "²", "01", "-1", "x", "99"]), _json, max_size=3))
def test_hostile_telemetry_never_breaks_the_view(message: dict[str, Any], links: dict[str, Any]) -> None:
    view, clock = _view(2)
    message = {**message, "links": links} if links else message
    view.ingest(0, message)
    clock.now += 0.5
    view.ingest(0, {**message, "ts": 5.0})
    snap = view.snapshot()
    delta = view.tick()
    assert snap["peers"]["0"]["state"] in ("starting", "training", "syncing", "finishing", "done")
    json.dumps([snap, delta], allow_nan=False)  # what the browser gets stays strict JSON (no NaN/inf)
