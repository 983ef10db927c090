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
from gossip.protocol.codec.dense import SNAPSHOT_VALUES, encode_dense

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
        out.append(wire.pack_update(make_encoder(cfg, LAYOUT).encode(ef).msg, node_id=1, seq=seq, step=3, epoch=0,
                                    confidence=0.5, schema_hash=LAYOUT.schema_hash))
    out.append(wire.pack_hello(node_id=2, schema_hash=LAYOUT.schema_hash, config_hash="c0ffee", address="tcp://h:1",
                               epochs=2))
    out.append(wire.pack_done(node_id=0, last_seq=4, complete=True))
    out.append(wire.pack_state_request(node_id=0, schema_hash=LAYOUT.schema_hash))
    out += wire.pack_state_chunks(torch.arange(LAYOUT.numel, dtype=torch.float32), node_id=1, seq=2, step=0,
                                  epoch=0, schema_hash=LAYOUT.schema_hash, chunk_bytes=4000)[:2]
    for values in SNAPSHOT_VALUES:  # codistill's ModelSnapshot: a whole vector, validated like an update
        out.append(wire.pack_snapshot(encode_dense(torch.randn(LAYOUT.numel, generator=g), values, chunk=100),
                                      node_id=2, version=7, step=9, epoch=1, schema_hash=LAYOUT.schema_hash))
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
    elif isinstance(msg, wire.Snapshot):
        assert msg.values.numel() == LAYOUT.numel and bool(torch.isfinite(msg.values).all())
        assert 0 <= msg.node_id < LIMITS.peers
    else:
        assert 0 <= msg.node_id < LIMITS.peers


def test_every_valid_message_is_accepted():
    kinds = ([wire.DecodedUpdate] * len(CODECS) + [wire.Hello, wire.Done, wire.StateRequest] + [wire.StateChunk] * 2
             + [wire.Snapshot] * len(SNAPSHOT_VALUES))
    for i, (data, kind) in enumerate(zip(VALID, kinds, strict=True)):
        check(data)
        msg = wire.unpack(data, LIMITS)  # raises (and fails the test) on a rejection
        assert type(msg) is kind, (i, msg)
        if isinstance(msg, wire.DecodedUpdate):
            assert (msg.node_id, msg.seq, msg.step, msg.epoch, msg.confidence) == (1, i, 3, 0, 0.5)
            assert msg.wire_bytes == len(data) and bool(msg.values.abs().sum() > 0)
        elif isinstance(msg, wire.Hello):
            assert (msg.node_id, msg.config_hash, msg.address, msg.epochs) == (2, "c0ffee", "tcp://h:1", 2)
        elif isinstance(msg, wire.Done):
            assert (msg.node_id, msg.last_seq, msg.complete) == (0, 4, True)
        elif isinstance(msg, wire.StateChunk):
            expected = torch.arange(msg.offset, msg.offset + msg.values.numel(), dtype=torch.float32)
            assert msg.total == LAYOUT.numel and msg.values.numel() > 0 and torch.equal(msg.values, expected)
        elif isinstance(msg, wire.Snapshot):
            assert (msg.node_id, msg.version, msg.step, msg.epoch) == (2, 7, 9, 1) and msg.wire_bytes == len(data)


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


def _reason(data: bytes) -> str:
    """The ProtocolError reason of a rejected message (fails if the message is accepted)."""
    try:
        msg = wire.unpack(data, LIMITS)
    except ProtocolError as exc:
        assert exc.reason in wire.REASONS
        return exc.reason
    raise AssertionError(f"accepted: {msg}")


def test_known_nasty_cases():
    env = pb.Envelope.FromString(VALID[0])
    env.update.count = 2**64 - 1
    assert _reason(env.SerializeToString()) == "count_mismatch"
    env = pb.Envelope.FromString(VALID[0])
    env.update.index_param = 32
    env.update.indices = b"\xff" * 50
    assert _reason(env.SerializeToString()) == "index_out_of_range"
    env = pb.Envelope.FromString(VALID[0])
    env.update.dense_offsets[0] = 2**64 - 1
    assert _reason(env.SerializeToString()) == "bad_segment"


def _int8_update(level: int, scale: float) -> bytes:
    """The dense int8 message of CODECS[5] with every value at ``level`` and every scale ``scale``."""
    env = pb.Envelope.FromString(VALID[5])
    u = env.update
    assert CODECS[5].values == "int8" and len(u.scales) > 0
    u.values = bytes([level & 0xFF]) * len(u.values)
    u.scales[:] = [scale] * len(u.scales)
    return env.SerializeToString()


def test_a_scale_that_overflows_float32_after_scaling_is_non_finite():
    big = float(np.float32(1e38))  # finite in float32, so it passes the bad_scale check ...
    ok = wire.unpack(_int8_update(1, big), LIMITS)  # ... and 1 x 1e38 is still finite: accepted
    assert isinstance(ok, wire.DecodedUpdate) and bool(torch.isfinite(ok.values).all())
    assert float(ok.values.max()) == big
    assert _reason(_int8_update(127, big)) == "non_finite"  # 127 x 1e38 > float32 max: rejected
    assert _reason(_int8_update(-127, big)) == "non_finite"
    assert _reason(_int8_update(1, float("inf"))) == "bad_scale"
    assert _reason(_int8_update(1, -1.0)) == "bad_scale"
