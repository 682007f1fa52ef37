"""Codec fixtures: one tiny random checkpoint in both formats, our codec and transformers' port on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from higgs_audio.codec import AudioCodec
from tests.helpers.tiny_codec import load_port, write_checkpoints


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny codec's convs are too small to gain from threads, and on a busy 2-core machine OpenMP
    barriers make many small calls (streaming) up to 100 times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_codec_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(original-format dir, transformers-format dir) holding the same random weights."""
    return write_checkpoints(tmp_path_factory.mktemp("tiny-codec"))


@pytest.fixture(scope="session")
def tiny_codec(tiny_codec_dirs) -> AudioCodec:
    return AudioCodec.from_pretrained(tiny_codec_dirs[0])


@pytest.fixture(scope="session")
def tiny_port(tiny_codec_dirs):
    return load_port(tiny_codec_dirs[1])
