"""The public API on the tiny checkpoints: reproducibility, streaming, guards, batching and the reference shim."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from higgs_audio import AudioContent, ChatMLSample, Message
from higgs_audio.engine import BatchDecoder

TEXT = "Hello there, this is a test of the engine."


def test_same_seed_same_audio_different_seed_different_audio(tiny_api):
    a = tiny_api.generate(TEXT, temperature=1.0, seed=7, max_new_tokens=40)
    b = tiny_api.generate(TEXT, temperature=1.0, seed=7, max_new_tokens=40)
    c = tiny_api.generate(TEXT, temperature=1.0, seed=8, max_new_tokens=40)
    assert a.audio.size > 0 and a.sample_rate == 24000
    assert len(a.audio) == a.codes.shape[1] * 960
    assert np.array_equal(a.audio, b.audio) and torch.equal(a.codes, b.codes)
    assert not torch.equal(a.codes, c.codes)


def test_stream_starts_within_delay_plus_codec_lookahead_and_equals_generate(tiny_api, monkeypatch):
    lookahead = tiny_api.codec.decoder_lookahead_frames
    assert lookahead == 10  # derived from the decoder's receptive field (see AudioCodec)
    steps = []
    real_step = BatchDecoder.step
    monkeypatch.setattr(BatchDecoder, "step", lambda self: steps.append(1) or real_step(self))
    stream = tiny_api.stream(TEXT, temperature=0, ras_window=0, max_new_tokens=60)
    first = next(stream)
    # frame 1 needs delayed columns 1..8 (8 steps; the all-bos column sits in the prompt), then the
    # codec needs `lookahead` more frames before that frame's samples are final
    assert len(steps) <= 8 + lookahead
    assert len(first) > 0
    streamed = np.concatenate([first, *stream])
    full = tiny_api.generate(TEXT, temperature=0, ras_window=0, max_new_tokens=60)
    assert len(streamed) == len(full.audio) > 0
    assert np.abs(streamed - full.audio).max() <= 1e-3


async def _collect(agen):
    return [chunk async for chunk in agen]


def test_async_stream_equals_sync_stream(tiny_api):
    import asyncio

    sync = np.concatenate(list(tiny_api.stream(TEXT, temperature=0, seed=3, max_new_tokens=30)))
    chunks = asyncio.run(_collect(tiny_api.astream(TEXT, temperature=0, seed=3, max_new_tokens=30)))
    assert np.array_equal(np.concatenate(chunks), sync)


def test_runaway_audio_stops_at_guard_with_warning(tiny_api, caplog):
    with caplog.at_level(logging.WARNING, logger="higgs_audio.engine"):
        r = tiny_api.generate(TEXT, temperature=0, ras_window=0, max_new_tokens=500, max_audio_seconds=1.0)
    assert r.finish_reason == "max_audio"
    assert 20 <= r.codes.shape[1] <= 30  # about 1 s of 25 Hz frames
    assert any("limit" in rec.message for rec in caplog.records)
    assert any("guard" in w for w in r.warnings)


def test_text_only_answer_is_an_explicit_no_audio_result(tiny_api):
    with pytest.warns(UserWarning, match="no audio generated"):
        r = tiny_api.generate(TEXT, force_audio=False, temperature=0, max_new_tokens=4)
    assert r.audio.size == 0 and r.codes.shape == (8, 0)
    assert len(r.text_ids) == 4
    assert r.warnings and "no audio generated" in r.warnings[0]


def test_batch_results_do_not_depend_on_neighbours(tiny_api):
    kwargs = [dict(text=f"Sentence number {i}.", temperature=1.0, seed=100 + i, max_new_tokens=25) for i in range(5)]
    batched = tiny_api.generate_batch(kwargs)  # 5 requests through 4 slots: one joins as another leaves
    for kw, got in zip(kwargs, batched):
        alone = tiny_api.generate(**kw)
        assert torch.equal(alone.codes, got.codes)


def test_voice_clone_from_array_and_user_audio_is_used(tiny_api):
    t = np.arange(24000) / 24000
    ref = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    r = tiny_api.generate(TEXT, voice=(ref, 24000), voice_text="A reference sentence.", temperature=0, max_new_tokens=20)
    assert r.usage["prompt_tokens"] > 25 + 9  # the reference's frames (+ delay) are in the prompt
    # audio in a user turn is encoded and bound to its placeholder, not dropped (spec §10.8)
    sample = ChatMLSample([
        Message("user", [AudioContent(array=ref, sample_rate=24000), "Repeat after me."]),
    ])
    req = tiny_api.request(messages=sample, temperature=0, max_new_tokens=10)
    assert len(req.audio) == 1 and req.audio[0].shape == (8, 25)


def test_reference_serve_engine_shim(tiny_original, tiny_codec):
    from higgs_audio.serve_engine import HiggsAudioServeEngine

    engine = HiggsAudioServeEngine(str(tiny_original), str(tiny_codec), device="cpu", torch_dtype="float32")
    out = engine.generate(content="Short form, as announced.", max_new_tokens=30, temperature=0.3, seed=1)
    assert out.sampling_rate == 24000 and out.audio is not None and out.audio.dtype == np.float32
    assert out.generated_audio_tokens.shape[0] == 8
    sample = ChatMLSample([Message("system", "Generate audio following instruction."), Message("user", "Hi.")])
    out = engine.generate(chat_ml_sample=sample, max_new_tokens=20, force_audio_gen=True, temperature=0)
    assert out.audio is not None and out.generated_text.startswith("<|AUDIO_OUT|>") is False
    assert out.usage["total_tokens"] == out.usage["prompt_tokens"] + out.usage["completion_tokens"]


def test_codec_stays_float32_whatever_the_model_dtype(tiny_original, tiny_codec):
    """bf16 codec encoding depends on the CPU's bf16 kernels (README): the library never chooses it."""
    from higgs_audio import HiggsAudio

    api = HiggsAudio.from_pretrained(tiny_original, tiny_codec, device="cpu", dtype="bfloat16", max_len=64)
    assert api.codec.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in api.codec.model.state_dict().values())


def test_bad_base64_audio_is_a_clear_input_error(tiny_api):
    from higgs_audio import AudioInputError

    with pytest.raises(AudioInputError, match="not valid base64"):
        tiny_api.encode_audio(AudioContent(raw_audio="é not base64 !"))
