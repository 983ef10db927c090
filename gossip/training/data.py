"""Data sets decoded once into uint8 tensors; normalisation and augmentation run on tensors.

``load_dataset(cfg.data)`` returns a :class:`Dataset` whose splits are whole
uint8 tensors ``[N, C, H, W]`` in memory. Nothing is decoded per epoch: the
Trainer moves a split to its device once and builds float batches with
:func:`normalize` and :func:`random_crop_flip`.

Where the files come from (root = ``data.root``, else ``$GOSSIP_DATA``, else ``./data``):

=============== =====================================================================
mnist           ``<root>/MNIST/raw/`` (torchvision layout; downloaded there when online)
fashion_mnist   ``<root>/FashionMNIST/raw/``
cifar10         ``<root>/cifar-10-batches-py/`` (torchvision), or an ImageFolder copy
                ``<root>/cifar10-jpeg/{train,test}/<class>/*`` or its tarball
                ``<root>/cifar10-jpeg.tar.gz``; else a download is tried
imagefolder     ``<root>/train/<class>/*`` and ``<root>/test/<class>/*``
=============== =====================================================================

ImageFolder trees are decoded in parallel (one process per core) and cached as
``.npy`` files under ``$GOSSIP_CACHE`` (default ``~/.cache/gossip``), keyed by
the tree's file names, sizes and mtimes, so a changed tree is decoded again.
Tarballs are extracted into the cache once (the data folder may be read-only).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from gossip.config import DataConfig
from gossip.config.loader import is_import_path
from gossip.errors import DataError
from gossip.observe.log import get_logger
from gossip.training import custom, idx

log = get_logger(__name__)

# Per-channel statistics of the original training sets (pixel values in 0..1).
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass(frozen=True)
class Split:
    """One split, decoded once and kept in memory."""

    images: torch.Tensor  # uint8 [N, C, H, W] on CPU
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]  # per channel, pixel values in 0..1
    std: tuple[float, ...]
    augment: bool  # random crop + flip (CIFAR-like data)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])


# ---------------------------------------------------------------- on-device transforms


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float32 ``(x/255 - mean) / std``; mean/std shaped [1, C, 1, 1]."""
    return (images.float().div_(255.0) - mean) / std


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (reflect padding) and a random horizontal flip.

    One gather for the whole batch, so it costs a few percent of a training step on
    CPU and nothing on a GPU. The random draws come from ``generator`` (on CPU) so a
    batch is reproducible from the Trainer's seed and epoch.
    """
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    shift = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + shift[0][:, None])  # [B, H]
    cols = torch.arange(w, device=x.device)[None, :].expand(b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + shift[1][:, None]  # [B, W]
    batch_idx = torch.arange(b, device=x.device)[:, None, None, None]
    chan_idx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]


# ---------------------------------------------------------------- loading


def data_root(cfg: DataConfig) -> Path:
    return Path(cfg.root or os.environ.get("GOSSIP_DATA") or "./data").expanduser()


def cache_dir() -> Path:
    return Path(os.environ.get("GOSSIP_CACHE") or "~/.cache/gossip").expanduser()


def load_dataset(cfg: DataConfig) -> Dataset:
    """Decode ``cfg.name`` from the data root; DataError says where to put missing files."""
    root = data_root(cfg)
    if is_import_path(cfg.name):
        (train_x, train_y), (test_x, test_y), classes = custom.load_data(cfg.name, root)
        train, test = Split(train_x, train_y), Split(test_x, test_y)
    elif cfg.name in ("mnist", "fashion_mnist"):
        train, test = _torchvision_split(cfg.name, root, cfg.download)
        classes = 10
    elif cfg.name == "cifar10":
        train, test, classes = _cifar10(root, cfg.download)
    else:
        train, test, classes = _imagefolder(root)
    if cfg.limit_train:
        train = Split(train.images[: cfg.limit_train], train.labels[: cfg.limit_train])
    if cfg.limit_test:
        test = Split(test.images[: cfg.limit_test], test.labels[: cfg.limit_test])
    mean, std = _STATS.get(cfg.name) or _channel_stats(train.images)
    augment = cfg.augment and cfg.name in ("cifar10", "imagefolder")
    ds = Dataset(cfg.name, train, test, classes, mean, std, augment)
    log.info("dataset_loaded", name=cfg.name, root=str(root), train=len(train), test=len(test),
             classes=classes, shape=list(train.images.shape[1:]), augment=augment)
    return ds


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images[:10_000].float().div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


_IDX_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _read_idx(raw: Path, train: bool) -> Split | None:
    """Read the IDX files (``.gz`` or unpacked) directly: no torchvision import (seconds per peer).

    None when the files are not there (torchvision may download them); a file that is there but does
    not match its header is a one-line DataError, not a fallback.
    """
    images_path, labels_path = (idx.find(raw, f) for f in _IDX_FILES[train])
    if images_path is None or labels_path is None:
        return None
    images, labels = idx.read_pair(images_path, labels_path)
    return Split(torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels))


def _torchvision_split(name: str, root: Path, download: bool) -> tuple[Split, Split]:
    folder_name = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name]
    fast = [_read_idx(root / folder_name / "raw", train) for train in (True, False)]
    if fast[0] is not None and fast[1] is not None:
        return fast[0], fast[1]
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST}[name]
    folder = cls.__name__
    splits = []
    for train in (True, False):
        try:
            try:
                ds = cls(str(root), train=train, download=False)
            except RuntimeError:
                if not download:
                    raise
                log.info("dataset_download", name=name, root=str(root))
                ds = cls(str(root), train=train, download=True)
        except Exception as exc:  # offline, read-only root, corrupt files
            why = f"download failed: {type(exc).__name__}" if download else "data.download is false"
            raise DataError(
                f"{name}: no data under {root / folder / 'raw'} ({why}); put the IDX files "
                f"(train-images-idx3-ubyte[.gz], ...) there or set data.root / GOSSIP_DATA"
            ) from None
        splits.append(Split(ds.data.unsqueeze(1).contiguous(), ds.targets.long()))
    return splits[0], splits[1]


def _cifar10(root: Path, download: bool) -> tuple[Split, Split, int]:
    import torchvision

    if (root / "cifar-10-batches-py").is_dir():
        out = []
        for train in (True, False):
            ds = torchvision.datasets.CIFAR10(str(root), train=train, download=False)
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            out.append(Split(images, torch.tensor(ds.targets, dtype=torch.long)))
        return out[0], out[1], 10
    if (root / "cifar10-jpeg" / "train").is_dir():
        return _imagefolder(root / "cifar10-jpeg")
    tarball = root / "cifar10-jpeg.tar.gz"
    if tarball.is_file():
        return _imagefolder(_extract(tarball))
    why = "data.download is false"
    if download:
        try:
            log.info("dataset_download", name="cifar10", root=str(root))
            torchvision.datasets.CIFAR10(str(root), train=True, download=True)
            torchvision.datasets.CIFAR10(str(root), train=False, download=True)
            return _cifar10(root, False)
        except Exception as exc:  # offline, read-only root
            why = f"download failed: {type(exc).__name__}"
    raise DataError(
        f"cifar10: no data under {root} ({why}); put cifar-10-batches-py/, "
        f"cifar10-jpeg/{{train,test}}/<class>/ or cifar10-jpeg.tar.gz there or set data.root / GOSSIP_DATA"
    )


# ---------------------------------------------------------------- ImageFolder + cache


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise extraction/decoding between peers that start at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _extract(tarball: Path) -> Path:
    st = tarball.stat()
    key = hashlib.sha256(f"{tarball.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    dest = cache_dir() / f"{tarball.name.split('.')[0]}-{key}"
    with _locked(cache_dir() / f".{dest.name}.lock"):
        if not (dest / ".complete").exists():
            log.info("dataset_extract", tarball=str(tarball), dest=str(dest))
            tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
            try:
                with tarfile.open(tarball) as tf:
                    if hasattr(tarfile, "data_filter"):
                        tf.extractall(tmp, filter="data")
                    else:  # pragma: no cover - Python without extraction filters
                        tf.extractall(tmp)  # noqa: S202
            except (OSError, tarfile.TarError) as exc:
                raise DataError(f"{tarball}: cannot extract ({exc})") from None
            tmp.rename(dest)
            (dest / ".complete").touch()
    subdirs = [p for p in dest.iterdir() if p.is_dir()]
    # The tarball holds one top folder (cifar10-jpeg/train/...), or train/ and test/ directly.
    return subdirs[0] if len(subdirs) == 1 and not (dest / "train").is_dir() else dest


def _list_tree(split_dir: Path) -> tuple[list[str], list[tuple[str, int]]]:
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    files: list[tuple[str, int]] = []
    for label, cls in enumerate(classes):
        for entry in sorted(os.scandir(split_dir / cls), key=lambda e: e.name):
            if entry.is_file() and Path(entry.name).suffix.lower() in _IMAGE_SUFFIXES:
                files.append((entry.path, label))
    return classes, files


def _tree_key(files: list[tuple[str, int]]) -> str:
    h = hashlib.sha256()
    for path, label in files:
        st = os.stat(path)
        h.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _decode(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _imagefolder(tree: Path) -> tuple[Split, Split, int]:
    if not (tree / "train").is_dir() or not (tree / "test").is_dir():
        raise DataError(
            f"imagefolder: expected {tree}/train/<class>/*.jpg and {tree}/test/<class>/*.jpg "
            f"(set data.root or GOSSIP_DATA to the folder that holds train/ and test/)"
        )
    splits = []
    class_lists = []
    for name in ("train", "test"):
        classes, files = _list_tree(tree / name)
        if not files:
            raise DataError(f"imagefolder: no images under {tree / name}/<class>/")
        class_lists.append(classes)
        splits.append(_cached_split(files))
    if class_lists[0] != class_lists[1]:
        raise DataError(f"imagefolder: train and test class folders differ under {tree}")
    return splits[0], splits[1], len(class_lists[0])


def _cached_split(files: list[tuple[str, int]]) -> Split:
    key = _tree_key(files)
    base = cache_dir() / f"imagefolder-{key}"
    img_path, lbl_path = base.with_suffix(".images.npy"), base.with_suffix(".labels.npy")
    try:
        with _locked(cache_dir() / f".imagefolder-{key}.lock"):
            if not (img_path.exists() and lbl_path.exists()):
                images, labels = _decode_all(files)
                tmp = f".tmp{os.getpid()}.npy"
                np.save(str(img_path) + tmp, images)
                np.save(str(lbl_path) + tmp, labels)
                os.replace(str(img_path) + tmp, img_path)
                os.replace(str(lbl_path) + tmp, lbl_path)
    except OSError as exc:
        raise DataError(f"cannot write the decode cache {cache_dir()} ({exc}); set GOSSIP_CACHE") from None
    return Split(torch.from_numpy(np.load(img_path)), torch.from_numpy(np.load(lbl_path)))


def _decode_all(files: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Decode with one process per core; store in a fixed shuffled order.

    The fixed shuffle (seed 0) makes ``data.limit_*`` = "first N" class-balanced
    even though the tree is listed class by class.
    """
    paths = [p for p, _ in files]
    workers = max(1, os.cpu_count() or 1)
    log.info("dataset_decode", images=len(paths), workers=workers)
    try:
        if workers > 1 and len(paths) > 1000:
            with get_context("fork").Pool(workers) as pool:
                arrays = pool.map(_decode, paths, chunksize=512)
        else:
            arrays = [_decode(p) for p in paths]
    except OSError as exc:
        raise DataError(f"imagefolder: cannot decode an image ({exc})") from None
    shape = arrays[0].shape
    bad = next((p for p, a in zip(paths, arrays, strict=True) if a.shape != shape), None)
    if bad is not None:
        raise DataError(f"imagefolder: images must share one size {shape[:2]}; {bad} differs")
    images = np.stack(arrays).transpose(0, 3, 1, 2)
    labels = np.array([label for _, label in files], dtype=np.int64)
    order = np.random.default_rng(0).permutation(len(paths))
    return np.ascontiguousarray(images[order]), labels[order]
