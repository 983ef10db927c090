"""Bring your own model and data set by import path: formats accepted, every mistake a one-line error."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gossip.config import DataConfig
from gossip.config.loader import is_import_path
from gossip.errors import ConfigError, DataError, GossipError
from gossip.training.data import load_dataset
from gossip.training.models import build_model

USER_CODE = '''
import numpy as np
import torch
from torch import nn

def net(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))

def wrong_output(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes + 1))

def not_a_module(num_classes, in_channels):
    return "model"

def one_arg(num_classes):
    return nn.Linear(1, 1)

def broken(num_classes, in_channels):
    raise ValueError("no GPU here")

NOT_CALLABLE = 3

def tensors(root):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=g)
    return (x, torch.arange(40) % 3), (x[:10], torch.arange(10) % 3)

def hwc_floats(root):
    x = np.random.default_rng(0).random((20, 8, 8, 3)).astype(np.float32)
    return {"train": (x, np.arange(20) % 2), "test": (x[:4], np.arange(4) % 2), "num_classes": 5}

class Samples:
    def __init__(self, n):
        self.n = n
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        return np.full((8, 8), i % 256, dtype=np.uint8), i % 4

def dataset_style(root):
    return Samples(12), Samples(8)

def bad_range(root):
    x = torch.full((4, 1, 8, 8), 2.0)
    return (x, torch.zeros(4)), (x, torch.zeros(4))

def bad_labels(root):
    x = torch.zeros((4, 1, 8, 8), dtype=torch.uint8)
    return (x, torch.zeros(3, dtype=torch.long)), (x, torch.zeros(4, dtype=torch.long))

def mismatched(root):
    return (torch.zeros((4, 1, 8, 8)), torch.tensor([0, 1, 0, 1])), (torch.zeros((4, 1, 9, 9)), torch.tensor([0, 1, 0, 1]))

def few_classes(root):
    x = torch.zeros((4, 1, 8, 8))
    return {"train": (x, torch.tensor([0, 1, 2, 3])), "test": (x, torch.tensor([0, 1, 2, 3])), "num_classes": 2}

def raises(root):
    raise FileNotFoundError(root)
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "things.py").write_text(textwrap.dedent(USER_CODE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "userpkg.things"
    sys.modules.pop("userpkg.things", None)
    sys.modules.pop("userpkg", None)


def test_import_paths_are_recognised():
    assert is_import_path("a.b:c") and is_import_path("pkg:make.net")
    for name in ("mnist_cnn", "a.b", ":c", "a:", "a b:c", "a:b:c"):
        assert not is_import_path(name), name


def test_a_user_model_is_built_and_checked_on_a_batch(user_module: str):
    sample = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    model = build_model(f"{user_module}:net", 3, 1, sample)
    assert isinstance(model, nn.Module) and model(sample.float()).shape == (4, 3)


@pytest.mark.parametrize(("attr", "message"), [
    ("wrong_output", r"returns \[2, 4\].*expected \[batch, 3\]"),
    ("not_a_module", "not a torch.nn.Module"),
    ("one_arg", r"factory\(num_classes, in_channels\)"),
    ("broken", "failed: ValueError: no GPU here"),
    ("NOT_CALLABLE", "is not callable"),
    ("missing", "has no attribute"),
])
def test_model_mistakes_are_one_line_config_errors(user_module: str, attr: str, message: str):
    with pytest.raises(ConfigError, match=message) as info:
        build_model(f"{user_module}:{attr}", 3, 1, torch.zeros(2, 1, 8, 8))
    assert str(info.value).startswith("model.name: ") and "\n" not in str(info.value)


def test_an_unimportable_module_names_the_key():
    with pytest.raises(ConfigError, match=r"model.name: cannot import 'no_such_pkg_xyz.nets' \(ModuleNotFoundError"):
        build_model("no_such_pkg_xyz.nets:net", 10, 1)
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("no_such_builtin", 10, 1)


def test_tensor_splits_load_like_a_built_in_set(user_module: str):
    ds = load_dataset(DataConfig(name=f"{user_module}:tensors"))
    assert ds.num_classes == 3 and len(ds.train) == 40 and len(ds.test) == 10
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape == (40, 1, 8, 8)
    assert ds.train.labels.dtype == torch.int64 and ds.in_channels == 1


def test_channels_last_floats_and_num_classes(user_module: str):
    ds = load_dataset(DataConfig(name=f"{user_module}:hwc_floats"))
    assert ds.train.images.shape == (20, 3, 8, 8) and ds.num_classes == 5
    x = np.random.default_rng(0).random((20, 8, 8, 3)).astype(np.float32)
    expected = torch.from_numpy(np.round(x * 255)).to(torch.uint8).permute(0, 3, 1, 2)
    assert ds.train.images.equal(expected)


def test_torchvision_style_data_sets(user_module: str):
    ds = load_dataset(DataConfig(name=f"{user_module}:dataset_style"))
    assert ds.train.images.shape == (12, 1, 8, 8) and ds.num_classes == 4
    assert ds.train.images[5].unique().tolist() == [5] and ds.train.labels[5] == 1


@pytest.mark.parametrize(("attr", "message"), [
    ("bad_range", r"lie in \[0, 1\]"),
    ("bad_labels", "4 images but 3 labels"),
    ("mismatched", "train images are"),
    ("few_classes", "labels go up to 3"),
    ("raises", "failed: FileNotFoundError"),
])
def test_data_mistakes_are_one_line_errors(user_module: str, attr: str, message: str):
    with pytest.raises(GossipError, match=message) as info:
        load_dataset(DataConfig(name=f"{user_module}:{attr}"))
    assert isinstance(info.value, DataError | ConfigError) and "\n" not in str(info.value)
    assert str(info.value).startswith("data.name: ")
