"""Deterministic test signals for the codec."""

from __future__ import annotations

import numpy as np


def speech_like(n: int, sr: int = 24000, seed: int = 0) -> np.ndarray:
    """Voiced syllables: harmonics of a gliding 100-220 Hz pitch with 4 Hz syllable envelopes and two
    formant-like peaks, plus short noise bursts between syllables (fricatives)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    f0 = 160 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    formants = (500 + 200 * np.sin(2 * np.pi * 1.1 * t), 1500 + 400 * np.sin(2 * np.pi * 0.5 * t))
    voiced = sum(
        np.sin(h * phase) * sum(np.exp(-(((h * f0) - f) / 150) ** 2) for f in formants) / h**0.5
        for h in range(1, 30)
    )
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5
    bursts = rng.standard_normal(n) * (np.sin(2 * np.pi * 4 * t) < -0.9)
    wave = 0.3 * voiced * envelope + 0.05 * bursts
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


def noise(n: int, seed: int = 1) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def tone_after_silence(n: int, sr: int = 24000) -> np.ndarray:
    wave = np.zeros(n, dtype=np.float32)
    start = n // 3
    wave[start:] = 0.5 * np.sin(2 * np.pi * 440 * np.arange(n - start) / sr)
    return wave
