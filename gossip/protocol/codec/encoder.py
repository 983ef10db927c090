"""The encoder: residual in, the codec fields of one ``GradUpdate`` out.

One call to :meth:`Encoder.encode`:

1. chooses the density (``codec.density``, or DGC's sparsity warm-up: over the
   first ``codec.warmup_steps`` encodes it falls log-linearly from 25 % to the
   target);
2. selects ~k = density x (elements of the tensors with >= ``codec.dense_below``
   elements) entries of the residual; the small tensors always travel whole, as
   dense segments with their own scales;
3. optionally caps the message's L2 norm at ``codec.clip_norm`` (local
   clipping; the excess stays in the residual and goes out later);
4. quantizes, decodes its own bytes, and subtracts exactly those decoded values
   from the residual, so sender and receivers agree to the bit;
5. codes the indices (``codec.index``) and fills the message.

It returns an :class:`Encoded`: the message and what it adds on every receiver (decoded by
the receivers' own decoder, on first use), so the sender applies exactly that to itself
without packing or unpacking its own bytes.

The generator behind random choices (``randomk``; ``sampled_topk``'s sample) is seeded per
peer (``make_encoder(..., peer=id)``): otherwise every peer would pick the same indices.

``encode(ef, density=1.0)`` sends *everything* (all segments dense) and, unless
``values`` says otherwise, in fp32, so the residual becomes exactly zero: the
final flush that brings peers into agreement. That message is ``4 x numel`` bytes
plus ~1 KiB, so ``security.max_message_bytes`` (64 MiB) must exceed it (models up
to ~16M parameters at the default).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from gossip._proto import gossip_pb2 as pb
from gossip.config import CodecConfig
from gossip.observe.log import get_logger
from gossip.protocol.codec import index as index_codecs
from gossip.protocol.codec import kernel
from gossip.protocol.codec.base import SELECTORS, VALUE_CODECS, chunk_lengths
from gossip.protocol.codec.decoder import decode_update
from gossip.protocol.codec.feedback import ErrorFeedback
from gossip.protocol.codec.layout import Layout
from gossip.protocol.codec.powersgd import PowerSGD
from gossip.protocol.codec.select import gather

log = get_logger(__name__)

WARMUP_START_DENSITY = 0.25  # DGC: 75 % sparsity in the first warm-up step


def _aranges(ranges: np.ndarray) -> np.ndarray:
    if not len(ranges):
        return np.zeros(0, dtype=np.int64)
    sizes = ranges[:, 1] - ranges[:, 0]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return np.repeat(ranges[:, 0] - starts, sizes) + np.arange(int(sizes.sum()), dtype=np.int64)


class Sent(NamedTuple):
    """What an update adds on every receiver: ``flat.index_add_(0, indices, values)``, or
    ``flat += values`` when ``indices`` is None (it covers every element)."""

    indices: torch.Tensor | None  # int64, strictly increasing
    values: torch.Tensor          # float32


class Encoded:
    """One encoded update: ``msg`` (the codec fields to put on the wire) and :attr:`sent`.

    ``own``: the message whose decoding the sender counts as sent, when a wrapper puts another
    one on the wire (a simulated attacker, :mod:`gossip.sim.attacks`); ``step`` / ``confidence``:
    header values such a wrapper claims instead of the sender's own (None: the truth).
    """

    def __init__(self, msg: pb.GradUpdate, numel: int, *, own: pb.GradUpdate | None = None,
                 step: int | None = None, confidence: float | None = None) -> None:
        self.msg, self.numel, self.own = msg, numel, own
        self.step, self.confidence = step, confidence

    @functools.cached_property
    def sent(self) -> Sent:
        """What ``own`` (default ``msg``) adds on a receiver, by the receivers' decoder (computed once)."""
        indices, values = decode_update(self.msg if self.own is None else self.own, self.numel)
        return Sent(None if indices is None else torch.from_numpy(indices), torch.from_numpy(values))


