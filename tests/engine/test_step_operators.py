"""How many operators one eager decode step dispatches per layer: on a GPU each is a kernel launch or more,
and on a CPU each costs a dispatch, so the count bounds the step where its matmuls do not.

Counted with torch's profiler over one all-audio decode step of one stream (``BatchDecoder.step``, CPU, fp32,
the tiny model, whose layers have the full-size structure: DualFFN everywhere, grouped-query attention): the
``aten::`` events whose parent is a decoder layer's forward, i.e. every operator that the layer's Python code
calls (views included; the operators those call in turn are not counted), divided by the number of layers.

Before fused projections (main at 4c8f844): 45 per layer with our CPU kernels, 48 with torch's attention (as on
CUDA). After: 17 with our kernels (q/k/v and gate/up one matmul each, fp32 RMSNorm with its scale in one
operator, RoPE, the cache store and the scores in one C call) and 23 with torch's attention: the same fused
matmuls and RMSNorm, RoPE over all the projection's heads at once (the values' by the identity) then one split,
the decode step's rows viewed without a transpose, and the attention as two batched matmuls over views of the
cache made once per pass, the scaling and the mask in the first (``baddbmm``).

What is left with torch's attention, per layer: 4 matmuls, 2 RMSNorms, RoPE's multiply, roll and addcmul, the
split, 2 cache scatters (keys and values), the queries' regrouping, 2 batched matmuls and the softmax, the
output's view, SiLU, its product and the chunk before it, and the 2 residual adds."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from higgs_audio.checkpoint import load_model
from higgs_audio.engine import BatchDecoder, Request
from higgs_audio.model import cpu_kernels
from higgs_audio.sampling import SamplingParams
from higgs_audio.text_tokenizer import TextTokenizer
from tests.engine.test_port_generation import PROMPT

LAYER = "decoder_layer"
BOUNDS = {"our kernels": 17, "torch attention": 23}  # before: 45 and 48


def _operators_per_layer(directory) -> tuple[float, dict[str, float]]:
    model, _, _ = load_model(directory, device="cpu", dtype="float32")
    for layer in model.layers:
        def forward(*args, _forward=layer.forward, **kwargs):
            with record_function(LAYER):
                return _forward(*args, **kwargs)

        layer.forward = forward
    tok = TextTokenizer(directory)
    ref = torch.randint(0, 1024, (8, 40), generator=torch.Generator().manual_seed(5))
    decoder = BatchDecoder(model, tok, max_batch=1, max_len=512)
    decoder.add(Request(tok.encode(PROMPT), [ref], SamplingParams(temperature=0.8, seed=3, max_new_tokens=100)))
    for _ in range(12):  # past the prefill and the delay pattern's first columns: all-audio steps
        decoder.step()
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        decoder.step()
    counts: dict[str, int] = {}
    for event in prof.events():
        if event.name.startswith("aten::") and event.cpu_parent is not None and event.cpu_parent.name == LAYER:
            counts[event.name] = counts.get(event.name, 0) + 1
    layers = sum(e.name == LAYER for e in prof.events())
    assert layers == len(model.layers)  # one step, every layer once
    return sum(counts.values()) / layers, {name: n / layers for name, n in counts.items()}


@pytest.mark.parametrize("path", BOUNDS)
def test_decode_step_operators_per_layer(tiny_original, monkeypatch, path):
    if path == "torch attention":
        monkeypatch.setattr(cpu_kernels, "library", lambda: None)
    elif cpu_kernels.library() is None:
        pytest.fail("our CPU kernels did not build here (see the log): this count needs them")
    per_layer, counts = _operators_per_layer(tiny_original)
    assert per_layer <= BOUNDS[path], sorted(counts.items(), key=lambda kv: -kv[1])
    assert counts["aten::linear"] == 4  # q/k/v, o, gate/up, down
