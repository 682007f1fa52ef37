"""Decode what the server returns, format by format, with decoders independent of the server's encoders."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

RATE = 24000
LOSSY = {"mp3", "aac", "opus"}
# Lossy encoders add priming/padding samples that a decoder may not trim (no gapless header in a stream).
LOSSY_SLACK = 2304


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """(float samples, sample rate) of a response body."""
    if fmt in ("pcm", "pcm16"):
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767, RATE
    if fmt == "aac":  # libsndfile has no AAC decoder
        import av

        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
            if np.issubdtype(samples.dtype, np.integer):
                samples = samples / float(-np.iinfo(samples.dtype).min)
            return samples.astype(np.float32), stream.rate
    wave, rate = sf.read(io.BytesIO(data), dtype="float32")
    return wave, rate


def assert_audio(data: bytes, fmt: str, expected_samples: int) -> np.ndarray:
    wave, rate = decode(data, fmt)
    assert rate == RATE, f"{fmt}: {rate} Hz"
    assert wave.ndim == 1, f"{fmt}: not mono"
    slack = LOSSY_SLACK if fmt in LOSSY else 0
    assert abs(len(wave) - expected_samples) <= slack, f"{fmt}: {len(wave)} samples, expected {expected_samples}"
    return wave
