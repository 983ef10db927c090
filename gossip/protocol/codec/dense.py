"""A whole vector as one dense segment of a ``GradUpdate``: the payload of a ``ModelSnapshot``.

Codistillation (:mod:`gossip.training.distill`) sends a peer's parameters, not a delta, so
there is no residual to keep what quantization loses: the receiver runs a teacher that is
off by at most ``scale / 2`` per weight under ``int8`` (one scale per ``chunk`` values), which
moves its predictions far less than the teacher's own training noise; ``fp16`` halves that
error again at twice the bytes. The message is validated on arrival exactly like an update
(:func:`gossip.protocol.codec.decoder.decode_update`).
"""

from __future__ import annotations

import numpy as np
import torch

from gossip._proto import gossip_pb2 as pb
from gossip.protocol.codec.base import VALUE_CODECS, chunk_lengths

SNAPSHOT_VALUES = ("int8", "fp16", "fp32")  # coarser codecs would make a poor teacher


def encode_dense(vector: torch.Tensor, values: str = "int8", chunk: int = 256) -> pb.GradUpdate:
    """``vector`` (any float dtype or device) as one dense segment coded with ``values``."""
    if values not in SNAPSHOT_VALUES:
        raise ValueError(f"snapshot values must be one of {SNAPSHOT_VALUES}, not {values!r}")
    data = vector.detach().to(torch.float32).cpu().contiguous().numpy()
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    codec = VALUE_CODECS.by_name(values)
    chunks = chunk_lengths(np.array([0, data.size]), chunk)
    payload, scales = codec.encode(data, chunks)
    msg = pb.GradUpdate(selection=pb.SELECTION_TOPK, value_codec=VALUE_CODECS.value_of(values),  # type: ignore[arg-type]
                        numel=data.size, count=0, values=payload, chunk=chunk,
                        dense_offsets=[0], dense_lengths=[data.size])
    msg.scales.extend(scales.tolist())
    return msg
