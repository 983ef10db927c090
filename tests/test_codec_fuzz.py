"""Property-based: whatever bytes a neighbour sends, unpack returns a sane message or a ProtocolError.

Three sources of hostile input: random bytes, byte-level mutations of valid messages of
every codec, and valid protobuf with random values in the codec fields. Anything but a
ProtocolError with a known, specific reason (not ``internal_error``) fails the test, and
so does any accepted message that breaks the receiver's invariants.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip._proto import gossip_pb2 as pb
from gossip.config import CodecConfig
from gossip.errors import ProtocolError
from gossip.protocol import wire
from gossip.protocol.codec import ErrorFeedback, Layout, make_encoder

LAYOUT = Layout.from_shapes([("w", (16, 100)), ("b", (16,)), ("v", (1200,)), ("c", (30,))])
LIMITS = wire.Limits(numel=LAYOUT.numel, schema_hash=LAYOUT.schema_hash, max_bytes=1 << 16, peers=3)
CODECS = [
    CodecConfig(dense_below=64, density=0.05),
    CodecConfig(dense_below=64, density=0.05, index="rice", values="int4", chunk=7),
    CodecConfig(dense_below=64, density=0.3, index="delta_zlib", values="sign"),
    CodecConfig(dense_below=64, density=0.05, index="bitmap_zlib", values="fp16"),
    CodecConfig(dense_below=64, select="randomk", density=0.1, values="fp32"),
    CodecConfig(dense_below=64, select="dense", values="int8", chunk=100),
    CodecConfig(dense_below=64, select="powersgd", powersgd_rank=2, values="fp16"),
]
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_messages() -> list[bytes]:
    g = torch.Generator().manual_seed(0)
    out = []
    for seq, cfg in enumerate(CODECS):
        ef = ErrorFeedback(LAYOUT.numel)
        ef.residual.copy_(torch.randn(LAYOUT.numel, generator=g) * torch.rand(LAYOUT.numel, generator=g) ** 2)
        out.append(wire.pack_update(make_encoder(cfg, LAYOUT).encode(ef), node_id=1, seq=seq, step=3, epoch=0,
                                    confidence=0.5, schema_hash=LAYOUT.schema_hash))
    out.append(wire.pack_hello(node_id=2, schema_hash=LAYOUT.schema_hash, config_hash="c0ffee", address="tcp://h:1",
                               epochs=2))
    out.append(wire.pack_done(node_id=0, last_seq=4, complete=True))
    out.append(wire.pack_state_request(node_id=0, schema_hash=LAYOUT.schema_hash))
    out += wire.pack_state_chunks(torch.arange(LAYOUT.numel, dtype=torch.float32), node_id=1, seq=2, step=0,
                                  epoch=0, schema_hash=LAYOUT.schema_hash, chunk_bytes=4000)[:2]
    return out


VALID = _valid_messages()


def check(data: bytes) -> None:
    """unpack(data) is a well-formed message or a specific ProtocolError; nothing else."""
    try:
        msg = wire.unpack(data, LIMITS)
    except ProtocolError as exc:
        assert exc.reason in wire.REASONS and exc.reason != "internal_error", str(exc)
        return
    if isinstance(msg, wire.DecodedUpdate):
        assert 0 <= msg.node_id < LIMITS.peers and 0.0 <= msg.confidence <= 1.0
        assert msg.values.dtype == torch.float32 and bool(torch.isfinite(msg.values).all())
        if msg.indices is None:
            assert msg.values.numel() == LAYOUT.numel
        else:
            idx = msg.indices
            assert idx.dtype == torch.int64 and idx.numel() == msg.values.numel()
            if idx.numel():
                assert int(idx[0]) >= 0 and int(idx[-1]) < LAYOUT.numel and bool((idx[1:] > idx[:-1]).all())
            flat = torch.zeros(LAYOUT.numel)
            flat.index_add_(0, idx, msg.values)  # what the runtime does must not fail
    elif isinstance(msg, wire.StateChunk):
        assert msg.offset + msg.values.numel() <= LAYOUT.numel and bool(torch.isfinite(msg.values).all())
    else:
        assert 0 <= msg.node_id < LIMITS.peers


def test_every_valid_message_is_accepted():
    for data in VALID:
        msg = wire.unpack(data, LIMITS)
        check(data)
        assert not isinstance(msg, ProtocolError)


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes(data):
    check(data)


@FUZZ
@given(base=st.sampled_from(VALID), data=st.data())
def test_mutated_valid_messages(base, data):
    buf = bytearray(base)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice"]))
        pos = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[pos] ^= data.draw(st.integers(1, 255))
        elif op == "truncate":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[pos:pos + data.draw(st.integers(1, 16))]
        else:  # splice in a piece of another valid message
            other = data.draw(st.sampled_from(VALID))
            start = data.draw(st.integers(0, len(other) - 1))
            buf[pos:pos] = other[start:start + data.draw(st.integers(1, 64))]
    check(bytes(buf))


u32 = st.integers(0, 2**32 - 1)
u64 = st.one_of(st.integers(0, 3000), st.integers(0, 2**64 - 1))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.just(math.nan))
FIELDS = {
    "numel": u64, "count": u64, "index_param": st.one_of(st.integers(0, 40), u32), "chunk": u32,
    "selection": st.integers(0, 8), "value_codec": st.integers(0, 8), "index_encoding": st.integers(0, 8),
    "indices": st.binary(max_size=300), "index_aux": st.binary(max_size=300), "values": st.binary(max_size=3000),
    "confidence_score": floats, "node_id": st.integers(0, 5), "version": st.integers(0, 2),
}


@FUZZ
@given(base=st.sampled_from(VALID[:len(CODECS)]), data=st.data())
def test_random_codec_fields(base, data):
    env = pb.Envelope.FromString(base)
    u = env.update
    for name in data.draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=4, unique=True)):
        setattr(u, name, data.draw(FIELDS[name]))
    if data.draw(st.booleans()):
        del u.scales[:]
        u.scales.extend(data.draw(st.lists(floats, max_size=40)))
    if data.draw(st.booleans()):
        del u.dense_offsets[:], u.dense_lengths[:]
        u.dense_offsets.extend(data.draw(st.lists(u64, max_size=8)))
        u.dense_lengths.extend(data.draw(st.lists(u64, max_size=8)))
    if u.low_rank and data.draw(st.booleans()):
        block = u.low_rank[data.draw(st.integers(0, len(u.low_rank) - 1))]
        block.offset, block.rows, block.cols = data.draw(u64), data.draw(u32), data.draw(u32)
        block.rank = data.draw(st.integers(0, 70))
    check(env.SerializeToString())


def test_known_nasty_cases():
    env = pb.Envelope.FromString(VALID[0])
    env.update.count = 2**64 - 1
    check(env.SerializeToString())
    env = pb.Envelope.FromString(VALID[0])
    env.update.index_param = 32
    env.update.indices = b"\xff" * 50
    check(env.SerializeToString())
    env = pb.Envelope.FromString(VALID[0])
    env.update.dense_offsets[0] = 2**64 - 1
    check(env.SerializeToString())
    assert np.isfinite(np.float32(1e38) * np.float32(1.0))
