"""Packing and unpacking every message, and each check of unpack with its reason code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gossip._proto import gossip_pb2 as pb
from gossip.config import CodecConfig
from gossip.errors import ProtocolError
from gossip.protocol import wire
from gossip.protocol.codec import ErrorFeedback, Layout, make_encoder

LAYOUT = Layout.from_shapes([("w", (200, 300)), ("b", (200,)), ("v", (5000,))])
LIMITS = wire.Limits(numel=LAYOUT.numel, schema_hash=LAYOUT.schema_hash, max_bytes=1 << 20, peers=4)


def residual(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(LAYOUT.numel, generator=g) * torch.rand(LAYOUT.numel, generator=g) ** 3


def update_bytes(cfg: CodecConfig | None = None, **header) -> tuple[bytes, torch.Tensor, ErrorFeedback]:
    ef = ErrorFeedback(LAYOUT.numel)
    before = residual()
    ef.residual.copy_(before)
    msg = make_encoder(cfg or CodecConfig(density=0.02), LAYOUT).encode(ef).msg
    fields = dict(node_id=2, seq=7, step=120, epoch=1, confidence=0.75, schema_hash=LAYOUT.schema_hash)
    fields.update(header)
    return wire.pack_update(msg, **fields), before, ef


def reason(data: bytes, limits: wire.Limits = LIMITS) -> str:
    with pytest.raises(ProtocolError) as info:
        wire.unpack(data, limits)
    assert info.value.reason in wire.REASONS
    return info.value.reason


def envelope(data: bytes) -> pb.Envelope:
    return pb.Envelope.FromString(data)


def test_update_roundtrip_applies_exactly_what_the_sender_removed():
    data, before, ef = update_bytes(final=True)
    u = wire.unpack(data, LIMITS)
    assert isinstance(u, wire.DecodedUpdate)
    assert (u.node_id, u.seq, u.step, u.epoch, u.final, u.from_id, u.hops) == (2, 7, 120, 1, True, 2, 0)
    assert u.confidence == pytest.approx(0.75) and u.wire_bytes == len(data)
    assert u.indices is not None and u.indices.dtype == torch.int64 and u.values.dtype == torch.float32
    assert bool((u.indices[1:] > u.indices[:-1]).all())
    flat = torch.zeros(LAYOUT.numel)
    flat.index_add_(0, u.indices, u.values)
    assert torch.allclose(flat + ef.residual, before, atol=1e-6)


def test_dense_update_has_no_indices():
    data, before, _ = update_bytes(CodecConfig(select="dense", values="fp32"))
    u = wire.unpack(data, LIMITS)
    assert isinstance(u, wire.DecodedUpdate) and u.indices is None and torch.equal(u.values, before)


def test_small_messages_roundtrip():
    hello = wire.unpack(wire.pack_hello(node_id=1, schema_hash=LAYOUT.schema_hash, config_hash="abc123",
                                        address="tcp://127.0.0.1:47001", epochs=3), LIMITS)
    assert hello == wire.Hello(1, LAYOUT.schema_hash, "abc123", "tcp://127.0.0.1:47001", 3)
    resumed = wire.unpack(wire.pack_hello(node_id=1, schema_hash=1, config_hash="", address="", epochs=3, step=2**40),
                          LIMITS)
    assert isinstance(resumed, wire.Hello) and resumed.step == 2**40
    other = wire.unpack(wire.pack_hello(node_id=1, schema_hash=99, config_hash="", address="", epochs=1), LIMITS)
    assert isinstance(other, wire.Hello) and other.schema_hash == 99  # returned: the runtime explains it
    assert wire.unpack(wire.pack_heartbeat(node_id=3, step=10, epoch=2), LIMITS) == wire.Heartbeat(3, 10, 2)
    assert wire.unpack(wire.pack_done(node_id=0, last_seq=-1), LIMITS) == wire.Done(0, -1, False)
    assert wire.unpack(wire.pack_done(node_id=0, last_seq=41, complete=True), LIMITS) == wire.Done(0, 41, True)
    req = wire.unpack(wire.pack_state_request(node_id=2, schema_hash=LAYOUT.schema_hash), LIMITS)
    assert req == wire.StateRequest(2)


def test_state_chunks_rebuild_the_vector():
    flat = residual(1)
    chunks = wire.pack_state_chunks(flat, node_id=1, seq=5, step=9, epoch=0, schema_hash=LAYOUT.schema_hash,
                                    chunk_bytes=40_000)
    assert len(chunks) == -(-LAYOUT.numel // 10_000)
    rebuilt = torch.full((LAYOUT.numel,), float("nan"))
    for data in chunks:
        c = wire.unpack(data, LIMITS)
        assert isinstance(c, wire.StateChunk) and (c.node_id, c.seq, c.total) == (1, 5, LAYOUT.numel)
        rebuilt[c.offset:c.offset + c.values.numel()] = c.values
    assert torch.equal(rebuilt, flat) and c.last


def test_state_chunk_checks():
    env = envelope(wire.pack_state_chunks(residual(), node_id=1, seq=0, step=0, epoch=0,
                                          schema_hash=LAYOUT.schema_hash, chunk_bytes=4000)[-1])
    env.state_chunk.offset = LAYOUT.numel - 1
    assert reason(env.SerializeToString()) == "index_out_of_range"
    env.state_chunk.offset, env.state_chunk.data = 0, b"\0\0\xc0\x7f" + b"\0" * 4  # a NaN
    assert reason(env.SerializeToString()) == "non_finite"
    env.state_chunk.data = b"\0" * 6
    assert reason(env.SerializeToString()) == "count_mismatch"
    env.state_chunk.data, env.state_chunk.total = b"", LAYOUT.numel + 1
    assert reason(env.SerializeToString()) == "schema_mismatch"


def test_envelope_checks():
    data, *_ = update_bytes()
    assert reason(data, wire.Limits(LAYOUT.numel, LAYOUT.schema_hash, len(data) - 1, 4)) == "too_large"
    assert reason(b"\xff\xff\xff") == "parse_error"
    assert reason(pb.Envelope(version=1).SerializeToString()) == "unknown_message"
    assert reason(object()) == "parse_error"  # type: ignore[arg-type]
    env = envelope(data)
    env.version = 2
    assert reason(env.SerializeToString()) == "bad_version"
    env = envelope(data)
    env.from_id = 4
    assert reason(env.SerializeToString()) == "bad_node_id"


@pytest.mark.parametrize("field,value,expected", [
    ("version", 9, "bad_version"),
    ("node_id", 17, "bad_node_id"),
    ("schema_hash", 12345, "schema_mismatch"),
    ("numel", 10, "schema_mismatch"),
    ("confidence_score", float("nan"), "bad_confidence"),
    ("confidence_score", 1.5, "bad_confidence"),
    ("confidence_score", -0.1, "bad_confidence"),
    ("selection", 77, "unknown_codec"),
    ("selection", 0, "unknown_codec"),
    ("value_codec", 0, "unknown_codec"),
    ("index_encoding", 9, "unknown_codec"),
    ("count", 5, "count_mismatch|index_out_of_range|zlib_bomb"),
    ("chunk", 3, "count_mismatch"),
])
def test_update_header_checks(field, value, expected):
    env = envelope(update_bytes()[0])
    setattr(env.update, field, value)
    assert reason(env.SerializeToString()) in expected.split("|")


def test_update_payload_checks():
    env = envelope(update_bytes()[0])
    u = env.update
    u.scales[0] = float("inf")
    assert reason(env.SerializeToString()) == "bad_scale"
    u.scales[0] = -1.0
    assert reason(env.SerializeToString()) == "bad_scale"
    u.scales[0] = 3e38  # finite scale, but q * scale overflows
    assert reason(env.SerializeToString()) == "non_finite"
    env = envelope(update_bytes()[0])
    env.update.values = env.update.values[:-1]
    assert reason(env.SerializeToString()) == "count_mismatch"
    env = envelope(update_bytes()[0])
    env.update.dense_offsets[0] = 5  # a dense segment over sparse indices
    assert reason(env.SerializeToString()) in ("indices_not_increasing", "bad_segment")
    env = envelope(update_bytes()[0])
    env.update.dense_lengths[0] = 0
    assert reason(env.SerializeToString()) == "bad_segment"
    env.update.dense_lengths[0] = LAYOUT.numel
    assert reason(env.SerializeToString()) == "bad_segment"
    env = envelope(update_bytes()[0])
    env.update.dense_offsets.append(1)
    assert reason(env.SerializeToString()) == "count_mismatch"


def test_powersgd_block_checks():
    env = envelope(update_bytes(CodecConfig(select="powersgd", values="fp16"))[0])
    assert isinstance(wire.unpack(env.SerializeToString(), LIMITS), wire.DecodedUpdate)
    block = env.update.low_rank[0]
    block.rank = 99
    assert reason(env.SerializeToString()) == "bad_field"
    block.rank, block.rows = 4, 10_000
    assert reason(env.SerializeToString()) == "bad_segment"
    block.rows, block.p = 200, block.p[:-2]
    assert reason(env.SerializeToString()) == "count_mismatch"
    env = envelope(update_bytes(CodecConfig(select="powersgd"))[0])
    env.update.low_rank.append(env.update.low_rank[0])  # the same block twice
    assert reason(env.SerializeToString()) == "bad_segment"
    env = envelope(update_bytes(CodecConfig(select="powersgd"))[0])
    env.update.selection = pb.SELECTION_TOPK
    assert reason(env.SerializeToString()) == "bad_field"


def test_relay_readdresses():
    data, *_ = update_bytes()
    relayed = wire.relay(data, from_id=3)
    u = wire.unpack(relayed, LIMITS)
    assert isinstance(u, wire.DecodedUpdate) and (u.node_id, u.from_id, u.hops) == (2, 3, 1)


def test_pack_update_refuses_a_bad_confidence():
    msg = pb.GradUpdate()
    with pytest.raises(ValueError):
        wire.pack_update(msg, node_id=0, seq=0, step=0, epoch=0, confidence=float("nan"), schema_hash=0)


def test_internal_errors_become_protocol_errors(monkeypatch):
    data, *_ = update_bytes()

    def boom(*args, **kwargs):
        raise IndexError("bug")
    monkeypatch.setattr(wire, "decode_update", boom)
    assert reason(data) == "internal_error"


def test_reason_codes_are_snake_case_and_unique():
    assert len(set(wire.REASONS)) == len(wire.REASONS)
    assert all(r.replace("_", "").isalpha() and r.islower() for r in wire.REASONS)
    assert np.all([isinstance(r, str) for r in wire.REASONS])


def test_resend_request_roundtrip_and_checks():
    data = wire.pack_resend_request(node_id=1, origin=2, seqs=[3, 4, 9])
    assert wire.unpack(data, LIMITS) == wire.ResendRequest(node_id=1, origin=2, seqs=(3, 4, 9))
    env = envelope(data)
    assert len(env.resend_request.SerializeToString()) < 16  # seqs are packed: one tag for all
    env.resend_request.node_id = 4
    assert reason(env.SerializeToString()) == "bad_node_id"
    env = envelope(data)
    env.resend_request.origin = 77
    assert reason(env.SerializeToString()) == "bad_node_id"
    for seqs in ([], [5, 5], [9, 3], list(range(wire.MAX_RESEND_SEQS + 1))):
        env = envelope(data)
        env.resend_request.seqs[:] = seqs
        assert reason(env.SerializeToString()) == "bad_field"
    env.resend_request.seqs[:] = list(range(wire.MAX_RESEND_SEQS))
    assert len(wire.unpack(env.SerializeToString(), LIMITS).seqs) == wire.MAX_RESEND_SEQS  # type: ignore[union-attr]


def test_pack_resend_request_refuses_what_unpack_would():
    for seqs in ([], [2, 1], list(range(wire.MAX_RESEND_SEQS + 1))):
        with pytest.raises(ValueError):
            wire.pack_resend_request(node_id=0, origin=1, seqs=seqs)
