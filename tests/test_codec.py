"""Encoder and decoder end to end: what is sent + what stays in the residual == the residual before."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gossip._proto import gossip_pb2 as pb
from gossip.config import CodecConfig
from gossip.errors import CheckpointError
from gossip.protocol.codec import ErrorFeedback, Layout, decode_update, make_encoder
from gossip.protocol.codec.base import SELECTORS, VALUE_CODECS, chunk_lengths

SHAPES = [
    ("conv.weight", (64, 32, 3, 3)),  # 18432, sparse-eligible
    ("conv.bias", (64,)),             # dense
    ("bn.weight", (64,)),             # dense
    ("fc.weight", (100, 512)),        # 51200, sparse-eligible
    ("fc.bias", (100,)),              # dense
]
LAYOUT = Layout.from_shapes(SHAPES)
DENSE = [(18432, 18496), (18496, 18560), (69760, 69860)]


def heavy_tailed(numel: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(numel, generator=g) * torch.rand(numel, generator=g) ** 3


def roundtrip(cfg: CodecConfig, residual: torch.Tensor, **kw):
    enc = make_encoder(cfg, LAYOUT)
    ef = ErrorFeedback(LAYOUT.numel)
    ef.residual.copy_(residual)
    msg = enc.encode(ef, **kw).msg
    wire = pb.GradUpdate.FromString(msg.SerializeToString())
    indices, values = decode_update(wire, LAYOUT.numel)
    applied = torch.zeros(LAYOUT.numel)
    if indices is None:
        applied += torch.from_numpy(values)
    else:
        applied.index_add_(0, torch.from_numpy(indices), torch.from_numpy(values))
    return msg, indices, values, applied, ef


def test_layout_hash_ranges_and_matrices():
    again = Layout.from_shapes(list(SHAPES))
    assert again.schema_hash == LAYOUT.schema_hash and 0 <= LAYOUT.schema_hash < 2**64
    assert Layout.from_shapes(SHAPES[:-1]).schema_hash != LAYOUT.schema_hash
    assert Layout.from_shapes([("x", (3, 4))]).schema_hash != Layout.from_shapes([("x", (4, 3))]).schema_hash
    assert LAYOUT.numel == 18432 + 64 + 64 + 51200 + 100
    sparse, dense = LAYOUT.ranges(dense_below=2048)
    assert sparse.tolist() == [[0, 18432], [18560, 69760]]
    assert dense.tolist() == [list(r) for r in DENSE]
    assert LAYOUT.matrices(2048) == [(0, 64, 288), (18560, 100, 512)]
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    assert Layout.from_model(model).numel == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("select", ["sampled_topk", "topk", "randomk"])
@pytest.mark.parametrize("values", ["int8", "int4", "sign", "fp16", "fp32"])
def test_sent_plus_residual_is_the_residual_before(select, values):
    before = heavy_tailed(LAYOUT.numel)
    msg, indices, dec, applied, ef = roundtrip(CodecConfig(select=select, values=values, density=0.02), before)
    assert torch.allclose(applied + ef.residual, before, atol=1e-6)
    assert indices is not None and np.all(np.diff(indices) > 0)
    for start, stop in DENSE:  # small tensors always travel whole
        assert np.isin(np.arange(start, stop), indices).all()
    k = round(0.02 * (18432 + 51200))
    assert 0.8 * k <= msg.count <= 1.05 * k


def test_sampled_topk_keeps_the_largest_magnitudes():
    before = heavy_tailed(LAYOUT.numel, seed=3)
    msg, indices, _, _, _ = roundtrip(CodecConfig(select="sampled_topk", values="fp32", density=0.01), before)
    sparse_mask = np.ones(LAYOUT.numel, bool)
    for start, stop in DENSE:
        sparse_mask[start:stop] = False
    chosen = np.zeros(LAYOUT.numel, bool)
    chosen[indices] = True
    mags = before.abs().numpy()
    assert mags[chosen & sparse_mask].min() >= mags[~chosen & sparse_mask].max()
    exact, *_ = roundtrip(CodecConfig(select="topk", values="fp32", density=0.01), before)
    assert abs(msg.count - exact.count) <= 0.05 * exact.count


def test_int8_error_bound_per_chunk():
    before = heavy_tailed(LAYOUT.numel, seed=1)
    for chunk in (0, 64):
        cfg = CodecConfig(values="int8", density=0.05, chunk=chunk)
        msg, indices, dec, _, _ = roundtrip(cfg, before)
        exact = before.numpy()[indices]
        # the decoder's merge puts dense segments in flat order; rebuild the per-value scale the same way
        groups = [msg.count, *msg.dense_lengths]
        chunks = chunk_lengths(np.array(groups), chunk)
        assert len(msg.scales) == len(chunks)
        sent_order = np.concatenate([indices[~np.isin(indices, np.concatenate(
            [np.arange(a, b) for a, b in DENSE]))], np.concatenate([np.arange(a, b) for a, b in DENSE])])
        scale = dict(zip(sent_order.tolist(), np.repeat(np.array(msg.scales), chunks).tolist(), strict=True))
        bound = np.array([scale[i] for i in indices.tolist()]) / 2
        assert (np.abs(dec - exact) <= bound * (1 + 1e-5) + 1e-12).all()
        assert len(msg.values) == len(dec)


def test_value_codec_error_bounds_directly():
    rng = np.random.default_rng(0)
    v = (rng.standard_normal(1000) * rng.random(1000) ** 2).astype(np.float32)
    chunks = chunk_lengths(np.array([1000]), 100)
    for name, levels in (("int8", 127), ("int4", 7)):
        codec = VALUE_CODECS.by_name(name)
        payload, scales = codec.encode(v, chunks)
        assert len(payload) == codec.payload_size(1000)
        out = codec.decode(payload, scales, chunks)
        per = np.repeat(scales, chunks)
        assert np.allclose(per, np.repeat(np.maximum.reduceat(np.abs(v), np.arange(0, 1000, 100)) / levels, chunks))
        assert (np.abs(out - v) <= per / 2 * (1 + 1e-5)).all()
    sign = VALUE_CODECS.by_name("sign")
    payload, scales = sign.encode(v, chunks)
    out = sign.decode(payload, scales, chunks)
    assert (np.sign(out) == np.where(v < 0, -1, 1)).all() and len(payload) == 125
    assert np.allclose(np.abs(out), np.repeat(np.add.reduceat(np.abs(v), np.arange(0, 1000, 100)) / 100, chunks))
    fp16 = VALUE_CODECS.by_name("fp16")
    big = np.array([1e6, -1e6, 1.5], np.float32)
    out = fp16.decode(*fp16.encode(big, np.array([3])), np.array([3]))
    assert out.tolist() == [65504.0, -65504.0, 1.5]  # clipped, never inf


def test_full_flush_is_lossless_and_dense():
    before = heavy_tailed(LAYOUT.numel, seed=2)
    msg, indices, values, applied, ef = roundtrip(CodecConfig(values="int8"), before, density=1.0)
    assert indices is None and msg.selection == pb.SELECTION_DENSE and msg.value_codec == pb.VALUE_CODEC_FP32
    assert torch.equal(applied, before) and not ef.residual.any()


def test_dense_select_per_tensor_scales():
    before = heavy_tailed(LAYOUT.numel, seed=4)
    msg, indices, _, applied, ef = roundtrip(CodecConfig(select="dense", values="int8", chunk=0), before)
    assert indices is None and len(msg.scales) == len(SHAPES) and msg.count == 0
    assert torch.allclose(applied + ef.residual, before, atol=1e-6)
    assert float((applied - before).norm() / before.norm()) < 0.03  # int8: step = max/127


def test_powersgd_recovers_low_rank_and_stays_consistent():
    g = torch.Generator().manual_seed(5)
    before = heavy_tailed(LAYOUT.numel, seed=5) * 0.001
    low = (torch.randn(100, 2, generator=g) @ torch.randn(2, 512, generator=g)).reshape(-1)
    before[18560:69760] = low
    enc = make_encoder(CodecConfig(select="powersgd", powersgd_rank=2, values="fp32"), LAYOUT, seed=1)
    ef = ErrorFeedback(LAYOUT.numel)
    ef.residual.copy_(before)
    applied = torch.zeros(LAYOUT.numel)
    for _ in range(3):  # power iterations warm-start from the previous Q
        msg = enc.encode(ef).msg
        indices, values = decode_update(pb.GradUpdate.FromString(msg.SerializeToString()), LAYOUT.numel)
        assert indices is None and msg.selection == pb.SELECTION_POWERSGD and len(msg.low_rank) == 2
        applied += torch.from_numpy(values)
    assert torch.allclose(applied + ef.residual, before, atol=1e-4)
    assert float(ef.residual[18560:69760].norm() / low.norm()) < 1e-3
    wire_size = len(msg.SerializeToString())
    assert wire_size < 0.3 * LAYOUT.numel * 4
    state = enc.state_dict()
    fresh = make_encoder(CodecConfig(select="powersgd", powersgd_rank=2, values="fp32"), LAYOUT, seed=9)
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.powersgd.q[k], v) for k, v in enc.powersgd.q.items())


def test_no_error_feedback_drops_the_rest():
    _, _, _, applied, ef = roundtrip(CodecConfig(error_feedback=False, density=0.01), heavy_tailed(LAYOUT.numel))
    assert not ef.residual.any() and applied.count_nonzero() > 0


def test_clip_norm_caps_the_message_and_keeps_the_excess():
    before = heavy_tailed(LAYOUT.numel, seed=6)
    _, _, values, applied, ef = roundtrip(CodecConfig(clip_norm=0.5, values="fp32", density=0.05), before)
    assert float(np.linalg.norm(values)) == pytest.approx(0.5, rel=1e-5)
    assert torch.allclose(applied + ef.residual, before, atol=1e-6)


def test_warmup_density_falls_to_target():
    enc = make_encoder(CodecConfig(density=0.01, warmup_steps=4), LAYOUT)
    ef = ErrorFeedback(LAYOUT.numel)
    counts = []
    for _ in range(6):
        ef.residual.copy_(heavy_tailed(LAYOUT.numel))
        counts.append(enc.encode(ef).msg.count)
    assert counts[0] > counts[1] > counts[2] > counts[3] > counts[4] == counts[5]
    assert counts[0] == pytest.approx(0.25 * 69632, rel=0.05)
    assert counts[4] == pytest.approx(0.01 * 69632, rel=0.05)


def test_momentum_correction_masks_the_velocity():
    ef = ErrorFeedback(LAYOUT.numel, momentum=0.9)
    delta = heavy_tailed(LAYOUT.numel)
    ef.add(delta)
    ef.add(delta)
    assert torch.allclose(ef.residual, delta * 2.9)
    msg = make_encoder(CodecConfig(density=0.01), LAYOUT).encode(ef).msg
    indices, _ = decode_update(pb.GradUpdate.FromString(msg.SerializeToString()), LAYOUT.numel)
    assert ef.velocity is not None and not ef.velocity[torch.from_numpy(indices)].any()
    assert ef.velocity.count_nonzero() == LAYOUT.numel - len(indices)


def test_non_finite_residual_is_never_sent():
    before = heavy_tailed(LAYOUT.numel)
    before[5] = float("inf")
    before[7] = float("nan")
    _, indices, values, _, ef = roundtrip(CodecConfig(density=0.01), before)
    assert np.isfinite(values).all()
    assert float(ef.residual[5]) == 0.0 or 5 not in indices.tolist()


def test_empty_residual_sends_only_the_dense_part():
    msg, indices, values, applied, _ = roundtrip(CodecConfig(density=0.01), torch.zeros(LAYOUT.numel))
    assert msg.count == 0 and not applied.any() and len(values) == sum(b - a for a, b in DENSE)


def test_error_feedback_state_roundtrip():
    ef = ErrorFeedback(10, momentum=0.5)
    ef.add(torch.arange(10.0))
    other = ErrorFeedback(10, momentum=0.5)
    other.load_state_dict(ef.state_dict())
    assert torch.equal(other.residual, ef.residual) and torch.equal(other.velocity, ef.velocity)
    with pytest.raises(CheckpointError):
        ErrorFeedback(11).load_state_dict(ef.state_dict())
    with pytest.raises(ValueError):
        ef.add(torch.zeros(3))


def test_encoder_state_resumes_warmup_and_rng():
    cfg = dataclasses.replace(CodecConfig(), select="randomk", warmup_steps=10)
    enc = make_encoder(cfg, LAYOUT)
    ef = ErrorFeedback(LAYOUT.numel)
    ef.residual.copy_(heavy_tailed(LAYOUT.numel))
    enc.encode(ef)
    clone = make_encoder(cfg, LAYOUT)
    clone.load_state_dict(enc.state_dict())
    assert clone.density() == enc.density()
    a, b = ErrorFeedback(LAYOUT.numel), ErrorFeedback(LAYOUT.numel)
    a.residual.copy_(heavy_tailed(LAYOUT.numel, 1))
    b.residual.copy_(a.residual)
    assert enc.encode(a).msg.indices == clone.encode(b).msg.indices


def test_registries_cover_the_enums():
    assert {SELECTORS.value_of(n) for n in ("topk", "sampled_topk", "randomk", "dense")} <= set(
        pb.Selection.values())
    for value in pb.ValueCodec.values():
        if value:
            assert VALUE_CODECS.get(value) is not None


def test_an_empty_update_decodes_to_nothing():
    msg = pb.GradUpdate(selection=pb.SELECTION_TOPK, value_codec=pb.VALUE_CODEC_FP32, numel=LAYOUT.numel)
    indices, values = decode_update(msg, LAYOUT.numel)
    assert indices is not None and indices.size == 0 and values.size == 0


def test_encode_returns_what_the_receivers_decode_and_what_left_the_residual():
    cfg = CodecConfig(density=0.02)
    ef = ErrorFeedback(LAYOUT.numel)
    ef.residual.copy_(heavy_tailed(LAYOUT.numel, 2))
    before = ef.residual.clone()
    encoded = make_encoder(cfg, LAYOUT).encode(ef)
    indices, values = decode_update(encoded.msg, LAYOUT.numel)
    assert encoded.sent.indices is not None and encoded.sent.indices.numpy().tolist() == indices.tolist()
    assert torch.equal(encoded.sent.values, torch.from_numpy(values))
    took = torch.zeros(LAYOUT.numel).index_add_(0, encoded.sent.indices, encoded.sent.values)
    assert torch.equal(before - ef.residual, took)  # exactly what was subtracted, to the bit
    rest = ef.residual.clone()
    full = make_encoder(cfg, LAYOUT).encode(ef, density=1.0)  # the lossless fp32 flush: everything, dense
    assert full.sent.indices is None and torch.equal(full.sent.values, rest) and not ef.residual.any()


def randomk_indices(enc, seed: int = 3) -> list[int]:
    ef = ErrorFeedback(LAYOUT.numel)
    ef.residual.copy_(heavy_tailed(LAYOUT.numel, seed))
    return decode_update(enc.encode(ef).msg, LAYOUT.numel)[0].tolist()


def test_randomk_is_seeded_per_peer_and_reproducible_and_resumes_exactly():
    cfg = dataclasses.replace(CodecConfig(density=0.01), select="randomk")
    peer0, peer1 = make_encoder(cfg, LAYOUT, seed=5, peer=0), make_encoder(cfg, LAYOUT, seed=5, peer=1)
    first0 = randomk_indices(peer0)
    assert first0 != randomk_indices(peer1)  # two peers of one swarm pick different elements
    assert first0 == randomk_indices(make_encoder(cfg, LAYOUT, seed=5, peer=0))  # a peer reproduces itself
    assert first0 != randomk_indices(make_encoder(cfg, LAYOUT, seed=6, peer=0))  # the run seed matters
    resumed = make_encoder(cfg, LAYOUT, seed=5, peer=0)
    resumed.load_state_dict(peer0.state_dict())
    assert randomk_indices(peer0, 4) == randomk_indices(resumed, 4)  # and a resume continues the stream
