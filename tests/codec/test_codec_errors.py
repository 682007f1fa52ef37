"""Codec input handling: bad audio gives AudioInputError up front; short clips, channels, rates, batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from higgs_audio import audio
from higgs_audio.errors import AudioInputError
from tests.codec.signals import noise, speech_like


@pytest.mark.parametrize(
    ("wave", "message"),
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.zeros((2, 0), dtype=np.float32), "empty"),
        (np.array([0.1, np.nan, 0.2] * 400, dtype=np.float32), "NaN or infinite"),
        (np.array([0.1, np.inf, 0.2] * 400, dtype=np.float32), "NaN or infinite"),
        (np.zeros((1, 2, 3000), dtype=np.float32), r"shaped \(samples,\) or \(channels, samples\)"),
        (np.zeros((3000, 2), dtype=np.float32), "transpose"),
        (np.array(["a", "b"]), "real numbers"),
        ([0.1, 0.2, 0.3], "numpy array"),
    ],
    ids=["empty", "empty-channels", "nan", "inf", "3d", "samples-first", "strings", "list"],
)
def test_bad_waves_are_refused_before_any_convolution(tiny_codec, wave, message):
    with pytest.raises(AudioInputError, match=message):
        tiny_codec.encode(wave, 24000)


@pytest.mark.parametrize("rate", [0, -16000, 16000.5, None])
def test_bad_sample_rates_are_refused(tiny_codec, rate):
    with pytest.raises(AudioInputError, match="sample_rate"):
        tiny_codec.encode(noise(4000), rate)


@pytest.mark.parametrize("length", [1, 37, 959])
def test_clips_shorter_than_a_frame_are_padded_to_one_frame(tiny_codec, length):
    wave = noise(length)
    codes = tiny_codec.encode(wave, 24000)
    assert codes.shape == (8, 1)
    padded = np.concatenate([wave, np.zeros(960 - length, dtype=np.float32)])
    assert torch.equal(codes, tiny_codec.encode(padded, 24000))


def test_channels_are_averaged_and_tensors_and_int16_accepted(tiny_codec):
    left, right = speech_like(24000), noise(24000)
    mono = tiny_codec.encode((left + right) / 2, 24000)
    assert torch.equal(tiny_codec.encode(np.stack([left, right]), 24000), mono)
    assert torch.equal(tiny_codec.encode(torch.from_numpy(left), 24000), tiny_codec.encode(left, 24000))
    as_int16 = np.round(left * 32768).astype(np.int16)
    assert torch.equal(tiny_codec.encode(as_int16, 24000), tiny_codec.encode(as_int16 / 32768, 24000))


def test_other_rates_are_resampled_to_24k_with_soxr(tiny_codec):
    wave = speech_like(16000 * 2 + 123, sr=16000)
    codes = tiny_codec.encode(wave, 16000)
    resampled = audio.resample(wave, 16000, 24000)
    assert resampled.shape == (int(np.ceil((16000 * 2 + 123) * 1.5)),)
    assert torch.equal(codes, tiny_codec.encode(resampled, 24000))
    assert codes.shape[1] == (len(resampled) + 841) // 960


def test_loudness_normalisation_option(tiny_codec):
    wave = 0.05 * speech_like(36000)
    codes = tiny_codec.encode(wave, 24000, loudness_normalize=True, loudness_target=-20.0)
    assert torch.equal(codes, tiny_codec.encode(audio.normalize_loudness(wave, 24000, -20.0), 24000))
    assert not torch.equal(codes, tiny_codec.encode(wave, 24000))


def test_batches_equal_one_at_a_time(tiny_codec):
    waves = [speech_like(30000), noise(30000), speech_like(20000, seed=4), noise(700)]
    batch = tiny_codec.encode_batch(waves, 24000)
    assert [c.shape[1] for c in batch] == [32, 32, 21, 1]
    for wave, codes in zip(waves, batch, strict=True):
        assert torch.equal(codes, tiny_codec.encode(wave, 24000))
    with pytest.raises(ValueError, match="2 sample rates"):
        tiny_codec.encode_batch(waves, [24000, 16000])


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (torch.zeros(8, 5), "integers"),
        (torch.zeros(7, 5, dtype=torch.long), r"\(8, frames\)"),
        (torch.zeros(8, dtype=torch.long), r"\(8, frames\)"),
        (torch.full((8, 5), 1024), r"\[0, 1024\)"),
        (torch.full((8, 5), -1), r"\[0, 1024\)"),
    ],
)
def test_decode_refuses_bad_codes(tiny_codec, codes, message):
    with pytest.raises(ValueError, match=message):
        tiny_codec.decode(codes)


def test_decode_of_no_frames_is_empty(tiny_codec):
    assert tiny_codec.decode(np.zeros((8, 0), dtype=np.int64)).shape == (0,)
    assert tiny_codec.decode(np.zeros((2, 8, 0), dtype=np.int64)).shape == (2, 0)
