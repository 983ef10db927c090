"""Data loading: real MNIST/CIFAR copies, ImageFolder trees + cache, tarballs, tensor augmentation."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gossip.config import DataConfig
from gossip.errors import DataError
from gossip.training import data as data_mod
from gossip.training.data import Split, load_dataset, normalize, random_crop_flip


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("GOSSIP_CACHE", str(path))
    return path


def _make_tree(root: Path, classes: int = 3, per_class: int = 4, fmt: str = "png") -> None:
    """Images whose red channel encodes the class and green the index, so labels can be checked."""
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.zeros((6, 5, 3), dtype=np.uint8)
                pixels[..., 0] = 20 * c + 10
                pixels[..., 1] = 20 * i
                Image.fromarray(pixels).save(folder / f"{i:04d}.{fmt}")


# ---------------------------------------------------------------- real data


def test_mnist_from_the_data_root(data_root: Path) -> None:
    ds = load_dataset(DataConfig(name="mnist", root=str(data_root)))
    assert ds.train.images.shape == (60000, 1, 28, 28) and ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (10000, 1, 28, 28)
    assert ds.train.labels.dtype == torch.int64
    assert torch.equal(ds.train.labels.unique(), torch.arange(10))
    assert ds.num_classes == 10 and ds.in_channels == 1 and not ds.augment
    # The published statistics match the pixels.
    assert abs(ds.train.images.float().div(255).mean().item() - ds.mean[0]) < 1e-3


def test_root_from_environment(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOSSIP_DATA", str(data_root))
    ds = load_dataset(DataConfig(name="mnist", limit_train=100, limit_test=50))
    assert len(ds.train) == 100 and len(ds.test) == 50


@pytest.mark.slow
def test_cifar10_jpeg_tarball(data_root: Path) -> None:
    # Uses the normal cache (~/.cache/gossip or $GOSSIP_CACHE): decoded once, fast afterwards.
    ds = load_dataset(DataConfig(name="cifar10", root=str(data_root), limit_test=5000))
    assert ds.train.images.shape == (50000, 3, 32, 32) and ds.train.images.dtype == torch.uint8
    assert torch.equal(torch.bincount(ds.train.labels), torch.full((10,), 5000))
    assert ds.augment and ds.num_classes == 10
    # Stored in a fixed shuffled order, so a limit is class-balanced.
    assert torch.bincount(ds.test.labels, minlength=10).min() > 400


# ---------------------------------------------------------------- missing data


def test_missing_mnist_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=False))
    message = str(exc.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "\n" not in message


def test_missing_cifar_and_imagefolder(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(DataError, match="cifar10-jpeg.tar.gz"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False))
    with pytest.raises(DataError, match=r"train/<class>"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)))


def test_baseline_cli_reports_missing_data(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "gossip.baseline", "--config", "configs/mnist_baseline.yaml",
         "--run-dir", str(tmp_path / "run"), f"data.root={tmp_path / 'empty'}", "data.download=false"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: mnist: no data under")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- ImageFolder and the cache


def test_imagefolder_decodes_with_matching_labels(tmp_path: Path, cache: Path) -> None:
    _make_tree(tmp_path / "tree")
    ds = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "tree")))
    assert ds.train.images.shape == (12, 3, 6, 5)
    assert ds.num_classes == 3 and ds.augment
    red = ds.train.images[:, 0, 0, 0].long()
    assert torch.equal((red - 10) // 20, ds.train.labels)  # each image kept its own label
    assert sorted(ds.train.images[:, 1, 0, 0].tolist()) == sorted([20 * i for i in range(4)] * 3)
    assert len(ds.mean) == 3 and all(s > 0 for s in ds.std)
    assert len(list(cache.glob("imagefolder-*.images.npy"))) == 2  # train and test


def test_imagefolder_cache_is_reused_and_invalidated(tmp_path: Path, cache: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "tree"
    _make_tree(tree)
    first = load_dataset(DataConfig(name="imagefolder", root=str(tree)))
    real_decode = data_mod._decode_all

    def fail(files: object) -> object:
        raise AssertionError("decoded again although the tree did not change")

    monkeypatch.setattr(data_mod, "_decode_all", fail)
    again = load_dataset(DataConfig(name="imagefolder", root=str(tree)))
    assert torch.equal(first.train.images, again.train.images)

    # A new image changes the key: that split is decoded again.
    calls: list[int] = []

    def counting(files: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(files))
        return real_decode(files)

    monkeypatch.setattr(data_mod, "_decode_all", counting)
    Image.fromarray(np.full((6, 5, 3), 7, dtype=np.uint8)).save(tree / "train" / "class1" / "9999.png")
    changed = load_dataset(DataConfig(name="imagefolder", root=str(tree)))
    assert calls == [13]
    assert len(changed.train) == 13


def test_imagefolder_rejects_mixed_sizes(tmp_path: Path, cache: Path) -> None:
    _make_tree(tmp_path / "tree")
    Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(tmp_path / "tree" / "test" / "class0" / "x.png")
    with pytest.raises(DataError, match="share one size"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "tree")))


def test_cifar10_tarball_is_extracted_once_into_the_cache(tmp_path: Path, cache: Path) -> None:
    _make_tree(tmp_path / "src" / "cifar10-jpeg", classes=10, per_class=2, fmt="jpg")
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "cifar10-jpeg.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar10-jpeg", arcname="cifar10-jpeg")
    root.chmod(0o555)  # the data folder may be read-only
    try:
        ds = load_dataset(DataConfig(name="cifar10", root=str(root)))
        again = load_dataset(DataConfig(name="cifar10", root=str(root)))
    finally:
        root.chmod(0o755)
    assert ds.train.images.shape == (20, 3, 6, 5) and ds.num_classes == 10
    assert torch.equal(ds.train.images, again.train.images)
    assert ds.mean == data_mod._STATS["cifar10"][0]
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1  # one extraction


def test_limits_take_the_first_samples(tmp_path: Path, cache: Path) -> None:
    _make_tree(tmp_path / "tree", per_class=5)
    full = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "tree")))
    small = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "tree"), limit_train=4, limit_test=2))
    assert torch.equal(small.train.images, full.train.images[:4])
    assert len(small.test) == 2


# ---------------------------------------------------------------- on-device transforms


def test_normalize() -> None:
    images = torch.tensor([[[[0, 255]]], [[[51, 102]]]], dtype=torch.uint8)  # [2, 1, 1, 2]
    out = normalize(images, torch.tensor([0.5]).view(1, 1, 1, 1), torch.tensor([0.25]).view(1, 1, 1, 1))
    assert out.dtype == torch.float32
    assert torch.allclose(out.flatten(), torch.tensor([-2.0, 2.0, -1.2, -0.4]))


def test_random_crop_flip_is_a_shift_or_mirror_of_the_input() -> None:
    b, c, h, w, pad = 16, 2, 8, 8, 2
    x = torch.arange(b * c * h * w, dtype=torch.float32).view(b, c, h, w)
    out = random_crop_flip(x, pad, torch.Generator().manual_seed(0))
    again = random_crop_flip(x, pad, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(out, again)
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="reflect")
    flips = 0
    for i in range(b):
        crops = [(dy, dx, padded[i, :, dy:dy + h, dx:dx + w])
                 for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
        matches = [(dy, dx, f) for dy, dx, crop in crops for f in (0, 1)
                   if torch.equal(out[i], crop.flip(2) if f else crop)]
        assert matches, f"image {i} is not a crop of its padded input"
        flips += matches[0][2]
    assert 0 < flips < b  # both flipped and unflipped images occur
    moved = sum(not torch.equal(out[i], x[i]) for i in range(b))
    assert moved > b // 2


def test_split_len() -> None:
    assert len(Split(torch.zeros(5, 1, 2, 2, dtype=torch.uint8), torch.zeros(5, dtype=torch.long))) == 5
