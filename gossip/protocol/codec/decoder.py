"""Decoding the codec fields of an untrusted ``GradUpdate`` into (indices, values).

Checks, in order (each failure is a :class:`~gossip.errors.ProtocolError` with
the reason in brackets): element count equals ours [schema_mismatch]; selection,
value codec and index encoding known [unknown_codec]; dense segments non-empty,
inside the vector, increasing and disjoint [bad_segment / count_mismatch];
low-rank blocks sane (:func:`gossip.protocol.codec.powersgd.decode_blocks`); sparse
indices exactly ``count``, strictly increasing, in range
(:mod:`gossip.protocol.codec.index`); as many scales as chunks, finite and >= 0
[bad_scale]; payload exactly the size the counts imply [count_mismatch]; every
decoded value finite [non_finite]; no element covered twice
[indices_not_increasing]. All work and memory is bounded by the message size
plus the receiver's own ``numel``.

The result is the receiver's recipe: ``flat.index_add_(0, indices, values)``, or
``flat.add_(values)`` when ``indices`` is None (the message covers every
element: dense or PowerSGD).
"""

from __future__ import annotations

import numpy as np

from gossip._proto import gossip_pb2 as pb
from gossip.protocol.codec.base import SELECTORS, VALUE_CODECS, chunk_lengths, reject
from gossip.protocol.codec.index import decode_indices
from gossip.protocol.codec.powersgd import decode_blocks

SLICE_LOOP_MAX = 4096  # up to this many dense segments, fill a dense result slice by slice


def _dense_indices(offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Every element of the (sorted, disjoint) segments, increasing."""
    before = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.repeat(offsets - before, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def _uint_array(field: object, numel: int, what: str) -> np.ndarray:
    n = len(field)  # type: ignore[arg-type]
    if n > numel:
        reject("bad_segment", f"{n} {what} for {numel} elements")
    return np.fromiter(field, dtype=np.uint64, count=n)  # type: ignore[call-overload]


def _segments(msg: pb.GradUpdate, numel: int) -> tuple[np.ndarray, np.ndarray]:
    offsets = _uint_array(msg.dense_offsets, numel, "dense offsets")
    lengths = _uint_array(msg.dense_lengths, numel, "dense lengths")
    if offsets.size != lengths.size:
        reject("count_mismatch", f"{offsets.size} dense offsets, {lengths.size} lengths")
    if offsets.size:
        if (offsets >= numel).any() or (lengths == 0).any() or (lengths > numel - offsets).any():
            reject("bad_segment", "a dense segment is empty or outside the vector")
        if (offsets[1:] < offsets[:-1] + lengths[:-1]).any():
            reject("bad_segment", "dense segments overlap or are not increasing")
    return offsets.astype(np.int64), lengths.astype(np.int64)


def _values(msg: pb.GradUpdate, count: int, lengths: np.ndarray) -> np.ndarray:
    codec = VALUE_CODECS.get(msg.value_codec)
    total = count + int(lengths.sum())
    if len(msg.values) != codec.payload_size(total):
        reject("count_mismatch", f"{len(msg.values)} value bytes for {total} values")
    chunks = chunk_lengths(np.concatenate([[count], lengths]), int(msg.chunk))
    expected = chunks.size if codec.has_scales else 0
    if len(msg.scales) != expected:
        reject("count_mismatch", f"{len(msg.scales)} scales, expected {expected}")
    scales = np.fromiter(msg.scales, dtype=np.float32, count=expected)
    if not (np.isfinite(scales).all() and (scales >= 0).all()):
        reject("bad_scale", "a scale is negative or not finite")
    values = codec.decode(msg.values, scales, chunks)
    if not np.isfinite(values).all():
        reject("non_finite", "a decoded value is not finite")
    return values


def _check_disjoint(indices: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Sparse indices must not fall inside any of the (sorted, disjoint) intervals.

    Returns how many sparse indices come before each interval (binary searches of
    the few intervals into the many indices, not the other way round).
    """
    before = np.searchsorted(indices, starts)
    if (np.searchsorted(indices, ends) != before).any():
        reject("indices_not_increasing", "a sparse index inside a dense segment or low-rank block")
    return before


def decode_update(msg: pb.GradUpdate, numel: int) -> tuple[np.ndarray | None, np.ndarray]:
    """(int64 indices or None, float32 values) of a validated update; rejects anything else."""
    with np.errstate(all="ignore"):  # hostile scales may overflow: caught as non_finite, not warned
        return _decode(msg, numel)


def _decode(msg: pb.GradUpdate, numel: int) -> tuple[np.ndarray | None, np.ndarray]:
    if msg.numel != numel:
        reject("schema_mismatch", f"numel {msg.numel}, ours {numel}")
    SELECTORS.check_known(msg.selection)
    offsets, lengths = _segments(msg, numel)
    blocks = decode_blocks(msg, numel)
    if blocks and msg.selection != pb.SELECTION_POWERSGD:
        reject("bad_field", "low-rank blocks in a non-PowerSGD update")
    indices = decode_indices(msg, numel)
    values = _values(msg, indices.size, lengths)
    count = indices.size

    starts, ends = offsets, offsets + lengths
    if blocks:
        block_starts = np.array([o for o, _ in blocks], dtype=np.int64)
        block_ends = block_starts + np.array([v.size for _, v in blocks], dtype=np.int64)
        starts = np.concatenate([starts, block_starts])
        ends = np.concatenate([ends, block_ends])
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], ends[order]
        if (starts[1:] < ends[:-1]).any():
            reject("bad_segment", "low-rank blocks overlap other blocks or dense segments")
    sparse_before = _check_disjoint(indices, starts, ends)

    covered = count + int((ends - starts).sum())
    if blocks or covered == numel:  # every element (or a PowerSGD message): return it dense
        out = np.zeros(numel, dtype=np.float32)
        out[indices] = values[:count]
        if offsets.size <= SLICE_LOOP_MAX:  # few long segments (a dense update): plain copies
            pos = count
            for start, length in zip(offsets.tolist(), lengths.tolist(), strict=True):
                out[start:start + length] = values[pos:pos + length]
                pos += length
        else:
            out[_dense_indices(offsets, lengths)] = values[count:]
        for start, block in blocks:
            out[start:start + block.size] = block
        return None, out
    if not offsets.size:
        return indices, values

    # Merge sparse pairs and dense segments into one increasing index list: every sparse
    # pair moves right by the dense elements before it, every dense element by the pairs.
    total_dense = int(lengths.sum())
    dense_before = np.concatenate([[0], np.cumsum(lengths)])
    between = np.diff(np.concatenate([sparse_before, [count]]))  # pairs after each segment
    sparse_pos = np.arange(count, dtype=np.int64)
    sparse_pos[sparse_before[0]:] += np.repeat(dense_before[1:], between)
    dense_pos = np.arange(total_dense, dtype=np.int64) + np.repeat(sparse_before, lengths)
    out_indices = np.empty(covered, dtype=np.int64)
    out_values = np.empty(covered, dtype=np.float32)
    out_indices[sparse_pos] = indices
    out_values[sparse_pos] = values[:count]
    out_indices[dense_pos] = _dense_indices(offsets, lengths)
    out_values[dense_pos] = values[count:]
    return out_indices, out_values
