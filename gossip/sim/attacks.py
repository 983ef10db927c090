"""Simulated hostile peers: what an attacker in ``security.attackers`` puts on the wire.

For robustness experiments only (``security.attack``; default ``none``). An attacker trains
honestly and keeps its own model honest (its error-feedback residual is decremented by what
an honest peer would have sent); only the bytes its neighbours receive lie. Every forged
update is well formed — it passes :func:`gossip.protocol.wire.unpack` — so only the receivers'
aggregation policy (a robust one of :mod:`gossip.aggregation`) stands between it and their models.

==================== ====================================================================
``sign_flip``        sends ``-SIGN_FLIP_SCALE x`` its honest update (pushes uphill, harder)
``gaussian``         sends dense N(0, σ²) noise on every element, σ = ``GAUSSIAN_STD_FACTOR``
                     x the RMS of its honest values (a norm ~10x an honest 1%-dense update)
``inflated_confidence``  claims confidence 1.0 and sends ``INFLATE_SCALE x`` its update:
                     grabs the largest weight under ``communication.aggregation=confidence``
``stale_replay``     records its first ``REPLAY_POOL`` updates, then sends those again and
                     again (fresh sequence numbers, so de-duplication cannot catch it;
                     their original, old ``step`` in the header) instead of new ones
==================== ====================================================================

Forged updates travel as fp32 sparse pairs (or one dense segment), whatever ``codec``
says: an attacker does not care about its bandwidth.

The runtime knows nothing of this: an attacker's worker encodes through a
:class:`LyingEncoder` (:func:`wrap_encoder`) whose :class:`~gossip.protocol.codec.Encoded`
carries the forged message and header, and the honest update as what the attacker counts as sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from gossip._proto import gossip_pb2 as pb
from gossip.config import Config
from gossip.protocol.codec import Encoded, ErrorFeedback, Layout, UpdateEncoder, decode_update
from gossip.protocol.codec.index import encode_indices

SIGN_FLIP_SCALE = 4.0       # sign_flip sends -4x its honest update
GAUSSIAN_STD_FACTOR = 1.0   # gaussian noise std, relative to the RMS of the honest values it replaces
INFLATE_SCALE = 10.0        # inflated_confidence sends 10x its honest update, confidence 1.0
REPLAY_POOL = 8             # stale_replay records this many early updates and cycles through them
ZLIB_LEVEL = 1


def build_update(indices: np.ndarray | None, values: np.ndarray, numel: int) -> pb.GradUpdate:
    """A well-formed fp32 GradUpdate carrying ``values`` at ``indices`` (None: dense, all ``numel``)."""
    values = np.ascontiguousarray(values, dtype="<f4")
    msg = pb.GradUpdate(value_codec=pb.VALUE_CODEC_FP32, numel=numel, values=values.tobytes())
    if indices is None:
        msg.selection = pb.SELECTION_DENSE
        msg.dense_offsets.append(0)
        msg.dense_lengths.append(numel)
        return msg
    msg.selection = pb.SELECTION_TOPK
    if indices.size:
        payload = encode_indices("auto", indices.astype(np.int64), numel, ZLIB_LEVEL)
        msg.count = indices.size
        msg.index_encoding = pb.IndexEncoding.ValueType(payload.encoding)
        msg.indices, msg.index_aux, msg.index_param = payload.main, payload.aux, payload.param
    return msg


class Attack:
    def __init__(self, kind: str, numel: int, seed: int) -> None:
        self.kind = kind
        self.numel = numel
        self.gen = torch.Generator().manual_seed(seed)
        self.pool: list[tuple[torch.Tensor | None, torch.Tensor, int]] = []  # stale_replay: (idx, values, step)
        self.replayed = 0

    def forge(self, update: pb.GradUpdate, *, step: int, confidence: float) -> tuple[pb.GradUpdate, int, float]:
        """The lie to send instead of the honest ``update``: (message, header step, confidence)."""
        indices, values = decode_update(update, self.numel)
        if self.kind == "sign_flip":
            return build_update(indices, values * -SIGN_FLIP_SCALE, self.numel), step, confidence
        if self.kind == "inflated_confidence":
            return build_update(indices, values * INFLATE_SCALE, self.numel), step, 1.0
        if self.kind == "gaussian":
            rms = float(np.sqrt(np.mean(np.square(values, dtype=np.float64)))) if values.size else 0.0
            noise = torch.randn(self.numel, generator=self.gen) * (GAUSSIAN_STD_FACTOR * rms)
            return build_update(None, noise.numpy(), self.numel), step, confidence
        if self.kind == "stale_replay":
            if len(self.pool) < REPLAY_POOL:
                idx = None if indices is None else torch.from_numpy(indices.copy())
                self.pool.append((idx, torch.from_numpy(values.copy()), step))
                return update, step, confidence
            idx, vals, old_step = self.pool[self.replayed % len(self.pool)]
            self.replayed += 1
            return (build_update(None if idx is None else idx.numpy(), vals.numpy(), self.numel),
                    old_step, confidence)
        raise AssertionError(f"unknown attack {self.kind}")

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "replayed": self.replayed,
                "pool": [{"indices": i, "values": v, "step": s} for i, v, s in self.pool]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.replayed = int(state["replayed"])
        self.pool = [(d["indices"], d["values"], int(d["step"])) for d in state["pool"]]


def make_attack(cfg: Config, peer_id: int, layout: Layout) -> Attack | None:
    """This peer's attack, or None when it is honest (the default)."""
    if cfg.security.attack == "none" or peer_id not in cfg.security.attackers:
        return None
    return Attack(cfg.security.attack, layout.numel, seed=cfg.seed * 1_000_003 + peer_id)


class LyingEncoder:
    """An encoder that lies: ``inner`` encodes honestly (its residual is decremented by the honest
    update), ``attack`` forges what goes on the wire. ``header()`` gives the honest (step,
    confidence) the forged header is made from."""

    def __init__(self, inner: UpdateEncoder, attack: Attack, header: Callable[[], tuple[int, float]]) -> None:
        self.inner, self.attack, self.header = inner, attack, header

    def encode(self, ef: ErrorFeedback, *, density: float | None = None, values: str | None = None) -> Encoded:
        honest = self.inner.encode(ef, density=density, values=values)
        step, confidence = self.header()
        forged, step, confidence = self.attack.forge(honest.msg, step=step, confidence=confidence)
        return Encoded(forged, honest.numel, own=honest.msg, step=step, confidence=confidence)

    # the encoder's state only: the attack's is checkpointed on its own (Worker.state_dict "attack")
    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def wrap_encoder(encoder: UpdateEncoder, attack: Attack | None,
                 header: Callable[[], tuple[int, float]]) -> UpdateEncoder:
    """``encoder`` itself for an honest peer (``attack`` None), else a :class:`LyingEncoder` around it."""
    return encoder if attack is None else LyingEncoder(encoder, attack, header)
