"""Fixtures for fine-tuning: a tiny dataset of synthetic voices and one adapter trained on it (50 steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

TEXTS = ("Hello there.", "A tone speaks.", "Numbers one two.", "Last clip here.")


def tone(seconds: float, pitch: float, rate: int = 24000) -> np.ndarray:
    """A deterministic voiced-like clip: a vibrato tone with two harmonics."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(pitch * (1 + 0.03 * np.sin(2 * np.pi * 3 * t))) / rate
    return (0.3 * np.sin(phase) + 0.1 * np.sin(2 * phase)).astype(np.float32)


def write_voices(folder: Path, seconds: float = 0.6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(TEXTS):
        sf.write(folder / f"clip{i}.wav", tone(seconds, 140.0 + 40 * i), 24000)
        (folder / f"clip{i}.txt").write_text(text + "\n")
    return folder


def finetune_args(data, out, model, codec, cache, *extra) -> list[str]:
    return ["finetune", str(data), "-o", str(out), "--model", str(model), "--codec", str(codec), "--device", "cpu",
            "--cache-dir", str(cache), "--batch-size", "2", "--lr", "3e-3", "--warmup", "5", "-q", *map(str, extra)]


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """One intra-op thread while these tests run: the tiny model's matrices are too small to split, and on a busy
    machine two threads spend their time waiting for each other (30x slower steps, measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def voices(tmp_path_factory) -> Path:
    return write_voices(tmp_path_factory.mktemp("voices"))


@pytest.fixture(scope="package")
def trained(one_thread, tmp_path_factory, voices, tiny_native, tiny_codec) -> Path:
    """An adapter (attention, audio MLPs and audio head) trained for 50 steps on the tiny native checkpoint."""
    from higgs_audio.cli import main

    root = tmp_path_factory.mktemp("trained")
    args = finetune_args(voices, root / "out", tiny_native, tiny_codec, root / "cache", "--steps", 50,
                         "--preset", "full-audio-adapter", "--rank", 8, "--alpha", 16)
    assert main(args) == 0
    return root / "out"
