"""IDX files: the official ``.gz`` distribution loads as the unpacked one does; bad headers are refused."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from gossip.config import DataConfig
from gossip.errors import DataError
from gossip.training import idx
from gossip.training.data import load_dataset

MNIST_RAW = Path(os.environ.get("GOSSIP_DATA", "data")) / "MNIST" / "raw"
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _write(path: Path, array: np.ndarray, code: int = 0x08, *, gz: bool = False) -> Path:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_round_trip_plain_and_gzipped(tmp_path: Path, gz: bool):
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    x, y = idx.read_pair(_write(tmp_path / "img", images, gz=gz), _write(tmp_path / "lab", labels, gz=gz))
    assert np.array_equal(x, images) and y.tolist() == [7, 0, 9] and y.dtype == np.int64


def test_find_prefers_the_unpacked_file_and_falls_back_to_gz(tmp_path: Path):
    assert idx.find(tmp_path, "a") is None
    (tmp_path / "a.gz").write_bytes(b"")
    assert idx.find(tmp_path, "a") == tmp_path / "a.gz"
    (tmp_path / "a").write_bytes(b"")
    assert idx.find(tmp_path, "a") == tmp_path / "a"


def test_big_endian_types_are_decoded(tmp_path: Path):
    values = np.array([[1, -2], [300, 40000]], dtype=">i4")
    assert idx.read(_write(tmp_path / "v", values, code=0x0C)).tolist() == [[1, -2], [300, 40000]]


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: b"\x01" + b[1:], "bad magic number"),
    (lambda b: b[:2] + b"\x42" + b[3:], "unknown IDX data type"),
    (lambda b: b[:-1], "data bytes"),
    (lambda b: b + b"\x00", "data bytes"),
    (lambda b: b[:6], "truncated IDX header"),
])
def test_bad_files_are_refused_with_one_line(tmp_path: Path, mutate, message: str):
    good = _write(tmp_path / "img", np.zeros((2, 28, 28), dtype=np.uint8)).read_bytes()
    bad = tmp_path / "bad"
    bad.write_bytes(mutate(good))
    with pytest.raises(DataError, match=message) as info:
        idx.read(bad, ndim=3)
    assert "\n" not in str(info.value)


def test_wrong_shape_and_mismatched_counts_are_refused(tmp_path: Path):
    small = _write(tmp_path / "small", np.zeros((2, 14, 14), dtype=np.uint8))
    labels = _write(tmp_path / "lab", np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataError, match="expected"):
        idx.read_pair(small, labels)
    images = _write(tmp_path / "img", np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(DataError, match="2 images but"):
        idx.read_pair(images, labels)
    with pytest.raises(DataError, match="dimensions"):
        idx.read(labels, ndim=3)


def test_corrupt_gzip_is_a_data_error(tmp_path: Path):
    bad = tmp_path / "x.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 20)[:-6])
    with pytest.raises(DataError, match="gzip"):
        idx.read(bad)


@pytest.mark.skipif(not (MNIST_RAW / FILES[0]).is_file(), reason="real MNIST not found under $GOSSIP_DATA")
def test_the_official_gz_distribution_loads_like_the_unpacked_files(tmp_path: Path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:  # the official layout: only the .gz files
        (raw / f"{name}.gz").write_bytes(gzip.compress((MNIST_RAW / name).read_bytes(), compresslevel=1))
    from_gz = load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=False))
    plain = load_dataset(DataConfig(name="mnist", root=str(MNIST_RAW.parents[1]), download=False))
    assert len(from_gz.train) == 60_000 and len(from_gz.test) == 10_000
    assert from_gz.train.images.equal(plain.train.images) and from_gz.test.labels.equal(plain.test.labels)
