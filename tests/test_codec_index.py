"""Index codecs: exact round trips, sizes near the entropy floor, and hostile streams rejected."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip._proto import gossip_pb2 as pb
from gossip.errors import ProtocolError
from gossip.protocol.codec.base import INDEX_CODECS, IndexPayload
from gossip.protocol.codec.index import encode_indices, entropy_bound_bits, inflate

NAMES = ["rice", "rice_zlib", "delta_zlib", "bitmap_zlib"]


def uniform(numel: int, k: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(numel, k, replace=False)).astype(np.int64)


def bits(payload: IndexPayload, k: int) -> float:
    return 8 * (len(payload.main) + len(payload.aux)) / k


def reason(fn) -> str:
    with pytest.raises(ProtocolError) as info:
        fn()
    return info.value.reason


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_roundtrip_any_sorted_set(name, data):
    numel = data.draw(st.integers(1, 5000))
    chosen = data.draw(st.sets(st.integers(0, numel - 1), min_size=1, max_size=min(numel, 400)))
    idx = np.array(sorted(chosen), dtype=np.int64)
    codec = INDEX_CODECS.by_name(name)
    payload = codec.encode(idx, numel, zlib_level=1)
    assert np.array_equal(codec.decode(payload, idx.size, numel), idx)


@pytest.mark.parametrize("density", [0.01, 0.001])
def test_rice_is_within_two_percent_of_the_entropy_floor_on_uniform_sets(density):
    numel = 2_000_000
    k = round(density * numel)
    payload = INDEX_CODECS.by_name("rice").encode(uniform(numel, k), numel, zlib_level=1)
    assert bits(payload, k) <= 1.02 * entropy_bound_bits(numel, k) + 0.05
    assert entropy_bound_bits(numel, k) == pytest.approx(np.log2(1 / density) + 1.44, abs=0.1)


def test_auto_prefers_zlib_on_clustered_sets_and_bitmap_when_dense():
    numel = 1_000_000
    runs = np.concatenate([np.arange(s, s + 50) for s in range(0, numel, 5000)])  # rows of a low-rank grad
    auto = encode_indices("auto", runs, numel, 1)
    assert auto.encoding == pb.INDEX_ENCODING_RICE_ZLIB
    assert bits(auto, runs.size) < 0.5 * bits(encode_indices("rice", runs, numel, 1), runs.size)
    flat = uniform(numel, 10_000)
    assert encode_indices("auto", flat, numel, 1).encoding == pb.INDEX_ENCODING_RICE
    dense = uniform(numel, 400_000)
    assert encode_indices("auto", dense, numel, 1).encoding == pb.INDEX_ENCODING_BITMAP_ZLIB


def test_inflate_caps_output_and_rejects_junk():
    bomb = zlib.compress(b"\0" * 10_000_000, 9)  # ~10 KB that would inflate to 10 MB
    assert reason(lambda: inflate(bomb, 1000)) == "zlib_bomb"
    good = zlib.compress(b"x" * 100)
    assert inflate(good, 100) == b"x" * 100
    assert reason(lambda: inflate(good[:-3], 100)) == "zlib_error"
    assert reason(lambda: inflate(good + b"junk", 100)) == "zlib_error"
    assert reason(lambda: inflate(b"not zlib", 100)) == "zlib_error"
    assert reason(lambda: inflate(good, 200)) == "count_mismatch"
    assert inflate(zlib.compress(b""), 0) == b""
    assert reason(lambda: inflate(zlib.compress(b"a"), 0)) == "zlib_bomb"


def test_rice_decoder_rejects_inconsistent_streams():
    numel, idx = 10_000, uniform(10_000, 100)
    rice = INDEX_CODECS.by_name("rice")
    p = rice.encode(idx, numel, zlib_level=1)
    assert reason(lambda: rice.decode(p, 99, numel)) == "count_mismatch"
    assert reason(lambda: rice.decode(IndexPayload(p.encoding, p.main + b"\0", p.aux, p.param), 100, numel)) \
        == "count_mismatch"
    assert reason(lambda: rice.decode(IndexPayload(p.encoding, p.main, p.aux[:-1], p.param), 100, numel)) \
        == "count_mismatch"
    assert reason(lambda: rice.decode(IndexPayload(p.encoding, p.main, p.aux, 40), 100, numel)) == "bad_field"
    assert reason(lambda: rice.decode(p, 100, int(idx[-1]))) == "index_out_of_range"
    long_unary = IndexPayload(p.encoding, b"\0" * 100_000 + b"\x80", b"", 0)
    assert reason(lambda: rice.decode(long_unary, 1, numel)) == "index_out_of_range"


def test_zlib_codecs_reject_wrong_sizes():
    numel, idx = 10_000, uniform(10_000, 100)
    for name in ("delta_zlib", "bitmap_zlib", "rice_zlib"):
        codec = INDEX_CODECS.by_name(name)
        p = codec.encode(idx, numel, zlib_level=1)
        assert reason(lambda c=codec, q=p: c.decode(q, 101, numel)) in ("count_mismatch", "index_out_of_range")
    delta = INDEX_CODECS.by_name("delta_zlib")
    huge_gap = IndexPayload(pb.INDEX_ENCODING_DELTA_ZLIB,
                            zlib.compress(np.array([[5], [0], [0], [0]], np.uint8).tobytes()))
    assert reason(lambda: delta.decode(huge_gap, 1, 3)) == "index_out_of_range"
