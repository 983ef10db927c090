"""The model's parameter shapes in flat order, and how they split for the codecs.

Every peer builds the same :class:`Layout` from its model; ``schema_hash`` (64
bits of SHA-256 over the names and shapes) travels in every message so that a
peer running a different model is caught instead of silently corrupting
parameters.

``codec.dense_below`` (elements) decides which tensors travel dense: biases and
normalisation weights are tiny, change in every coordinate and carry most of a
layer's scale, so top-k over them is both pointless and harmful. Everything
from ``dense_below`` elements up is *sparse-eligible*.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Layout:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]  # first flat element of each tensor
    numel: int
    schema_hash: int          # unsigned 64-bit

    @classmethod
    def from_shapes(cls, shapes: list[tuple[str, tuple[int, ...]]]) -> Layout:
        names = tuple(str(name) for name, _ in shapes)
        dims = tuple(tuple(int(d) for d in shape) for _, shape in shapes)
        sizes = [math.prod(shape) for shape in dims]
        offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)[:-1]])) \
            if sizes else ()
        blob = json.dumps([[n, list(s)] for n, s in zip(names, dims, strict=True)], separators=(",", ":"))
        digest = hashlib.sha256(blob.encode()).digest()
        return cls(names=names, shapes=dims, offsets=offsets, numel=int(sum(sizes)),
                   schema_hash=int.from_bytes(digest[:8], "little"))

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> Layout:
        """Trainable parameters in ``model.parameters()`` order (the Trainer's flat order)."""
        return cls.from_shapes([(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad])

    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    def ranges(self, dense_below: int) -> tuple[np.ndarray, np.ndarray]:
        """(sparse-eligible ranges, dense ranges): int64 arrays of ``[start, stop)`` rows, in flat order.

        Adjacent eligible tensors are merged into one range (fewer, longer scans).
        """
        sparse: list[list[int]] = []
        dense: list[list[int]] = []
        for start, size in zip(self.offsets, self.sizes(), strict=True):
            if size == 0:
                continue
            if size < dense_below:
                dense.append([start, start + size])
            elif sparse and sparse[-1][1] == start:
                sparse[-1][1] = start + size
            else:
                sparse.append([start, start + size])
        return (np.array(sparse, dtype=np.int64).reshape(-1, 2),
                np.array(dense, dtype=np.int64).reshape(-1, 2))

    def tensor_ranges(self) -> np.ndarray:
        """One ``[start, stop)`` row per non-empty tensor."""
        rows = [[o, o + s] for o, s in zip(self.offsets, self.sizes(), strict=True) if s > 0]
        return np.array(rows, dtype=np.int64).reshape(-1, 2)

    def matrices(self, dense_below: int) -> list[tuple[int, int, int]]:
        """(offset, rows, cols) of every sparse-eligible tensor seen as a matrix (PowerSGD)."""
        out = []
        for start, shape, size in zip(self.offsets, self.shapes, self.sizes(), strict=True):
            if size >= dense_below and size > 0 and len(shape) >= 2:
                out.append((start, shape[0], size // shape[0]))
        return out
