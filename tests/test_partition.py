"""Partitioners: disjoint cover, deterministic per (seed, peers), the promised amount of skew."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.config import DataConfig
from gossip.errors import ConfigError
from gossip.observe.log import configure
from gossip.training.partition import label_histogram, partition, share_of_down


def _labels(n: int = 6000, classes: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


def _cover_ok(parts: list[torch.Tensor], n: int) -> None:
    everything = torch.cat(parts)
    assert everything.dtype == torch.int64
    assert len(everything) == n
    assert torch.equal(everything.sort().values, torch.arange(n))  # each sample exactly once
    for p in parts:
        assert torch.equal(p, p.sort().values)


CFGS = {
    "iid": DataConfig(partition="iid"),
    "dirichlet": DataConfig(partition="dirichlet", alpha=0.3),
    "shards": DataConfig(partition="shards", shards_per_peer=2),
}


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(sorted(CFGS)), peers=st.integers(1, 12), n=st.integers(30, 800),
       seed=st.integers(0, 2**31))
def test_every_sample_in_exactly_one_shard(kind: str, peers: int, n: int, seed: int) -> None:
    labels = _labels(n, seed=seed % 7)
    parts = partition(labels, peers, CFGS[kind], seed)
    assert len(parts) == peers
    _cover_ok(parts, n)
    assert all(len(p) > 0 for p in parts)


@pytest.mark.parametrize("kind", sorted(CFGS))
def test_deterministic_for_seed_and_peer_count(kind: str) -> None:
    labels = _labels()
    a = partition(labels, 4, CFGS[kind], seed=1)
    b = partition(labels, 4, CFGS[kind], seed=1)
    c = partition(labels, 4, CFGS[kind], seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_sizes_and_balance() -> None:
    labels = _labels(6001)
    parts = partition(labels, 4, CFGS["iid"], seed=0)
    assert sorted(len(p) for p in parts) == [1500, 1500, 1500, 1501]
    for p in parts:
        hist = torch.tensor(label_histogram(labels, p, 10), dtype=torch.float)
        assert hist.min() > 0.7 * hist.mean()


def _classes_for_90_percent(hist: list[int]) -> int:
    counts = sorted(hist, reverse=True)
    total, acc = sum(counts), 0
    for i, c in enumerate(counts, 1):
        acc += c
        if acc >= 0.9 * total:
            return i
    return len(counts)


def test_dirichlet_alpha_controls_skew() -> None:
    labels = _labels(20000)
    skewed = partition(labels, 8, DataConfig(partition="dirichlet", alpha=0.1), seed=0)
    mild = partition(labels, 8, DataConfig(partition="dirichlet", alpha=100.0), seed=0)
    mean_skewed = sum(_classes_for_90_percent(label_histogram(labels, p, 10)) for p in skewed) / 8
    mean_mild = sum(_classes_for_90_percent(label_histogram(labels, p, 10)) for p in mild) / 8
    assert mean_skewed <= 4 < 8 <= mean_mild


def test_dirichlet_tiny_alpha_many_peers_leaves_nobody_empty() -> None:
    labels = _labels(200, classes=2)
    parts = partition(labels, 20, DataConfig(partition="dirichlet", alpha=0.001), seed=5)
    _cover_ok(parts, 200)
    assert min(len(p) for p in parts) >= 10


def test_shards_give_each_peer_few_classes() -> None:
    labels = _labels(10000)
    parts = partition(labels, 5, DataConfig(partition="shards", shards_per_peer=2), seed=0)
    for p in parts:
        present = sum(1 for c in label_histogram(labels, p, 10) if c > 0)
        assert present <= 4  # two shards, each spanning at most two neighbouring classes
    assert sorted(len(p) for p in parts) == [2000] * 5


def test_impossible_requests_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"^peers:"):
        partition(_labels(3), 4, CFGS["iid"], seed=0)
    with pytest.raises(ConfigError, match=r"^data.shards_per_peer:"):
        partition(_labels(10), 4, DataConfig(partition="shards", shards_per_peer=3), seed=0)


def test_label_histogram_counts() -> None:
    labels = torch.tensor([0, 1, 1, 2, 2, 2])
    assert label_histogram(labels, torch.tensor([1, 3, 4, 5]), 4) == [0, 1, 3, 0]


def test_histograms_are_logged(tmp_path: Path) -> None:
    log_path = tmp_path / "p.jsonl"
    configure(log_path)
    try:
        labels = _labels(1000)
        parts = partition(labels, 3, CFGS["shards"], seed=0)
    finally:
        configure()
    events = [json.loads(line) for line in log_path.read_text().splitlines()]
    (event,) = [e for e in events if e["event"] == "partition"]
    assert event["peers"] == 3 and event["kind"] == "shards"
    assert event["label_histograms"] == [label_histogram(labels, p, 10) for p in parts]
    assert event["sizes"] == [len(p) for p in parts]


def test_a_down_peers_shard_is_dealt_among_the_live_peers_exactly_once():
    labels = torch.arange(1000) % 10
    shards = partition(labels, 4, DataConfig(), seed=0)
    parts = [share_of_down(shards, p, {1, 3}) for p in range(4)]
    assert parts[1].numel() == 0 and parts[3].numel() == 0  # down peers take nothing
    taken = torch.cat([parts[0], parts[2]])
    assert sorted(taken.tolist()) == sorted(torch.cat([shards[1], shards[3]]).tolist())
    assert abs(parts[0].numel() - parts[2].numel()) <= 2
    assert share_of_down(shards, 0, set()).numel() == 0