class UpdateEncoder(Protocol):
    """What the runtime needs of an encoder: :class:`Encoder`, or a wrapper around one."""

    def encode(self, ef: ErrorFeedback, *, density: float | None = None,
               values: str | None = None) -> Encoded: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Encoder:
    def __init__(self, cfg: CodecConfig, layout: Layout, *, seed: int = 0, peer: int | None = None) -> None:
        self.cfg = cfg
        self.layout = layout
        self.sparse_ranges, self.dense_ranges = layout.ranges(cfg.dense_below)
        self.eligible = int((self.sparse_ranges[:, 1] - self.sparse_ranges[:, 0]).sum())
        self.dense_index = _aranges(self.dense_ranges)
        self.dense_chunks = chunk_lengths(self.dense_ranges[:, 1] - self.dense_ranges[:, 0], cfg.chunk)
        self.all_ranges = layout.tensor_ranges()
        # one stream per (seed, peer): peers must not pick the same random indices
        self.rng = np.random.default_rng(seed if peer is None else (seed, peer))
        self.calls = 0
        self.powersgd = (PowerSGD(layout, cfg.powersgd_rank, cfg.dense_below, seed)
                         if cfg.select == "powersgd" else None)
        kernel.available()  # compile or load the kernels now, not inside the first encode

    def density(self) -> float:
        """The density the next ``encode()`` without an explicit one will use."""
        target, steps = self.cfg.density, self.cfg.warmup_steps
        if self.calls >= steps or target >= WARMUP_START_DENSITY:
            return target
        frac = self.calls / steps
        return float(WARMUP_START_DENSITY ** (1 - frac) * target ** frac)

    def encode(self, ef: ErrorFeedback, *, density: float | None = None,
               values: str | None = None) -> Encoded:
        """Select, quantize, subtract what is sent from ``ef.residual``; returns the codec fields
        (``.msg``) and what they decode to (``.sent``).

        ``density`` overrides the configured one (1.0: everything); ``values`` overrides
        ``codec.values`` (default for density >= 1: ``"fp32"``, a lossless flush).
        """
        full = density is not None and density >= 1.0
        if density is None:
            density = self.density()
            self.calls += 1
        value_name = values or ("fp32" if full else self.cfg.values)
        residual = ef.residual
        msg = pb.GradUpdate(value_codec=pb.ValueCodec.ValueType(VALUE_CODECS.value_of(value_name)), numel=self.layout.numel,
                            chunk=self.cfg.chunk)
        if full or self.cfg.select == "dense" or self.eligible == 0:
            msg.selection = pb.SELECTION_DENSE
            indices = np.zeros(0, dtype=np.int64)
            segments = self.all_ranges
            sparse_values = np.zeros(0, dtype=np.float32)
        elif self.powersgd is not None:
            msg.selection = pb.SELECTION_POWERSGD
            self._clean(residual)
            msg.low_rank.extend(self.powersgd.compress(residual, msg.value_codec))
            indices, sparse_values = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
            segments = self.powersgd.dense_ranges
        else:
            msg.selection = pb.Selection.ValueType(SELECTORS.value_of(self.cfg.select))
            k = min(self.eligible, max(1, round(density * self.eligible)))
            indices, sparse_values = SELECTORS.by_name(self.cfg.select).select(
                residual, self.sparse_ranges, k, self.rng)
            segments = self.dense_ranges
        dense_index = self.dense_index if segments is self.dense_ranges else _aranges(segments)
        self._send_values(msg, ef, indices, sparse_values, segments, dense_index, value_name)
        if indices.size:
            payload = index_codecs.encode_indices(self.cfg.index, indices, self.layout.numel,
                                                  self.cfg.zlib_level)
            msg.count = indices.size
            msg.index_encoding = pb.IndexEncoding.ValueType(payload.encoding)
            msg.indices, msg.index_aux, msg.index_param = payload.main, payload.aux, payload.param
        if not self.cfg.error_feedback:
            residual.zero_()
        return Encoded(msg, self.layout.numel)

    def _send_values(self, msg: pb.GradUpdate, ef: ErrorFeedback, indices: np.ndarray,
                     sparse_values: np.ndarray, segments: np.ndarray, dense_index: np.ndarray,
                     value_name: str) -> None:
        residual = ef.residual
        whole = dense_index.size == self.layout.numel  # everything dense: no fancy indexing
        dense_values = residual.detach().cpu().numpy().copy() if whole else gather(residual, dense_index)
        sent = np.concatenate([sparse_values, dense_values]) if sparse_values.size else dense_values
        if not np.isfinite(sent).all():  # a diverged local step must not poison the neighbours
            bad = ~np.isfinite(sent)
            log.warning("residual_non_finite", count=int(bad.sum()))
            sent[bad] = 0.0
        target = sent
        if self.cfg.clip_norm > 0:
            norm = float(np.sqrt(np.dot(sent.astype(np.float64), sent.astype(np.float64))))
            if norm > self.cfg.clip_norm:
                target = sent * np.float32(self.cfg.clip_norm / norm)
        codec = VALUE_CODECS.by_name(value_name)
        if segments is self.dense_ranges:  # groups are cut independently: the dense part never changes
            chunks = np.concatenate([chunk_lengths(np.array([indices.size]), self.cfg.chunk), self.dense_chunks])
        else:
            chunks = chunk_lengths(np.concatenate([[indices.size], segments[:, 1] - segments[:, 0]]), self.cfg.chunk)
        payload, scales = codec.encode(target, chunks)
        decoded = codec.decode(payload, scales, chunks)
        left = sent - decoded
        if whole:
            residual.copy_(torch.from_numpy(left))
        else:
            positions = np.concatenate([indices, dense_index]) if indices.size else dense_index
            _put(residual, positions, left)
            if ef.velocity is not None:
                _put(ef.velocity, positions, np.zeros_like(left))
        msg.values = payload
        msg.scales.extend(scales.tolist())
        msg.dense_offsets.extend(segments[:, 0].tolist())
        msg.dense_lengths.extend((segments[:, 1] - segments[:, 0]).tolist())

    @staticmethod
    def _clean(residual: torch.Tensor) -> None:
        if not bool(torch.isfinite(residual).all()):
            log.warning("residual_non_finite", count=int((~torch.isfinite(residual)).sum()))
            torch.nan_to_num_(residual, nan=0.0, posinf=0.0, neginf=0.0)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"calls": self.calls, "rng": self.rng.bit_generator.state}
        if self.powersgd is not None:
            state["powersgd"] = self.powersgd.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state.get("calls", 0))
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]
        if self.powersgd is not None and "powersgd" in state:
            self.powersgd.load_state_dict(state["powersgd"])


def _put(target: torch.Tensor, positions: np.ndarray, values: np.ndarray) -> None:
    if target.device.type == "cpu":
        target.detach().numpy()[positions] = values
    else:
        target[torch.from_numpy(positions).to(target.device)] = torch.from_numpy(values).to(target.device)


def make_encoder(cfg: CodecConfig, layout: Layout, *, seed: int = 0, peer: int | None = None) -> Encoder:
    """The encoder for ``codec`` settings and a model layout.

    ``seed``: PowerSGD's initial factors and, with ``peer``, the random choices' generator
    (a peer of a swarm passes ``(cfg.seed, peer_id)``; without ``peer`` the generator is
    ``default_rng(seed)``).
    """
    if math.isnan(cfg.density):
        raise ValueError("codec.density is NaN")
    return Encoder(cfg, layout, seed=seed, peer=peer)
