"""The compiled codec kernels give exactly what the numpy paths give, and their absence is harmless."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from gossip.config import CodecConfig
from gossip.protocol.codec import ErrorFeedback, Layout, kernel, make_encoder
from gossip.protocol.codec import select as sel
from gossip.protocol.codec.base import INDEX_CODECS
from gossip.protocol.codec.index import deflate_rice, encode_indices

needs_kernel = pytest.mark.skipif(not kernel.available(), reason="compiled kernels unavailable (no C compiler or GOSSIP_CODEC_KERNEL=0)")


def awkward(n: int, seed: int) -> np.ndarray:
    """Heavy-tailed values with zeros, -0, subnormals, infinities and NaNs sprinkled in."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * rng.exponential(1.0, n) ** 3).astype(np.float32)
    for value in (0.0, -0.0, 1e-41, -1e-41, np.inf, -np.inf, np.nan):
        x[rng.integers(0, n, max(1, n // 500))] = value
    return x


def ranges_of(n: int, seed: int) -> np.ndarray:
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, n), 4, replace=False))
    return np.array([[0, cuts[0]], [cuts[1], cuts[2]], [cuts[3], n]], dtype=np.int64)


@needs_kernel
@pytest.mark.parametrize("seed", range(6))
def test_scan_and_keep_match_numpy_exactly(seed):
    n = [97, 1000, 33_333, 250_000, 64, 31][seed]
    x = awkward(n, seed)
    r = ranges_of(n, seed) if n > 10 else np.array([[0, n]], dtype=np.int64)
    residual = torch.from_numpy(x)
    for threshold in (float(np.finfo(np.float32).tiny), 1e-3, 0.5, 3.0, float(np.inf)):
        idx, val = kernel.scan(x, r, threshold, n) or (None, None)
        with kernel.disabled():
            ref_idx, ref_val = sel._scan(residual, r, threshold, n)
        assert idx is not None and np.array_equal(idx, ref_idx) and np.array_equal(val, ref_val)
        assert not np.isnan(val).any()
        kept = kernel.keep(idx.copy(), val.copy(), threshold * 2)
        mask = np.abs(ref_val) >= np.float32(threshold * 2)
        assert kept is not None and np.array_equal(kept[0], ref_idx[mask]) and np.array_equal(kept[1], ref_val[mask])
    assert kernel.scan(x, r, 0.0, 0) is None or n <= kernel.CHUNK  # too many for the room: numpy instead


@needs_kernel
@pytest.mark.parametrize("density", [0.2, 0.01, 0.001])
def test_sampled_topk_and_the_encoder_are_identical_with_and_without_the_kernel(density):
    layout = Layout.from_shapes([("a", (300, 400)), ("b", (300,)), ("c", (50_000,)), ("d", (7, 9))])
    grad = torch.from_numpy(awkward(layout.numel, 7))
    grad[~torch.isfinite(grad)] = 0.0
    outs = []
    for use in (True, False):
        enc = make_encoder(CodecConfig(density=density), layout, seed=1, peer=2)
        ef = ErrorFeedback(layout.numel)
        ef.residual.copy_(grad)
        if use:
            encoded = enc.encode(ef)
        else:
            with kernel.disabled():
                encoded = enc.encode(ef)
        outs.append((encoded.msg.SerializeToString(), ef.residual.clone()))
    assert outs[0][0] == outs[1][0] and torch.equal(outs[0][1], outs[1][1])


@needs_kernel
def test_rice_streams_match_numpy_bit_for_bit():
    rice = INDEX_CODECS.by_name("rice")
    rng = np.random.default_rng(0)
    cases = [np.arange(1000, dtype=np.int64), np.array([0], dtype=np.int64),
             np.array([5, 2**40 - 1], dtype=np.int64)]  # b = 0 (runs) and a wide parameter
    for _ in range(60):
        numel = int(rng.integers(1, 300_000))
        k = int(rng.integers(1, min(numel, 4000) + 1))
        cases.append(np.sort(rng.choice(numel, k, replace=False)).astype(np.int64))
    for idx in cases:
        numel = int(idx[-1]) + 1 + int(rng.integers(0, 10))
        fast = rice.encode(idx, numel, zlib_level=1)
        with kernel.disabled():
            slow = rice.encode(idx, numel, zlib_level=1)
        assert fast == slow
        assert np.array_equal(rice.decode(fast, idx.size, numel), idx)


def test_rice_zlib_is_a_plain_zlib_stream_no_bigger_than_level_1():
    numel = 1_000_000
    runs = np.concatenate([np.arange(s, s + 50) for s in range(0, numel, 5000)])
    rng = np.random.default_rng(1)
    mixed = np.unique(np.concatenate([runs, rng.choice(numel, 5000, replace=False)])).astype(np.int64)
    rice = INDEX_CODECS.by_name("rice").encode(mixed, numel, zlib_level=1)
    raw = rice.main + rice.aux
    packed = encode_indices("rice_zlib", mixed, numel, 1)
    assert zlib.decompress(packed.main) == raw and packed.param == rice.param
    assert len(packed.main) <= len(zlib.compress(raw, 1))  # real gradients: below level 6 (bench)
    assert deflate_rice(raw, 0) == zlib.compress(raw, 0)  # level 0 still means stored


def test_without_a_compiler_everything_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert kernel._load() is None
    monkeypatch.setenv("GOSSIP_CODEC_KERNEL", "0")
    assert kernel._load() is None
    with kernel.disabled():
        assert not kernel.available()
        assert kernel.scan(np.ones(10, np.float32), np.array([[0, 10]]), 0.5, 10) is None
        assert kernel.rice(np.zeros(3, np.int64), 0, 3) is None
        assert kernel.keep(np.zeros(1, np.int64), np.ones(1, np.float32), 0.5) is None
