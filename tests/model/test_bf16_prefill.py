"""Prefill in bf16 end to end on CPUs with native bf16 (``HiggsAudioModel.prefill_dtype``): chosen at load only
there, and equal to the fp32 prefill within bf16's precision. Forced here, where bf16 is emulated (its speed on
such CPUs is what it is for; these check its values and its choice)."""

from __future__ import annotations

import torch

from higgs_audio import checkpoint
from higgs_audio.checkpoint import load_model
from higgs_audio.model.higgs import PREFILL_ROWS, merge_placeholders
from higgs_audio.model.transformer import KVCache
from higgs_audio.text_tokenizer import TextTokenizer
from tests.engine.test_port_generation import PROMPT


def test_bf16_prefill_is_chosen_only_with_native_bf16_and_auto_dtype(tiny_original, monkeypatch):
    monkeypatch.setattr(checkpoint, "cpu_has_native_bf16", lambda: False)
    assert load_model(tiny_original, device="cpu")[0].prefill_dtype is None  # AVX2: fp32 as before
    monkeypatch.setattr(checkpoint, "cpu_has_native_bf16", lambda: True)
    assert load_model(tiny_original, device="cpu")[0].prefill_dtype == torch.bfloat16
    assert load_model(tiny_original, device="cpu", quantize="int8")[0].prefill_dtype == torch.bfloat16
    assert load_model(tiny_original, device="cpu", dtype="float32")[0].prefill_dtype is None  # asked for


def _prefill_then_decode(model, cfg, tok, frames: torch.Tensor):
    """A voice-clone prompt (its reference: ``frames``' first 20 columns) and ``frames`` as the answer's audio in
    one pass, then one decode step: the cache's keys, the pass's audio logits and the step's."""
    ids = tok.encode(PROMPT + "<|AUDIO_OUT|>")
    blocks = [frames[:, :20], frames]
    merged = merge_placeholders(ids, blocks, tok.token_id("<|AUDIO|>"), tok.token_id("<|AUDIO_OUT|>"), 8)
    n = len(merged.ids)
    assert n > PREFILL_ROWS
    cache = KVCache.allocate(cfg, 1, n + 1, torch.float32, "cpu")
    ids, codes, audio = merged.ids[None], merged.codes[None], merged.audio[None]
    h = model(model.embed(ids, codes, audio), audio, torch.arange(n)[None], cache, kv_len=n)
    prefill = model.audio_logits(h[0, merged.audio_out])
    step = model.embed(ids[:, :1], frames[:, -1][None, None], True)
    decode = model.audio_logits(model(step, True, torch.tensor([[n]]), cache, kv_len=n + 1)[0, 0])
    return cache.k[:, :, :, :n].clone(), prefill, decode


def test_bf16_prefill_equals_fp32_within_bf16_precision(tiny_original):
    model, cfg, _ = load_model(tiny_original, device="cpu")  # bf16 weights, fp32 activations
    assert model.compute_dtype == torch.float32
    tok = TextTokenizer(tiny_original)
    frames = torch.randint(0, 1024, (8, 60), generator=torch.Generator().manual_seed(4))
    fp32 = _prefill_then_decode(model, cfg, tok, frames)
    model.prefill_dtype = torch.bfloat16
    bf16 = _prefill_then_decode(model, cfg, tok, frames)
    for name, a, b in zip(("keys", "prefill logits", "decode logits"), fp32, bf16):
        assert b.dtype == torch.float32, name  # the cache and the logits stay fp32
        rel = ((a - b).norm() / a.norm()).item()
        assert 0 < rel < 2e-2, (name, rel)  # computed in bf16 (not equal), to bf16's precision
    agree = (fp32[1].argmax(-1) == bf16[1].argmax(-1)).float().mean().item()
    assert agree > 0.9, agree
