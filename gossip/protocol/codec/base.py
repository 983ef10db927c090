"""What every codec shares: rejection reasons, the proto enums and the registries.

Three kinds of codec, each behind one small interface and a registry keyed by
its proto enum value:

* :class:`Selector` (``Selection``) — which elements of the residual to send;
* :class:`ValueCodec` (``ValueCodec``) — how the chosen values become bytes;
* :class:`IndexCodec` (``IndexEncoding``) — how the sorted indices become bytes.

A configuration name such as ``codec.select = "sampled_topk"`` maps to the enum
value ``SELECTION_SAMPLED_TOPK`` by naming convention; :func:`check_registries`
(run when :mod:`gossip.protocol.codec` is imported) fails loudly if a config name, an
enum value and a registered implementation do not line up one to one.
"""

from __future__ import annotations

import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from gossip._proto import gossip_pb2 as pb
from gossip.config import CodecConfig
from gossip.protocol.constants import PROTOCOL_VERSION, REASONS, reject  # noqa: F401  (re-exported)

# ---------------------------------------------------------------- interfaces


class Selector(ABC):
    """Chooses which elements of the residual travel, among the sparse-eligible ranges."""

    @abstractmethod
    def select(self, residual: torch.Tensor, ranges: np.ndarray, k: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(indices, values): about ``k`` sorted unique int64 flat indices inside ``ranges``
        (``[start, stop)`` rows), and a float32 copy of the residual there."""


class ValueCodec(ABC):
    """Turns fp32 values into bytes (+ fp32 scales), chunk by chunk.

    ``chunks`` holds the length of every chunk (each with its own scale); decoding
    must be bit-exact with what :meth:`encode` implies, because the sender subtracts
    the *decoded* values from its residual.
    """

    has_scales: bool = True

    @abstractmethod
    def encode(self, values: np.ndarray, chunks: np.ndarray) -> tuple[bytes, np.ndarray]:
        """(payload, float32 scales, one per chunk or none)."""

    @abstractmethod
    def decode(self, payload: bytes, scales: np.ndarray, chunks: np.ndarray) -> np.ndarray:
        """float32 values; the payload size has been checked against :meth:`payload_size`."""

    @abstractmethod
    def payload_size(self, count: int) -> int:
        """Bytes the payload of ``count`` values takes."""


@dataclass(frozen=True)
class IndexPayload:
    encoding: int      # IndexEncoding value
    main: bytes        # GradUpdate.indices
    aux: bytes = b""   # GradUpdate.index_aux
    param: int = 0     # GradUpdate.index_param


class IndexCodec(ABC):
    """Turns sorted unique indices into bytes and back, validating everything on the way back."""

    @abstractmethod
    def encode(self, indices: np.ndarray, numel: int, *, zlib_level: int) -> IndexPayload: ...

    @abstractmethod
    def decode(self, payload: IndexPayload, count: int, numel: int) -> np.ndarray:
        """Strictly increasing int64 indices in ``[0, numel)``, exactly ``count`` of them, or reject."""


# ---------------------------------------------------------------- registries

T = TypeVar("T")


class Registry(Generic[T]):
    """Implementations of one codec kind, keyed by proto enum value, registered by config name."""

    def __init__(self, kind: str, enum: Any, prefix: str, config_field: str,
                 extra_values: tuple[int, ...] = ()) -> None:
        self.kind, self.enum, self.prefix, self.config_field = kind, enum, prefix, config_field
        self.extra_values = extra_values  # enum values handled outside this registry
        self._by_value: dict[int, T] = {}
        self._names: dict[int, str] = {}
        self._values: dict[str, int] = {}

    def value_of(self, name: str) -> int:
        value = self._values.get(name)
        if value is None:
            value = self._values[name] = int(self.enum.Value(self.prefix + name.upper()))
        return value

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            value = self.value_of(name)
            assert value not in self._by_value, f"{self.kind} {name} registered twice"
            self._by_value[value] = cls()
            self._names[value] = name
            return cls
        return deco

    def get(self, value: int) -> T:
        """The implementation for a wire value, or ``unknown_codec``."""
        impl = self._by_value.get(value)
        if impl is None:
            reject("unknown_codec", f"{self.kind} {value}")
        return impl

    def check_known(self, value: int) -> None:
        """Reject an enum value this version has neither an implementation nor a handler for."""
        if value not in self._by_value and value not in self.extra_values:
            reject("unknown_codec", f"{self.kind} {value}")

    def by_name(self, name: str) -> T:
        return self._by_value[self.value_of(name)]

    def name_of(self, value: int) -> str:
        return self._names.get(value, str(value))

    def check(self) -> None:
        """Every enum value and every config name has an implementation (or is a declared extra)."""
        covered = set(self._by_value) | set(self.extra_values)
        missing = {v for v in self.enum.values() if v != 0} - covered
        assert not missing, f"{self.kind}: enum values without implementation: {sorted(missing)}"
        field_type = typing.get_type_hints(CodecConfig)[self.config_field]
        for name in typing.get_args(field_type):
            if name != "auto":
                assert self.value_of(name) in covered, f"{self.kind}: config name {name!r} has no codec"


# PowerSGD sends low-rank factors instead of a selection (gossip.protocol.codec.powersgd).
SELECTORS: Registry[Selector] = Registry("selection", pb.Selection, "SELECTION_", "select",
                                         extra_values=(pb.SELECTION_POWERSGD,))
VALUE_CODECS: Registry[ValueCodec] = Registry("value codec", pb.ValueCodec, "VALUE_CODEC_", "values")
INDEX_CODECS: Registry[IndexCodec] = Registry("index encoding", pb.IndexEncoding, "INDEX_ENCODING_",
                                              "index", extra_values=(pb.INDEX_ENCODING_NONE,))


def check_registries() -> None:
    for registry in (SELECTORS, VALUE_CODECS, INDEX_CODECS):
        registry.check()


def chunk_lengths(group_lengths: np.ndarray, chunk: int) -> np.ndarray:
    """Lengths of the scale chunks: each group cut into pieces of ``chunk`` values (0: whole group).

    Empty groups have no chunk (and so no scale).
    """
    groups = np.asarray(group_lengths, dtype=np.int64)
    groups = groups[groups > 0]
    if chunk <= 0 or groups.size == 0:
        return groups
    full, rest = np.divmod(groups, chunk)
    per_group = full + (rest > 0)
    out = np.full(int(per_group.sum()), chunk, dtype=np.int64)
    last = np.cumsum(per_group) - 1  # every group's last chunk may be shorter
    out[last[rest > 0]] = rest[rest > 0]
    return out
