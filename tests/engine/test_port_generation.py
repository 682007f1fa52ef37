"""Greedy generation against transformers' HiggsAudioV2ForConditionalGeneration.generate on the same weights."""

from __future__ import annotations

import logging

import pytest
import torch

from higgs_audio.checkpoint import load_model
from higgs_audio.delay import add_delay_pattern
from higgs_audio.engine import BatchDecoder, Request
from higgs_audio.sampling import SamplingParams
from higgs_audio.text_tokenizer import TextTokenizer
from tests.helpers.eager_steps import use_eager_steps
from tests.helpers.tiny_model import load_port

PROMPT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nGenerate audio following instruction.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nA reference line.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|><|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nThe text to speak.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>"
)


def test_greedy_codes_equal_port(tiny_native):
    model, cfg, _ = load_model(tiny_native, device="cpu", dtype="float32")
    tok = TextTokenizer(tiny_native)
    ids = tok.encode(PROMPT)
    ref = torch.randint(0, 1024, (8, 20), generator=torch.Generator().manual_seed(5))
    frames = 60
    params = SamplingParams(temperature=0, ras_window=0, max_new_tokens=frames)

    decoder = BatchDecoder(model, tok, max_batch=1, max_len=256)
    decoder.add(Request(ids, [ref], params))
    ours = []  # the forced all-bos column sits in the prompt and is reported by the first step
    done = False
    while not done:
        for e in decoder.step():
            if e.kind == "audio":
                ours.append(e.column)
            done |= e.kind == "done"
    ours = torch.stack(ours)

    # the port: one placeholder per delayed prompt frame, generated columns returned after them
    port = load_port(tiny_native)
    block = add_delay_pattern(ref, 1024, 1025)
    audio_out = tok.token_id("<|AUDIO_OUT|>")
    at = ids.index(audio_out)
    port_ids = ids[:at] + [audio_out] * block.shape[1] + ids[at + 1 :]
    out = port.generate(
        input_ids=torch.tensor([port_ids]),
        attention_mask=torch.ones(1, len(port_ids), dtype=torch.long),
        audio_input_ids=block.t()[None],
        audio_input_ids_mask=torch.ones(1, block.shape[1], dtype=torch.bool),
        do_sample=False,
        max_new_tokens=frames,
        ras_win_len=None,
    )
    theirs = out[0, block.shape[1] :]
    assert len(ours) == frames
    assert theirs.shape == ours.shape, (theirs.shape, ours.shape)
    assert torch.equal(ours, theirs)
    # the comparison is not vacuous: past the start ramp the codes vary
    assert len(set(ours[10:, 0].tolist())) > 5


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))],
)
def test_graphed_step_matches_eager(tiny_original, device):
    """The static-shape decode step (every slot, bucketed attention length) produces the same streams as the
    eager step, for audio streams and a text stream beside them (mixed steps, then text-only steps). On CUDA
    the all-audio steps are replayed from CUDA graphs, sampling included, and text and mixed steps replay
    their forward pass; on the CPU the same steps run without capture (``EagerSteps``)."""
    model, _, _ = load_model(tiny_original, device=device, dtype="float32")
    tok = TextTokenizer(tiny_original)
    ids = tok.encode(PROMPT.replace("<|AUDIO_OUT|>", "x"))
    text_ids = ids[: -1]  # without the trailing <|audio_out_bos|>: the model writes text first
    kinds = set()  # what the decoding streams' next inputs were

    def run(graphs: bool):
        decoder = BatchDecoder(model, tok, max_batch=3, max_len=300, compile=graphs and device == "cuda")
        if graphs and device == "cpu":
            use_eager_steps(decoder)
        decoder.add(Request(ids, [], SamplingParams(temperature=0.8, seed=3, max_new_tokens=40)))
        decoder.add(Request(ids, [], SamplingParams(temperature=0, ras_window=0, max_new_tokens=25)))
        columns, tokens = {0: [], 1: []}, []
        for step in range(10**3):
            if step == 10:  # all-audio steps first, then mixed ones
                decoder.add(Request(text_ids, [], SamplingParams(temperature=1.0, seed=4, max_new_tokens=50)))
            if not decoder.streams:
                break
            for e in decoder.step():
                if e.kind == "audio":
                    assert e.column.device.type == "cpu"  # copied once per step
                    columns[e.slot].append(e.column)  # kept: a later step must not change it
                elif e.kind == "text":
                    tokens.append((e.slot, e.token))
            for slot, s in decoder.streams.items():  # the host's copy of what chooses the next step's kind and length
                if s.decoding:
                    on_device = int(decoder.slots.pos[slot]), bool(decoder.slots.next_audio[slot])
                    assert (s.position, s.audio_next) == on_device, (step, slot)
                    kinds.add(s.audio_next)
        return {k: torch.stack(v).cpu() for k, v in columns.items()}, tokens

    (eager, eager_tokens), (static, static_tokens) = run(False), run(True)
    assert kinds == {True, False}
    assert len(eager_tokens) > 40 and eager_tokens == static_tokens  # text ran past the audio streams' end
    for slot in eager:
        assert torch.equal(eager[slot], static[slot])


def test_compile_on_cpu_warns_and_decodes_eagerly(tiny_original, caplog):
    """``compile=True`` only speeds up CUDA (torch.compile made the CPU step twice as slow): on a CPU it says so
    and decodes as without it, only the live slots stepping."""
    model, _, _ = load_model(tiny_original, device="cpu", dtype="float32")
    tok = TextTokenizer(tiny_original)
    ids = tok.encode(PROMPT.replace("<|AUDIO_OUT|>", "x"))

    def run(compile: bool):
        decoder = BatchDecoder(model, tok, max_batch=2, max_len=256, compile=compile)
        decoder.add(Request(ids, [], SamplingParams(temperature=0.8, seed=5, max_new_tokens=30)))
        columns = []
        while decoder.streams:
            columns += [e.column for e in decoder.step() if e.kind == "audio"]
        return decoder, torch.stack(columns)

    with caplog.at_level(logging.WARNING, logger="higgs_audio.engine"):
        compiled_decoder, compiled = run(True)
    assert "compile speeds up decoding on CUDA only" in caplog.text
    assert compiled_decoder._graphs is None
    assert torch.equal(run(False)[1], compiled)
