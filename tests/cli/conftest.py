"""Fixtures for the command-line tests: the real ``higgs-audio`` command in a subprocess, against the tiny
checkpoints, with its voice library, code cache and hub cache in temporary folders."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Cli:
    env: dict
    model: Path
    codec: Path
    library: Path
    cache: Path
    generation: list = field(default_factory=list)  # options every generating run needs

    def run(self, *args, stdin: bytes | None = None, env: dict | None = None, check: bool = True):
        """Run ``python -m higgs_audio ARGS``; with ``check``, fail on a non-zero exit showing stderr."""
        proc = subprocess.run([sys.executable, "-m", "higgs_audio", *map(str, args)], input=stdin,
                              capture_output=True, env={**self.env, **(env or {})}, cwd=REPO, timeout=300)
        if check:
            assert proc.returncode == 0, proc.stderr.decode()
        return proc

    def speak(self, *args, **kwargs):
        return self.run("speak", *args, *self.generation, **kwargs)


@pytest.fixture(scope="session")
def cli(tmp_path_factory, tiny_original, tiny_codec) -> Cli:
    root = tmp_path_factory.mktemp("cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIGGS_AUDIO_", "HF_"))}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf"),
               HIGGS_AUDIO_VOICES=str(root / "voices"), HIGGS_AUDIO_CACHE=str(root / "codes"))
    generation = ["--model", tiny_original, "--codec", tiny_codec, "--device", "cpu", "--dtype", "float32",
                  "--max-len", "1024",
                  "--max-new-tokens", "40", "--seed", "3", "--quiet"]
    return Cli(env, tiny_original, tiny_codec, root / "voices", root / "codes", generation)


def _write_clip(path: Path, rate: int, pitch: float, channels: int, seed: int) -> Path:
    """A deterministic 1.5 s voiced-like clip: a vibrato tone with harmonics and a little noise."""
    t = np.arange(int(1.5 * rate)) / rate
    f0 = pitch * (1 + 0.05 * np.sin(2 * np.pi * 4 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wave = sum(0.3 / k * np.sin(k * phase) for k in (1, 2, 3)) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t) ** 2)
    wave = wave + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    sf.write(path, data.astype(np.float32), rate)
    return path


@dataclass
class Clips:
    a: Path  # 22.05 kHz mono WAV with a sidecar transcript
    b: Path  # 16 kHz stereo FLAC with a sidecar transcript
    bare: Path  # a clip with no transcript anywhere
    text_a: str = "The first reference speaker reads this line."
    text_b: str = "And the second one answers in a lower voice."


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> Clips:
    root = tmp_path_factory.mktemp("clips")
    c = Clips(_write_clip(root / "alice.wav", 22050, 210.0, 1, 0), _write_clip(root / "bob.flac", 16000, 110.0, 2, 1),
              _write_clip(root / "nobody.wav", 24000, 150.0, 1, 2))
    c.a.with_suffix(".txt").write_text(c.text_a + "\n")
    c.b.with_suffix(".txt").write_text(c.text_b + "\n")
    return c
