"""Chunked long-form generation on the tiny model, in process: seeds, carried context, fitting the cache and
seamless joins."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from higgs_audio.errors import HiggsAudioError
from higgs_audio.longform import (
    ChunkResult,
    _fit,
    chunk_seed,
    generate_longform,
    prompt_positions,
)
from higgs_audio.output import decode
from higgs_audio.prompt import build_context
from higgs_audio.voices import VoiceRef

TEXT = "The first sentence is here. A second one follows it. The third closes the text."
FAST = dict(temperature=1.0, max_new_tokens=30)


def run(api, **kwargs):
    seen = []
    options = {"chunk_method": "sentence", "max_words": 6, "seed": 11, **FAST, **kwargs}
    result = generate_longform(api, TEXT, on_prompt=lambda *a: seen.append(a), **options)
    return result, seen


@pytest.fixture(scope="module")
def default_run(tiny_api):
    return run(tiny_api)


def test_joins_are_one_continuous_decode_and_runs_reproduce(tiny_api, default_run):
    result, _ = default_run
    assert [c.text for c in result.chunks] == ["The first sentence is here.", "A second one follows it.",
                                               "The third closes the text."]
    codes = result.codes
    assert codes.shape[1] == sum(c.codes.shape[1] for c in result.chunks) > 0
    whole = tiny_api.codec.decode(codes)
    assert len(result.audio) == codes.shape[1] * 960 and np.allclose(result.audio, whole, atol=1e-5)
    again, _ = run(tiny_api)
    assert np.array_equal(again.audio, result.audio)
    # long audio is decoded block by block with the streaming decoder: the same samples
    blocks = decode(tiny_api.codec, codes, block_frames=codes.shape[1] // 3)
    assert np.allclose(blocks, whole, atol=1e-5)


def test_each_chunk_gets_its_own_seed_derived_from_the_run_seed(tiny_api, default_run):
    result, seen = default_run
    seeds = [c.seed for c in result.chunks]
    assert seeds == [s for _, _, s, _ in seen] == [chunk_seed(11, i) for i in range(3)]
    assert seeds[0] == 11 and len(set(seeds)) == 3
    assert chunk_seed(11, 1) != chunk_seed(12, 1) and 0 <= chunk_seed(11, 1) < 2**63
    # a one-chunk run uses the run's seed as it is, so it equals the unchunked API call
    single = generate_longform(tiny_api, "Just one chunk.", seed=5, scene=None, **FAST)
    plain = tiny_api.generate("Just one chunk.", seed=5, **FAST)
    assert torch.equal(single.codes, plain.codes)


@pytest.mark.parametrize("keep, expected", [(0, [0, 0, 0]), (1, [0, 1, 1]), (2, [0, 1, 2]), (None, [0, 1, 2, 3, 4, 5])])
def test_prompts_carry_the_last_generated_chunks(tiny_api, default_run, keep, expected):
    if keep == 2:  # the default
        result, seen = default_run
    elif keep is None:  # all of them: six short chunks
        result, seen = run(tiny_api, context_chunks=None, max_words=3, max_new_tokens=14)
    else:
        result, seen = run(tiny_api, context_chunks=keep)
    carried = [len(prompt.audio) for *_, prompt in seen]
    assert carried == expected == [c.context_chunks for c in result.chunks]
    for i, (*_, prompt) in enumerate(seen):  # the newest chunks, in order, right before the new text
        newest = result.chunks[i - carried[i] : i]
        assert [a.codes.tolist() for a in prompt.audio] == [c.codes.tolist() for c in newest]
        assert all(a.is_output for a in prompt.audio)


def test_old_chunks_are_dropped_to_leave_room_for_generation(tiny_api):
    context = build_context(voices=VoiceRef(torch.zeros(8, 20, dtype=torch.long), "ref words"))
    kept = [ChunkResult(f"chunk {i}", i, torch.full((8, 150), i, dtype=torch.long), "stop", 0) for i in range(3)]
    prompt, n = _fit(tiny_api, context, kept, "next text", budget=150, index=3)
    assert n == 1 and prompt.audio[-1].codes[0, 0] == 2  # only the newest fits in 512 positions with 150 free
    assert prompt_positions(prompt, 8) + 150 <= tiny_api.decoder.max_len
    huge = build_context(voices=VoiceRef(torch.zeros(8, 600, dtype=torch.long), "a very long reference"))
    with pytest.raises(HiggsAudioError, match="chunk 4's prompt needs .* positions but the model's cache holds 512"):
        _fit(tiny_api, huge, kept, "next text", budget=150, index=3)


def test_progress_bar_only_when_asked(tiny_api, capsys):
    generate_longform(tiny_api, "Quiet please.", seed=1, max_new_tokens=12)
    assert capsys.readouterr().err == ""
    generate_longform(tiny_api, "Loud please.", seed=1, max_new_tokens=12, progress=True)
    assert "chunk" in capsys.readouterr().err
