"""Long clips encode in bounded memory: the audio-rate conv stacks in chunks (same codes), and clips past
``segment_seconds`` as independent segments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from higgs_audio.codec.streaming import acoustic_encoder_in_chunks, features_in_chunks
from tests.codec.signals import noise, speech_like

# 2.0 s, 4.0 s and 7.0 s, and lengths where the acoustic input is padded (T mod 960 in [119, 632)).
LENGTHS = [48000, 96123, 168555, 74980]


@pytest.mark.parametrize("length", LENGTHS)
def test_chunked_conv_stacks_give_the_whole_clips_codes(tiny_codec, length):
    wave = speech_like(length) + 0.05 * noise(length)
    whole = tiny_codec.model.encode(torch.from_numpy(wave)[None, None])
    for chunk_seconds in (0.1, 0.37, 1.0):
        chunked = tiny_codec.model.encode(torch.from_numpy(wave)[None, None], chunk_seconds)
        assert torch.equal(chunked, whole), chunk_seconds


@pytest.mark.parametrize("chunk", [61, 997, 5000])
def test_chunked_stacks_equal_the_one_shot_layers(tiny_codec, chunk):
    model = tiny_codec.model
    wave = torch.from_numpy(speech_like(30000))[None]
    with torch.inference_mode():
        features = model.semantic_model.feature_extractor(wave)
        assert torch.allclose(features_in_chunks(model.semantic_model.feature_extractor, wave, chunk), features,
                              atol=1e-5)
        latent = model.acoustic_encoder(wave[:, None])
        assert torch.allclose(acoustic_encoder_in_chunks(model.acoustic_encoder, wave[:, None], chunk), latent,
                              atol=1e-5)


def test_encode_uses_chunks_past_chunk_seconds(tiny_codec, monkeypatch):
    wave = speech_like(48000)
    whole = tiny_codec.encode(wave, 24000)
    monkeypatch.setattr(tiny_codec, "chunk_seconds", 0.25)
    calls = []
    real = acoustic_encoder_in_chunks
    monkeypatch.setattr("higgs_audio.codec.codec.acoustic_encoder_in_chunks",
                        lambda *a: calls.append(a[-1]) or real(*a))
    assert torch.equal(tiny_codec.encode(wave, 24000), whole)
    assert calls == [6000]


@pytest.mark.parametrize("length", [24000 * 3 + 960 * 3 + 100, 96123])
def test_clips_past_segment_seconds_are_encoded_segment_by_segment(tiny_codec, monkeypatch, length):
    wave = speech_like(length)
    monkeypatch.setattr(tiny_codec, "segment_seconds", 1.0)
    codes = tiny_codec.encode(wave, 24000)
    assert codes.shape == (8, tiny_codec.num_frames(length))
    segments = tiny_codec._segments(wave)
    assert len(segments) > 1 and all(len(s) <= 24000 and len(s) % 960 == 0 for s in segments[:-1])
    assert np.array_equal(np.concatenate(segments), wave)
    monkeypatch.setattr(tiny_codec, "segment_seconds", 300.0)
    assert torch.equal(codes, torch.cat([tiny_codec.encode(s, 24000) for s in segments], dim=1))


def test_a_clip_within_segment_seconds_is_one_segment(tiny_codec):
    wave = speech_like(24000)
    assert len(tiny_codec._segments(wave)) == 1
