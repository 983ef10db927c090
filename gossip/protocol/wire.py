"""Wire format: pack messages into protobuf ``Envelope`` bytes, and unpack untrusted ones.

Every frame is one ``gossip.v1.Envelope`` (spec and field meanings:
``proto/gossip.proto``). :func:`unpack` is the only door for a neighbour's bytes:
it checks the size *before* parsing, then every field against the receiver's own
:class:`Limits`, and returns one of the small dataclasses below. It raises
nothing but :class:`~gossip.errors.ProtocolError`, whose ``reason`` is one of
:data:`REASONS` (the runtime counts them per reason).

After editing ``proto/gossip.proto``, regenerate the code with
``python -m gossip.proto --regenerate`` (see :mod:`gossip.protocol.generate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gossip._proto import gossip_pb2 as pb
from gossip.errors import ProtocolError
from gossip.observe.log import get_logger
from gossip.protocol.codec.decoder import decode_update
from gossip.protocol.constants import PROTOCOL_VERSION, REASONS, reject

log = get_logger(__name__)

__all__ = [
    "MAX_RESEND_SEQS", "MAX_STATE_ABOVE", "PROTOCOL_VERSION", "REASONS", "DecodedUpdate", "Done", "Heartbeat", "Hello", "Limits",
    "Message", "ResendRequest", "Snapshot", "StateChunk", "StateRequest", "pack_done", "pack_heartbeat",
    "pack_hello", "pack_resend_request", "pack_snapshot", "pack_state_chunks", "pack_state_request",
    "pack_update", "relay", "unpack", "unpack_envelope",
]

MAX_CONFIG_HASH_CHARS = 64
MAX_ADDRESS_CHARS = 256
STATE_CHUNK_BYTES = 4 << 20  # fp32 bytes per StateChunk: 1 Mi elements, well under any sane max_message_bytes
# Seqs per ResendRequest: bounds the work one request can ask of its addressee (and its frame is
# ~10 bytes per seq); a receiver with more gaps asks again on its next round (gossip.runtime.resend).
MAX_RESEND_SEQS = 64
MAX_STATE_ABOVE = 4096  # out-of-order seqs per origin a state may list as held (StateChunk.applied)
MAX_STALLED_MS = 3_600_000  # Heartbeat.stalled_ms: an hour; more is a lie


@dataclass(frozen=True)
class Limits:
    """What the receiver knows, against which every message is checked."""

    numel: int        # length of our flat parameter vector
    schema_hash: int  # our Layout.schema_hash
    max_bytes: int    # security.max_message_bytes
    peers: int        # node ids are 0 .. peers-1


@dataclass(frozen=True)
class DecodedUpdate:
    node_id: int
    seq: int
    step: int
    epoch: int
    confidence: float
    final: bool
    indices: torch.Tensor | None  # int64, strictly increasing; None => values is dense (numel)
    values: torch.Tensor          # fp32, finite
    wire_bytes: int
    from_id: int = -1             # Envelope.from_id: who put the bytes on the link
    hops: int = 0                 # relays so far


@dataclass(frozen=True)
class Hello:
    node_id: int
    schema_hash: int
    config_hash: str
    address: str
    epochs: int
    step: int = 0


@dataclass(frozen=True)
class Heartbeat:
    node_id: int
    step: int
    epoch: int
    heard_from_you: int = 0
    step_when_met: int = 0
    stalled_ms: int = 0  # its recent loop lag or inbox backlog (gossip.runtime.stall)


@dataclass(frozen=True)
class Done:
    node_id: int
    last_seq: int   # -1: it sent no update
    complete: bool  # False: finished sending; True: also has everything from every live peer


@dataclass(frozen=True)
class StateRequest:
    node_id: int


@dataclass(frozen=True)
class StateChunk:
    node_id: int
    seq: int
    step: int
    epoch: int
    offset: int            # first element of ``values`` in the flat vector
    values: torch.Tensor   # fp32, finite
    total: int             # numel of the whole vector
    applied: tuple[tuple[int, int, tuple[int, ...]], ...] = ()  # (origin, floor, seqs above) the state holds

    @property
    def last(self) -> bool:
        return self.offset + self.values.numel() == self.total


@dataclass(frozen=True)
class Snapshot:
    node_id: int
    version: int
    step: int
    epoch: int
    values: torch.Tensor   # fp32, finite, the whole flat parameter vector
    wire_bytes: int


@dataclass(frozen=True)
class ResendRequest:
    node_id: int            # the requester
    origin: int             # whose updates are missing (the addressee answers only for itself)
    seqs: tuple[int, ...]   # strictly increasing, 1 .. MAX_RESEND_SEQS of them


Message = DecodedUpdate | Hello | Heartbeat | Done | StateRequest | StateChunk | ResendRequest | Snapshot


# ---------------------------------------------------------------- packing (trusted, our own data)


def _envelope(from_id: int) -> pb.Envelope:
    return pb.Envelope(version=PROTOCOL_VERSION, from_id=from_id)


def pack_update(update: pb.GradUpdate, *, node_id: int, seq: int, step: int, epoch: int,
                confidence: float, schema_hash: int, final: bool = False) -> bytes:
    """An Envelope around ``update`` (the encoder's codec fields) with its header filled in."""
    if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
        raise ValueError(f"confidence must be in [0, 1], got {confidence}")
    env = _envelope(node_id)
    env.update.CopyFrom(update)
    head = env.update
    head.version, head.node_id, head.seq, head.step, head.epoch = PROTOCOL_VERSION, node_id, seq, step, epoch
    head.schema_hash, head.confidence_score, head.final = schema_hash, confidence, final
    return env.SerializeToString()


def pack_hello(*, node_id: int, schema_hash: int, config_hash: str, address: str, epochs: int,
               step: int = 0) -> bytes:
    env = _envelope(node_id)
    env.hello.CopyFrom(pb.Hello(node_id=node_id, schema_hash=schema_hash, config_hash=config_hash,
                                address=address, epochs=epochs, step=step))
    return env.SerializeToString()


def pack_heartbeat(*, node_id: int, step: int, epoch: int, heard_from_you: int = 0, step_when_met: int = 0,
                   stalled_ms: int = 0) -> bytes:
    env = _envelope(node_id)
    env.heartbeat.CopyFrom(pb.Heartbeat(node_id=node_id, step=step, epoch=epoch, heard_from_you=heard_from_you,
                                        step_when_met=step_when_met, stalled_ms=min(stalled_ms, MAX_STALLED_MS)))
    return env.SerializeToString()


def pack_done(*, node_id: int, last_seq: int, complete: bool = False) -> bytes:
    env = _envelope(node_id)
    env.done.CopyFrom(pb.Done(node_id=node_id, last_seq=last_seq, complete=complete))
    return env.SerializeToString()


def pack_state_request(*, node_id: int, schema_hash: int) -> bytes:
    env = _envelope(node_id)
    env.state_request.CopyFrom(pb.StateRequest(node_id=node_id, schema_hash=schema_hash))
    return env.SerializeToString()


def pack_resend_request(*, node_id: int, origin: int, seqs: list[int] | tuple[int, ...]) -> bytes:
    """Ask ``origin`` to send its updates ``seqs`` again (strictly increasing, at most MAX_RESEND_SEQS)."""
    if not 1 <= len(seqs) <= MAX_RESEND_SEQS or any(b <= a for a, b in zip(seqs, seqs[1:], strict=False)):
        raise ValueError(f"resend seqs must be 1..{MAX_RESEND_SEQS} strictly increasing, got {len(seqs)}")
    env = _envelope(node_id)
    env.resend_request.CopyFrom(pb.ResendRequest(node_id=node_id, origin=origin, seqs=seqs))
    return env.SerializeToString()


def pack_state_chunks(flat: torch.Tensor, *, node_id: int, seq: int, step: int, epoch: int,
                      schema_hash: int, chunk_bytes: int = STATE_CHUNK_BYTES,
                      applied: dict[int, list[int]] | None = None) -> list[bytes]:
    """The whole flat vector as StateChunk messages of at most ``chunk_bytes`` of data each.

    ``applied`` is ``{origin: [floor, *seqs above]}`` (:meth:`gossip.runtime.ledger.Ledger.state_dict`):
    the others' updates folded into ``flat``; it travels in the first chunk. Past
    ``MAX_STATE_ABOVE`` out-of-order seqs of one origin only the lowest are listed.
    """
    data = flat.detach().to(torch.float32).cpu().contiguous().numpy().astype("<f4", copy=False)
    per = max(1, chunk_bytes // 4)
    held = [pb.Applied(origin=o, floor=floor, above=above[:MAX_STATE_ABOVE])
            for o, (floor, *above) in sorted((applied or {}).items()) if o != node_id]
    out = []
    for offset in range(0, max(1, data.size), per):
        env = _envelope(node_id)
        env.state_chunk.CopyFrom(pb.StateChunk(
            node_id=node_id, schema_hash=schema_hash, seq=seq, step=step, epoch=epoch,
            offset=offset, total=data.size, data=data[offset:offset + per].tobytes(),
            applied=held if offset == 0 else ()))
        out.append(env.SerializeToString())
    return out


def pack_snapshot(weights: pb.GradUpdate, *, node_id: int, version: int, step: int, epoch: int,
                  schema_hash: int) -> bytes:
    """A ModelSnapshot around ``weights`` (the whole vector as one dense segment, see
    :func:`gossip.protocol.codec.dense.encode_dense`)."""
    env = _envelope(node_id)
    env.snapshot.CopyFrom(pb.ModelSnapshot(node_id=node_id, version=version, step=step, epoch=epoch,
                                           schema_hash=schema_hash, weights=weights))
    return env.SerializeToString()


def relay(message: bytes | pb.Envelope, *, from_id: int) -> bytes:
    """Re-address a (validated) message for forwarding: ``from_id`` = us, ``hops`` + 1.

    Pass the Envelope :func:`unpack_envelope` returned to skip a second parse; it is
    re-addressed in place (the receiver is done with it).
    """
    env = pb.Envelope.FromString(message) if isinstance(message, bytes) else message
    env.from_id = from_id
    env.hops += 1
    return env.SerializeToString()


# ---------------------------------------------------------------- unpacking (untrusted)


def _node(node_id: int, limits: Limits, what: str) -> int:
    if not 0 <= node_id < limits.peers:
        reject("bad_node_id", f"{what} {node_id} not in 0..{limits.peers - 1}")
    return int(node_id)


def _schema(schema_hash: int, limits: Limits) -> None:
    if schema_hash != limits.schema_hash:
        reject("schema_mismatch", f"schema hash {schema_hash:#x}, ours {limits.schema_hash:#x}")


def _update(env: pb.Envelope, limits: Limits, size: int) -> DecodedUpdate:
    msg = env.update
    if msg.version != PROTOCOL_VERSION:
        reject("bad_version", f"update version {msg.version}, ours {PROTOCOL_VERSION}")
    node_id = _node(msg.node_id, limits, "node_id")
    _schema(msg.schema_hash, limits)
    confidence = float(msg.confidence_score)
    if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
        reject("bad_confidence", f"confidence {confidence}")
    indices, values = decode_update(msg, limits.numel)
    return DecodedUpdate(
        node_id=node_id, seq=int(msg.seq), step=int(msg.step), epoch=int(msg.epoch), confidence=confidence,
        final=bool(msg.final), indices=None if indices is None else torch.from_numpy(indices),
        values=torch.from_numpy(values), wire_bytes=size, from_id=int(env.from_id), hops=int(env.hops))


def _hello(env: pb.Envelope, limits: Limits) -> Hello:
    msg = env.hello
    if len(msg.config_hash) > MAX_CONFIG_HASH_CHARS or len(msg.address) > MAX_ADDRESS_CHARS:
        reject("bad_field", "hello config_hash or address too long")
    # A different schema is returned, not rejected: the runtime stops with a clear message.
    return Hello(node_id=_node(msg.node_id, limits, "node_id"), schema_hash=int(msg.schema_hash),
                 config_hash=msg.config_hash, address=msg.address, epochs=int(msg.epochs), step=int(msg.step))


def _state_chunk(env: pb.Envelope, limits: Limits) -> StateChunk:
    msg = env.state_chunk
    node_id = _node(msg.node_id, limits, "node_id")
    _schema(msg.schema_hash, limits)
    if msg.total != limits.numel:
        reject("schema_mismatch", f"state of {msg.total} elements, ours {limits.numel}")
    if len(msg.data) % 4:
        reject("count_mismatch", f"{len(msg.data)} state bytes is not whole fp32 values")
    count = len(msg.data) // 4
    if msg.offset > limits.numel or count > limits.numel - msg.offset:
        reject("index_out_of_range", f"state chunk {msg.offset}+{count} past numel {limits.numel}")
    values = np.frombuffer(msg.data, dtype="<f4").astype(np.float32)
    if not np.isfinite(values).all():
        reject("non_finite", "state chunk value")
    return StateChunk(node_id=node_id, seq=int(msg.seq), step=int(msg.step), epoch=int(msg.epoch),
                      offset=int(msg.offset), values=torch.from_numpy(values), total=int(msg.total),
                      applied=_applied(msg, node_id, limits))


def _applied(msg: pb.StateChunk, sender: int, limits: Limits) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
    out, origins = [], set()
    for held in msg.applied:
        origin = _node(held.origin, limits, "applied origin")
        if origin == sender or origin in origins:
            reject("bad_field", f"state lists origin {origin} twice or as its sender")
        origins.add(origin)
        above = tuple(int(s) for s in held.above)
        if len(above) > MAX_STATE_ABOVE or held.floor >= 1 << 62:
            reject("bad_field", f"state lists {len(above)} seqs above floor {held.floor} of origin {origin}")
        if any(b <= a for a, b in zip((held.floor, *above), above, strict=False)):
            reject("bad_field", f"state seqs of origin {origin} not strictly increasing above the floor")
        out.append((origin, int(held.floor), above))
    return tuple(out)


def _resend_request(env: pb.Envelope, limits: Limits) -> ResendRequest:
    msg = env.resend_request
    node_id = _node(msg.node_id, limits, "node_id")
    origin = _node(msg.origin, limits, "origin")
    if not 1 <= len(msg.seqs) <= MAX_RESEND_SEQS:
        reject("bad_field", f"resend request for {len(msg.seqs)} seqs, not 1..{MAX_RESEND_SEQS}")
    seqs = tuple(int(s) for s in msg.seqs)
    if any(b <= a for a, b in zip(seqs, seqs[1:], strict=False)):
        reject("bad_field", "resend seqs not strictly increasing")
    return ResendRequest(node_id=node_id, origin=origin, seqs=seqs)


def _snapshot(env: pb.Envelope, limits: Limits, size: int) -> Snapshot:
    msg = env.snapshot
    node_id = _node(msg.node_id, limits, "node_id")  # the dispatcher checks it is the sender's key
    _schema(msg.schema_hash, limits)
    if msg.weights.count or msg.weights.low_rank:
        reject("bad_field", "a snapshot is one dense segment, without sparse values or low-rank blocks")
    indices, values = decode_update(msg.weights, limits.numel)
    if indices is not None:
        reject("bad_segment", "a snapshot must cover the whole parameter vector")
    return Snapshot(node_id=node_id, version=int(msg.version), step=int(msg.step), epoch=int(msg.epoch),
                    values=torch.from_numpy(values), wire_bytes=size)


def _body(env: pb.Envelope, limits: Limits, size: int) -> Message:
    kind = env.WhichOneof("body")
    if kind == "update":
        return _update(env, limits, size)
    if kind == "hello":
        return _hello(env, limits)
    if kind == "heartbeat":
        if env.heartbeat.stalled_ms > MAX_STALLED_MS:
            reject("bad_field", f"heartbeat stalled_ms {env.heartbeat.stalled_ms}")
        return Heartbeat(node_id=_node(env.heartbeat.node_id, limits, "node_id"),
                         step=int(env.heartbeat.step), epoch=int(env.heartbeat.epoch),
                         heard_from_you=int(env.heartbeat.heard_from_you),
                         step_when_met=int(env.heartbeat.step_when_met), stalled_ms=int(env.heartbeat.stalled_ms))
    if kind == "done":
        if env.done.last_seq < -1:
            reject("bad_field", f"done last_seq {env.done.last_seq}")
        return Done(node_id=_node(env.done.node_id, limits, "node_id"), last_seq=int(env.done.last_seq),
                    complete=bool(env.done.complete))
    if kind == "state_request":
        _schema(env.state_request.schema_hash, limits)
        return StateRequest(node_id=_node(env.state_request.node_id, limits, "node_id"))
    if kind == "state_chunk":
        return _state_chunk(env, limits)
    if kind == "resend_request":
        return _resend_request(env, limits)
    if kind == "snapshot":
        return _snapshot(env, limits, size)
    reject("unknown_message", "envelope without a known body")


def unpack(data: bytes, limits: Limits) -> Message:
    """Validate and decode one frame from a neighbour; raises only ``ProtocolError``."""
    return unpack_envelope(data, limits)[0]


def unpack_envelope(data: bytes, limits: Limits, parsed: pb.Envelope | None = None) -> tuple[Message, pb.Envelope]:
    """:func:`unpack`, also returning the parsed Envelope (for :func:`relay`, without a second parse);
    ``parsed``: ``data`` already parsed by the caller (the size limit was checked before)."""
    try:
        try:
            size = len(data)
        except TypeError:
            reject("parse_error", f"{type(data).__name__} is not bytes")
        if size > limits.max_bytes:
            reject("too_large", f"{size} bytes > max_message_bytes {limits.max_bytes}")
        try:
            env = parsed if parsed is not None else pb.Envelope.FromString(bytes(data))
        except Exception as exc:  # DecodeError, or anything the C parser raises on garbage
            reject("parse_error", f"{type(exc).__name__}: {exc}")
        if env.version != PROTOCOL_VERSION:
            reject("bad_version", f"version {env.version}, ours {PROTOCOL_VERSION}")
        _node(env.from_id, limits, "from_id")
        return _body(env, limits, size), env
    except ProtocolError:
        raise
    except Exception as exc:  # a decoder bug must not take the peer down: count it like a bad message
        log.error("unpack_internal_error", error=f"{type(exc).__name__}: {exc}")
        raise ProtocolError("internal_error", f"{type(exc).__name__}: {exc}") from exc
