"""Split a training set between peers: ``iid``, ``dirichlet(alpha)`` or ``shards(k)``.

``partition(labels, peers, cfg, seed)`` returns one sorted int64 index tensor
per peer. Every sample lands in exactly one peer's shard, and the result
depends only on (labels, peers, cfg.partition/alpha/shards_per_peer, seed), so
each peer can compute the whole partition itself and take its own row: no
coordinator hands out data.

How non-IID each scheme is (tuning guide):

* ``iid``: a seeded shuffle cut into equal parts (sizes differ by at most 1).
* ``dirichlet``: per class, the class's samples are split between peers in
  proportions drawn from Dirichlet(alpha). ``alpha`` = 100 is close to IID, 1 is
  mildly skewed, 0.1 gives most peers two or three dominant classes. Draws that
  leave a peer with fewer than ``min(10, N // peers)`` samples are redrawn.
* ``shards``: McMahan et al.'s pathological split: sort by label, cut into
  ``peers * shards_per_peer`` equal shards, deal ``shards_per_peer`` at random to
  each peer. With 2 shards per peer, each peer sees about two classes.
"""

from __future__ import annotations

import numpy as np
import torch

from gossip.config import DataConfig
from gossip.errors import ConfigError
from gossip.observe.log import get_logger

log = get_logger(__name__)

_MAX_REDRAWS = 100  # dirichlet: redraws before falling back to moving samples into empty peers


def partition(labels: torch.Tensor, peers: int, cfg: DataConfig, seed: int) -> list[torch.Tensor]:
    """One sorted int64 index tensor per peer; a disjoint cover of ``range(len(labels))``."""
    n = int(labels.shape[0])
    if peers < 1:
        raise ConfigError(f"peers: must be >= 1, got {peers}")
    if n < peers:
        raise ConfigError(f"peers: {peers} peers but only {n} training samples")
    rng = np.random.default_rng([seed, peers, 0x6055])  # independent of every other seeded stream
    y = labels.cpu().numpy()
    if cfg.partition == "iid":
        parts = np.array_split(rng.permutation(n), peers)
    elif cfg.partition == "dirichlet":
        parts = _dirichlet(y, peers, cfg.alpha, rng)
    else:
        parts = _shards(y, peers, cfg.shards_per_peer, rng)
    out = [torch.from_numpy(np.sort(p).astype(np.int64)) for p in parts]
    num_classes = int(y.max()) + 1 if n else 0
    log.info("partition", kind=cfg.partition, peers=peers, seed=seed, sizes=[len(p) for p in out],
             label_histograms=[label_histogram(labels, p, num_classes) for p in out])
    return out


def share_of_down(shards: list[torch.Tensor], peer_id: int, down: set[int]) -> torch.Tensor:
    """The indices ``peer_id`` takes over from the ``down`` peers' shards: each down shard is dealt
    round-robin among the live peers, so together they cover it exactly once (empty if ``peer_id``
    is down itself or nobody is)."""
    live = [p for p in range(len(shards)) if p not in down]
    if peer_id not in live or not down:
        return torch.empty(0, dtype=torch.long)
    me = live.index(peer_id)
    return torch.cat([shards[p][me::len(live)] for p in sorted(down)])


def label_histogram(labels: torch.Tensor, indices: torch.Tensor, num_classes: int) -> list[int]:
    """Count of each class among ``labels[indices]``."""
    counts = torch.bincount(labels[indices].cpu(), minlength=num_classes)
    return [int(c) for c in counts[:num_classes]]


def _dirichlet(y: np.ndarray, peers: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    n = len(y)
    min_size = min(10, n // peers)
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    for _ in range(_MAX_REDRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(peers)]
        for idx in by_class:
            share = rng.dirichlet(np.full(peers, alpha))
            cuts = (np.cumsum(share)[:-1] * len(idx)).astype(int)
            for peer, chunk in enumerate(np.split(idx, cuts)):
                parts[peer].append(chunk)
        merged = [np.concatenate(p) for p in parts]
        if min(len(p) for p in merged) >= min_size:
            return merged
    # Tiny alpha with many peers: give each starving peer samples from the largest one.
    for i in range(peers):
        while len(merged[i]) < min_size:
            j = int(np.argmax([len(p) for p in merged]))
            merged[i] = np.append(merged[i], merged[j][-1])
            merged[j] = merged[j][:-1]
    return merged


def _shards(y: np.ndarray, peers: int, per_peer: int, rng: np.random.Generator) -> list[np.ndarray]:
    count = peers * per_peer
    if count > len(y):
        raise ConfigError(f"data.shards_per_peer: {peers}x{per_peer} shards but only {len(y)} samples")
    order = rng.permutation(len(y))
    order = order[np.argsort(y[order], kind="stable")]  # by label, random within a label
    shards = np.array_split(order, count)
    deal = rng.permutation(count).reshape(peers, per_peer)
    return [np.concatenate([shards[s] for s in row]) for row in deal]
