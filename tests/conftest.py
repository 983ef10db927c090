"""Shared fixtures: real data sets come from $GOSSIP_DATA (the Makefile points it at the shared copy)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder holding MNIST/raw/ and cifar10-jpeg.tar.gz; skips the test when GOSSIP_DATA is unset."""
    value = os.environ.get("GOSSIP_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("GOSSIP_DATA is not set to a data folder")
    return Path(value)
