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


@pytest.fixture(scope="session")
def tiny_codec(tmp_path_factory) -> Path:
    """A tiny random audio-tokenizer checkpoint in the original format (config.json + model.pth)."""
    from tests.helpers.tiny_codec import write_checkpoints

    original, _ = write_checkpoints(tmp_path_factory.mktemp("tiny-codec"))
    return original


@pytest.fixture(scope="session")
def tiny_api(tiny_original, tiny_codec):
    """The public API over the tiny checkpoints, on the CPU in fp32, able to decode 4 streams at once."""
    from higgs_audio import HiggsAudio

    return HiggsAudio.from_pretrained(tiny_original, tiny_codec, device="cpu", dtype="float32", max_batch=4, max_len=512)
