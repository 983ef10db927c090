"""The IDX file format of MNIST and Fashion-MNIST, read without torchvision, gzipped or not.

An IDX file is a 4-byte magic number ``00 00 <dtype> <ndim>``, ``ndim`` big-endian uint32 sizes, then
the data in C order. The official distribution ships ``*-idx3-ubyte.gz``; torchvision keeps both the
``.gz`` and the unpacked file after a download. Anything that does not match its header is refused with
a one-line :class:`~gossip.errors.DataError` naming the file, never read as garbage.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from gossip.errors import DataError

# dtype code -> numpy dtype (big-endian, as the format stores multi-byte values)
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
MAX_BYTES = 1 << 31  # a sane cap on one unpacked file (MNIST's largest is 47 MB)


def find(folder: Path, name: str) -> Path | None:
    """``folder/name`` if it exists, else ``folder/name.gz``, else None."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc})") from None
    if len(data) > MAX_BYTES:
        raise DataError(f"{path}: unpacks to more than {MAX_BYTES} bytes")
    return data


def read(path: Path, *, ndim: int | None = None, dims: tuple[int | None, ...] | None = None) -> np.ndarray:
    """The array stored in one IDX file, checked against its own header and the expected shape.

    ``ndim`` is the number of dimensions the caller expects (3 for images, 1 for labels); ``dims``
    may pin sizes (``None`` = any), e.g. ``(None, 28, 28)``.
    """
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    code, nd = data[2], data[3]
    if code not in _DTYPES:
        raise DataError(f"{path}: unknown IDX data type 0x{code:02x}")
    if ndim is not None and nd != ndim:
        raise DataError(f"{path}: IDX file has {nd} dimensions, expected {ndim}")
    header = 4 + 4 * nd
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=nd, offset=4))
    if dims is not None and any(want is not None and got != want for got, want in zip(shape, dims, strict=False)):
        raise DataError(f"{path}: IDX shape {shape}, expected {dims}")
    dtype = _DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{path}: {len(data) - header} data bytes, the header {shape} says {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_pair(images: Path, labels: Path, *, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, size, size)`` uint8 and labels ``(n,)`` int64 from a matching pair of IDX files."""
    x = read(images, ndim=3, dims=(None, size, size))
    y = read(labels, ndim=1)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{images.name} holds {x.shape[0]} images but {labels.name} {y.shape[0]} labels")
    if x.dtype != np.uint8:
        raise DataError(f"{images}: images must be unsigned bytes, got {x.dtype}")
    return x, y.astype(np.int64)
