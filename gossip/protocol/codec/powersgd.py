"""PowerSGD (Vogels et al., 2019): each large matrix as a rank-r product P Q^T.

The reference point for the sparse codecs. Per matrix view ``M`` (rows = the
tensor's first dimension) of the residual, one power iteration warm-started
from the previous round's ``Q``::

    P = orthonormalize(M Q);   Q = M^T P;   send P, Q;   residual -= P Q^T

Cost on the wire: ``r (rows + cols)`` values per matrix instead of ``rows x
cols``; ``codec.powersgd_rank`` (r, default 4) trades bytes for fidelity.
Tensors below ``codec.dense_below``, 1-D tensors, and matrices where the
factors would not be smaller travel as dense segments with the value codec.
Factors are fp16 when ``codec.values = "fp16"``, else fp32.

Unlike the sparse codecs the product is recomputed by every receiver, so peers
with different BLAS builds may differ in the last bit; that rounding is far
below the compression error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gossip._proto import gossip_pb2 as pb
from gossip.protocol.codec.base import reject
from gossip.protocol.codec.layout import Layout

MAX_RANK = 32        # receivers reject higher ranks (bounds the work a message can cause)
MAX_BLOCKS = 16_384  # receivers reject messages with more low-rank blocks


def factor_dtype(value_codec: int) -> np.dtype:
    return np.dtype("<f2") if value_codec == pb.VALUE_CODEC_FP16 else np.dtype("<f4")


def product(p: bytes, q: bytes, rows: int, cols: int, rank: int, dtype: np.dtype) -> np.ndarray:
    """P Q^T as a flat float32 array (the one function both ends use)."""
    pm = torch.from_numpy(np.frombuffer(p, dtype=dtype).astype(np.float32).reshape(rows, rank))
    qm = torch.from_numpy(np.frombuffer(q, dtype=dtype).astype(np.float32).reshape(cols, rank))
    return (pm @ qm.T).numpy().ravel()


class PowerSGD:
    def __init__(self, layout: Layout, rank: int, dense_below: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.blocks: list[tuple[int, int, int, int]] = []  # (offset, rows, cols, rank)
        self.q: dict[int, torch.Tensor] = {}
        for offset, rows, cols in layout.matrices(dense_below):
            r = min(rank, rows, cols, MAX_RANK)
            if r * (rows + cols) < rows * cols:
                self.blocks.append((offset, rows, cols, r))
                self.q[offset] = torch.randn(cols, r, generator=gen)
        covered = {offset for offset, *_ in self.blocks}
        self.dense_ranges = np.array([[s, e] for s, e in layout.tensor_ranges() if s not in covered],
                                     dtype=np.int64).reshape(-1, 2)

    def compress(self, residual: torch.Tensor, value_codec: int) -> list[pb.LowRank]:
        """Rank-r factors of every block; subtracts exactly the decoded product from ``residual``."""
        dtype = factor_dtype(value_codec)
        out = []
        for offset, rows, cols, r in self.blocks:
            m = residual[offset:offset + rows * cols].view(rows, cols)
            q = self.q[offset].to(m.device)
            p, _ = torch.linalg.qr(m @ q)
            q = m.T @ p
            p_bytes = p.cpu().numpy().astype(dtype).tobytes()
            q_bytes = q.cpu().numpy().astype(dtype).tobytes()
            approx = product(p_bytes, q_bytes, rows, cols, r, dtype)
            if not np.isfinite(approx).all():  # cannot happen for a finite residual; never send it
                continue
            m.sub_(torch.from_numpy(approx).view(rows, cols).to(m.device))
            self.q[offset] = q.cpu()
            out.append(pb.LowRank(offset=offset, rows=rows, cols=cols, rank=r, p=p_bytes, q=q_bytes))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"q": {k: v.clone() for k, v in self.q.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.get("q", {}).items():
            if key in self.q and value.shape == self.q[key].shape:
                self.q[key] = value.clone()


def decode_blocks(msg: pb.GradUpdate, numel: int) -> list[tuple[int, np.ndarray]]:
    """Validated (offset, flat product) of every low-rank block (ranges not yet checked for overlap)."""
    if len(msg.low_rank) > MAX_BLOCKS:
        reject("bad_field", f"{len(msg.low_rank)} low-rank blocks > {MAX_BLOCKS}")
    dtype = factor_dtype(msg.value_codec)
    out = []
    for block in msg.low_rank:
        rows, cols, rank, offset = int(block.rows), int(block.cols), int(block.rank), int(block.offset)
        if not 1 <= rank <= MAX_RANK:
            reject("bad_field", f"low-rank rank {rank} not in 1..{MAX_RANK}")
        if rows < 1 or cols < 1 or offset >= numel or rows * cols > numel - offset:
            reject("bad_segment", f"low-rank block {rows}x{cols} at {offset} outside numel {numel}")
        if len(block.p) != rows * rank * dtype.itemsize or len(block.q) != cols * rank * dtype.itemsize:
            reject("count_mismatch", f"low-rank factor sizes for {rows}x{cols} rank {rank}")
        values = product(block.p, block.q, rows, cols, rank, dtype)
        if not np.isfinite(values).all():
            reject("non_finite", "low-rank product")
        out.append((offset, values))
    return out
