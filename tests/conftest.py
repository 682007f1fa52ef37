"""Shared fixtures: tiny random checkpoints written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.helpers.tiny_model import original_config, random_weights, write_native, write_original  # noqa: E402


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


# tests/cluster start Ray, which runs only inside a loopback-only network namespace: .ci/run runs that folder
# there, after this run. Outside one it is left out, unless asked for by path (its conftest then refuses,
# naming the command); the end of every run says so.
CLUSTER_TESTS = Path(__file__).parent / "cluster"


def _cluster_asked_for(config) -> bool:
    return any(Path(arg.split("::")[0]).resolve().is_relative_to(CLUSTER_TESTS) for arg in config.args)


def pytest_ignore_collect(collection_path, config):
    from tests.cluster.namespace import loopback_only

    if collection_path == CLUSTER_TESTS and not loopback_only() and not _cluster_asked_for(config):
        return True
    return None


def pytest_terminal_summary(terminalreporter, config):
    from tests.cluster.namespace import RUN, loopback_only

    if not loopback_only() and not _cluster_asked_for(config):
        terminalreporter.write_line(f"tests/cluster left out: they need a loopback-only network namespace; .ci/run "
                                    f"runs them with: {RUN}")
