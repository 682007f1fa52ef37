"""``fuse=True``: the all-audio decode step compiled whole by torch.compile before CUDA graphs capture it. On a
CPU a backend that runs the traced graph as it is checks what inductor would be given on CUDA."""

from __future__ import annotations

import torch

from higgs_audio.checkpoint import load_model
from higgs_audio.engine import BatchDecoder, Request
from higgs_audio.model import cpu_kernels
from higgs_audio.sampling import SamplingParams
from higgs_audio.text_tokenizer import TextTokenizer
from tests.engine.test_port_generation import PROMPT
from tests.helpers.eager_steps import use_eager_steps


def _columns(model, tok, ids, ref, fuse) -> list[torch.Tensor]:
    decoder = BatchDecoder(model, tok, max_batch=2, max_len=1100)
    use_eager_steps(decoder, fuse)
    params = SamplingParams(temperature=0.8, top_k=50, top_p=0.9, seed=3, max_new_tokens=60)
    decoder.add(Request(ids, [ref], params))
    columns = []
    for _ in range(40):
        columns += [e.column for e in decoder.step() if e.kind == "audio"]
    return columns


def test_fused_step_is_two_graphs_for_every_bucket_and_samples_as_the_plain_step(tiny_native, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "library", lambda: None)  # torch's attention, as on CUDA
    model, _, _ = load_model(tiny_native, device="cpu", dtype="float32")
    tok = TextTokenizer(tiny_native)
    ids = tok.encode(PROMPT)
    # a reference long enough that decoding crosses from the first attention-length bucket into the second
    frames = BatchDecoder.KV_BUCKET - 20 - len(ids)
    ref = torch.randint(0, 1024, (8, frames), generator=torch.Generator().manual_seed(5))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    plain = _columns(model, tok, ids, ref, None)
    fused = _columns(model, tok, ids, ref, backend)
    # whole (fullgraph), the attention length symbolic: 5 buckets (256 ... 1024, 1100), one graph below the
    # cache's length and one at it (where the cache's views are contiguous)
    assert len(graphs) == 2
    assert len(plain) == len(fused) >= 30
    assert all(torch.equal(a, b) for a, b in zip(plain, fused))


def test_fuse_needs_compile(tiny_native):
    model, _, _ = load_model(tiny_native, device="cpu", dtype="float32")
    try:
        BatchDecoder(model, TextTokenizer(tiny_native), fuse=True)
    except ValueError as e:
        assert "compile=True" in str(e)
    else:
        raise AssertionError("fuse without compile was accepted")
