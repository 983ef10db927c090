"""Bring your own model and data set by import path: ``"package.module:attr"`` (as uvicorn and Flower).

``model.name: "mypkg.nets:make_net"`` names a callable ``(num_classes, in_channels) -> nn.Module``.
``data.name: "mypkg.sets:load"`` names a callable ``(root: pathlib.Path) -> splits`` where ``root`` is
``data.root`` / ``$GOSSIP_DATA`` and ``splits`` is one of

* ``(train, test)``, or a mapping ``{"train": ..., "test": ..., "num_classes": 10}``;
* each split either ``(images, labels)`` (tensors or numpy arrays) or a torchvision-style data set
  (``len()`` and ``ds[i] -> (image, label)``, the image a PIL image, array or tensor).

Images become uint8 ``[N, C, H, W]`` like the built-in sets: uint8 as given, floats must lie in
[0, 1] (they are rounded to 1/255, the resolution of image data); ``[N, H, W]`` gains a channel and
``[N, H, W, C]`` (C of 1 or 3) is transposed. Labels are integers ``0 .. num_classes-1``;
``num_classes`` defaults to the largest label + 1. Everything is checked when the peer starts, with a
one-line :class:`~gossip.errors.ConfigError` / :class:`~gossip.errors.DataError`: not importable, not
callable, wrong signature, wrong shapes, a model whose output is not ``[batch, num_classes]``.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gossip.config.loader import is_import_path
from gossip.errors import ConfigError, DataError

MAX_SAMPLES = 50_000_000  # a torchvision-style set longer than this is refused (it would not fit anyway)


def resolve(spec: str, key: str) -> Callable[..., Any]:
    """The callable ``spec`` names; ConfigError naming ``key`` if it cannot be imported or called."""
    if not is_import_path(spec):
        raise ConfigError(f"{key}: {spec!r} is not 'package.module:callable'")
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as ``python -m`` does: user code next to the config
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the user's module failing at import
        raise ConfigError(f"{key}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key}: {spec!r} is not callable")
    return obj  # type: ignore[no-any-return]


def _check_arity(fn: Callable[..., Any], n: int, key: str, shape: str) -> None:
    try:
        inspect.signature(fn).bind(*range(n))
    except TypeError:
        raise ConfigError(f"{key}: {getattr(fn, '__name__', fn)!r} must be callable as {shape}") from None
    except ValueError:  # builtins without a signature: let the call tell
        pass


def build_model(spec: str, num_classes: int, in_channels: int, sample: torch.Tensor | None = None) -> nn.Module:
    """The user's model, checked: an ``nn.Module`` whose output on ``sample`` is ``[batch, num_classes]``."""
    fn = resolve(spec, "model.name")
    _check_arity(fn, 2, "model.name", "factory(num_classes, in_channels) -> nn.Module")
    try:
        model = fn(num_classes, in_channels)
    except Exception as exc:
        raise ConfigError(f"model.name: {spec}({num_classes}, {in_channels}) failed: "
                          f"{type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {spec} returned {type(model).__name__}, not a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model.name: {spec} has no trainable parameters")
    if sample is not None:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(sample[:2].float())
        except Exception as exc:
            raise ConfigError(f"model.name: {spec} cannot take a batch of shape {list(sample[:2].shape)}: "
                              f"{type(exc).__name__}: {exc}") from None
        finally:
            model.train(was_training)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (min(2, len(sample)), num_classes):
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"model.name: {spec} returns {got} for a batch of {list(sample[:2].shape)}, "
                              f"expected [batch, {num_classes}] logits")
    return model


# ---------------------------------------------------------------- data


def _images(x: Any, where: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x.detach().cpu()
    if t.ndim == 3:
        t = t[:, None]
    elif t.ndim == 4 and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if t.ndim != 4 or min(t.shape) == 0:
        raise DataError(f"data.name: {where} images have shape {list(t.shape)}, expected [N, C, H, W]")
    if t.dtype == torch.uint8:
        return t.contiguous()
    if not t.is_floating_point():
        raise DataError(f"data.name: {where} images are {t.dtype}; give uint8 or floats in [0, 1]")
    if not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
        raise DataError(f"data.name: {where} float images must be finite and lie in [0, 1]")
    return t.mul(255).round_().to(torch.uint8).contiguous()


def _labels(y: Any, n: int, where: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(y)) if not isinstance(y, torch.Tensor) else y.detach().cpu()
    t = t.reshape(-1)
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise DataError(f"data.name: {where} labels must be integers, got {t.dtype}")
    if t.numel() != n:
        raise DataError(f"data.name: {where} has {n} images but {t.numel()} labels")
    if n and int(t.min()) < 0:
        raise DataError(f"data.name: {where} labels must be >= 0")
    return t.long()


def _split(obj: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(obj, tuple | list) and len(obj) == 2:
        images = _images(obj[0], where)
        return images, _labels(obj[1], images.shape[0], where)
    if _is_dataset(obj):
        n = len(obj)
        if n == 0 or n > MAX_SAMPLES:
            raise DataError(f"data.name: {where} has {n} samples")
        xs, ys = [], []
        for i in range(n):
            item = obj[i]
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise DataError(f"data.name: {where}[{i}] is not an (image, label) pair")
            xs.append(np.asarray(item[0]))
            ys.append(int(item[1]))
        shapes = {a.shape for a in xs}
        if len(shapes) != 1:
            raise DataError(f"data.name: {where} images differ in shape ({sorted(shapes)[:2]} ...)")
        images = _images(np.stack(xs), where)
        return images, _labels(ys, images.shape[0], where)
    raise DataError(f"data.name: {where} is a {type(obj).__name__}; give (images, labels) or a data set")


def _is_dataset(obj: Any) -> bool:
    """A torchvision-style set: sized and indexable (an (images, labels) pair is handled before)."""
    return hasattr(obj, "__len__") and hasattr(obj, "__getitem__")


def load_data(spec: str, root: Path) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], int]:
    """``(train, test, num_classes)`` from the user's data factory, checked."""
    fn = resolve(spec, "data.name")
    _check_arity(fn, 1, "data.name", "factory(root) -> (train, test)")
    try:
        out = fn(root)
    except Exception as exc:
        raise DataError(f"data.name: {spec}({str(root)!r}) failed: {type(exc).__name__}: {exc}") from None
    num_classes: int | None = None
    if isinstance(out, Mapping):
        if not {"train", "test"} <= set(out):
            raise DataError(f"data.name: {spec} returned a mapping without 'train' and 'test'")
        num_classes = out.get("num_classes")
        train_obj, test_obj = out["train"], out["test"]
    elif isinstance(out, tuple | list) and len(out) == 2:
        train_obj, test_obj = out
    else:
        raise DataError(f"data.name: {spec} returned {type(out).__name__}; expected (train, test)")
    train, test = _split(train_obj, "train"), _split(test_obj, "test")
    if train[0].shape[1:] != test[0].shape[1:]:
        raise DataError(f"data.name: train images are {list(train[0].shape[1:])} but test images "
                        f"{list(test[0].shape[1:])}")
    top = int(max(train[1].max(), test[1].max())) + 1
    if num_classes is None:
        num_classes = top
    elif not isinstance(num_classes, int) or num_classes < top:
        raise DataError(f"data.name: num_classes {num_classes!r} but labels go up to {top - 1}")
    if num_classes < 2:
        raise DataError(f"data.name: {spec} has {num_classes} class; a classifier needs at least 2")
    return train, test, num_classes
