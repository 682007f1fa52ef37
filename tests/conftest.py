"""Shared fixtures: tiny random checkpoints written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.helpers.tiny_model import random_weights, original_config, write_native, write_original  # noqa: E402


@pytest.fixture(scope="session")
def tiny_weights():
    return random_weights(original_config(), seed=0)


@pytest.fixture(scope="session")
def tiny_original(tmp_path_factory, tiny_weights) -> Path:
    """The tiny generation checkpoint in the original format (sharded, with index)."""
    return write_original(tmp_path_factory.mktemp("tiny-original"), tiny_weights)


@pytest.fixture(scope="session")
def tiny_native(tmp_path_factory, tiny_weights) -> Path:
    """The same weights in the transformers-native format."""
    return write_native(tmp_path_factory.mktemp("tiny-native"), tiny_weights)
