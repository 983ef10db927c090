"""Model registry: sizes within budget, shapes, determinism from the seed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gossip.errors import ConfigError
from gossip.training.models import MODELS, build_model, count_params

# name -> (in_channels, image size, (min params, max params))
EXPECTED = {
    "mnist_cnn": (1, 28, (1_100_000, 1_300_000)),
    "mnist_tiny": (1, 28, (10_000, 60_000)),
    "cifar_small": (3, 32, (200_000, 600_000)),
    "cifar_tiny": (3, 32, (50_000, 100_000)),
    "resnet18": (3, 32, (11_000_000, 11_300_000)),
}


def test_registry_has_the_sizes() -> None:
    assert set(EXPECTED) <= set(MODELS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_param_budget_and_output_shape(name: str) -> None:
    channels, size, (lo, hi) = EXPECTED[name]
    model = build_model(name, num_classes=10, in_channels=channels)
    assert lo <= count_params(model) <= hi
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["mnist_cnn", "mnist_tiny", "cifar_small"])
def test_other_image_sizes_and_channels(name: str) -> None:
    # The global pools let every small net take MNIST- and CIFAR-shaped input alike.
    for channels, size in ((1, 28), (3, 32)):
        model = build_model(name, num_classes=7, in_channels=channels)
        with torch.no_grad():
            assert model.eval()(torch.randn(2, channels, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", ["mnist_cnn", "mnist_tiny"])
def test_mnist_nets_have_no_batchnorm(name: str) -> None:
    model = build_model(name, 10, 1)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not list(model.buffers())  # nothing outside the parameters to keep in sync


@pytest.mark.parametrize("name", ["mnist_tiny", "cifar_small"])
def test_same_seed_same_initial_weights(name: str) -> None:
    channels = EXPECTED[name][0]
    torch.manual_seed(3)
    a = torch.nn.utils.parameters_to_vector(build_model(name, 10, channels).parameters())
    torch.manual_seed(3)
    b = torch.nn.utils.parameters_to_vector(build_model(name, 10, channels).parameters())
    torch.manual_seed(4)
    c = torch.nn.utils.parameters_to_vector(build_model(name, 10, channels).parameters())
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^model.name: unknown model 'vgg'"):
        build_model("vgg", 10, 3)


def test_count_params_skips_frozen() -> None:
    model = nn.Linear(4, 3)
    assert count_params(model) == 15
    model.bias.requires_grad_(False)
    assert count_params(model) == 12
