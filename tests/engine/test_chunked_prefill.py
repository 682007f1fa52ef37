"""Chunked prefill: a request joining a running batch is prefilled a chunk per step, the running streams keep
producing a column every step, and every stream's output equals the one it gets alone."""

from __future__ import annotations

import pytest
import torch

from higgs_audio.checkpoint import load_model
from higgs_audio.engine import BatchDecoder, Request
from higgs_audio.sampling import SamplingParams
from higgs_audio.text_tokenizer import TextTokenizer
from tests.engine.test_port_generation import PROMPT
from tests.helpers.eager_steps import use_eager_steps

CHUNK = 7


@pytest.fixture(scope="module")
def setup(tiny_original):
    model, _, _ = load_model(tiny_original, device="cpu", dtype="float32")
    tok = TextTokenizer(tiny_original)
    ids = tok.encode(PROMPT)
    ref = torch.randint(0, 1024, (8, 30), generator=torch.Generator().manual_seed(9))
    requests = {
        "short": Request(ids, [ref], SamplingParams(temperature=0.9, seed=1, max_new_tokens=6)),
        "long": Request(tok.encode(PROMPT.replace("<|AUDIO_OUT|>", "x")), [],
                        SamplingParams(temperature=0.9, seed=2, max_new_tokens=45)),
        "joiner": Request(ids, [ref], SamplingParams(temperature=0.9, seed=3, max_new_tokens=20)),
    }
    return model, tok, requests


def _alone(model, tok, request):
    decoder = BatchDecoder(model, tok, max_batch=1, max_len=300)
    decoder.add(request)
    columns = []
    while decoder.streams:
        columns += [e.column for e in decoder.step() if e.kind == "audio"]
    return torch.stack(columns)


@pytest.mark.parametrize("mode", ["eager", "graphs"])
def test_joining_prompt_is_prefilled_in_chunks_without_stalling_others(setup, mode):
    """``graphs``: the static steps of the CUDA path (its all-audio step also runs for the slot being
    prefilled), here without capture."""
    model, tok, requests = setup
    # The joiner starts as "short" does: without prefix_cache_mb=0 it would copy that prefix, not prefill it.
    decoder = BatchDecoder(model, tok, max_batch=2, max_len=300, prefill_chunk=CHUNK, prefix_cache_mb=0)
    if mode == "graphs":
        use_eager_steps(decoder)
    names = {decoder.add(requests["short"]): "short", decoder.add(requests["long"]): "long"}
    columns = {name: [] for name in requests}
    joiner = None
    prefilled = []  # the joiner's prefilled positions after each step of its prefill
    overlapped = 0  # steps in which the joiner was prefilled while "long" was decoding
    while decoder.streams:
        joining = joiner is not None and joiner in decoder.streams and decoder.streams[joiner].prefilling
        long_running = any(name == "long" and slot in decoder.streams for slot, name in names.items())
        events = decoder.step()
        for e in events:
            if e.kind == "audio":
                columns[names[e.slot]].append(e.column)
        if joining:
            assert not long_running or any(names[e.slot] == "long" for e in events), "a running stream stalled"
            overlapped += long_running
            prefilled.append(decoder.streams[joiner].prefilled)
        if joiner is None and decoder.free_slots():  # "short" finished: its slot is taken at once
            joiner = decoder.add(requests["joiner"])
            names[joiner] = "joiner"
            prompt_len = decoder.streams[joiner].prompt_len
    assert overlapped >= 3, overlapped
    assert prefilled[-1] == prompt_len - 1 and len(prefilled) == -(-(prompt_len - 1) // CHUNK), prefilled
    assert all(b - a == CHUNK for a, b in zip(prefilled[:-1], prefilled[1:-1])), prefilled
    for name, request in requests.items():
        assert torch.equal(torch.stack(columns[name]), _alone(model, tok, request)), name


def test_prompt_is_prefilled_whole_when_nothing_else_decodes(setup):
    model, tok, requests = setup
    decoder = BatchDecoder(model, tok, max_batch=2, max_len=300, prefill_chunk=CHUNK)
    slot = decoder.add(requests["joiner"])
    assert decoder.streams[slot].prefilling  # nothing ran yet: add() only queued it
    events = decoder.step()  # all of it at once, then its first decode step
    assert not decoder.streams[slot].prefilling
    assert [e.kind for e in events] == ["audio", "audio"]  # the forced all-bos column, then a sampled one
    with pytest.raises(ValueError, match="prefill_chunk must be at least 1"):
        BatchDecoder(model, tok, prefill_chunk=0)


def test_one_position_prompt_joins_a_running_batch(setup):
    """Nothing to prefill (the only position is the first decode input): it decodes at the next step."""
    model, tok, requests = setup
    decoder = BatchDecoder(model, tok, max_batch=2, max_len=300, prefill_chunk=CHUNK)
    decoder.add(requests["long"])
    decoder.step()
    params = SamplingParams(temperature=0, max_new_tokens=3)
    slot = decoder.add(Request([tok.token_id("<|begin_of_text|>")], [], params))
    assert [e.kind for e in decoder.step() if e.slot == slot] == ["text"]
