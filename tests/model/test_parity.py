"""Our network against transformers' HiggsAudioV2 port on identical random weights (fp32)."""

from __future__ import annotations

import pytest
import torch

from higgs_audio.checkpoint import load_model
from higgs_audio.model.higgs import merge_placeholders
from higgs_audio.model.transformer import KVCache
from higgs_audio.text_tokenizer import TextTokenizer
from tests.helpers.tiny_model import load_port

TOL = 1e-4
BOS, EOS = 1024, 1025


def delayed_block(codes: torch.Tensor) -> torch.Tensor:
    """Stream bos/eos around (K, T) codes, then the delay pattern (spec §4.1), written out independently."""
    k, t = codes.shape
    out = torch.empty(k, t + 2 + k - 1, dtype=torch.long)
    for row in range(k):
        out[row] = torch.tensor([BOS] * (row + 1) + codes[row].tolist() + [EOS] * (k - row))
    return out


@pytest.fixture(scope="module")
def models(tiny_native):
    ours, cfg, _ = load_model(tiny_native, device="cpu", dtype="float32")
    return ours, cfg, load_port(tiny_native), TextTokenizer(tiny_native)


def test_prefill_and_cached_decode_match_port(models):
    ours, cfg, port, tok = models
    text = (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nThe reference transcript.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|><|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nNow say this, please.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>"
    )
    ids = tok.encode(text)
    g = torch.Generator().manual_seed(1)
    block = delayed_block(torch.randint(0, 1024, (8, 15), generator=g))
    merged = merge_placeholders(ids, [block], tok.token_id("<|AUDIO|>"), tok.token_id("<|AUDIO_OUT|>"), 8)
    n = len(merged.ids)
    assert n == len(ids) - 1 + block.shape[1]

    # ours
    cache = KVCache.allocate(cfg, 1, 128, torch.float32, "cpu")
    x = ours.embed(merged.ids[None], merged.codes[None], merged.audio[None])
    h = ours(x, merged.audio[None], torch.arange(n)[None], cache, kv_len=n)
    our_audio, our_text = ours.audio_logits(h[0, merged.audio_out]), ours.text_logits(h[0, -1])

    # port: one placeholder per frame, the codes as (frames, codebooks)
    out = port.model(
        input_ids=merged.ids[None],
        audio_input_ids=block.t()[None],
        audio_input_ids_mask=torch.ones(1, block.shape[1], dtype=torch.bool),
        use_cache=True,
    )
    port_cache, ph = out.past_key_values, out.last_hidden_state
    port_audio = port.audio_lm_head(ph[0, merged.audio_out]).view(-1, 8, 1026)
    port_text = port.text_lm_head(ph[0, -1])

    assert merged.audio_out.sum() == block.shape[1]
    assert (our_audio - port_audio).abs().max() <= TOL
    assert (our_text - port_text).abs().max() <= TOL
    assert our_audio.std() > 0.5  # logits are not degenerate

    # 20 audio frames, then two text tokens, each one cached step
    steps = [("audio", torch.randint(0, 1026, (8,), generator=g)) for _ in range(20)]
    steps += [("text", tok.token_id("<|audio_eos|>")), ("text", tok.token_id("<|eot_id|>"))]
    for i, (kind, value) in enumerate(steps):
        pos = torch.tensor([[n + i]])
        if kind == "audio":
            x = ours.embed(None, value[None, None], True)
            h = ours(x, True, pos, cache, kv_len=n + i + 1)
            ph = port.model(audio_input_ids=value[None, None], past_key_values=port_cache, use_cache=True)
        else:
            x = ours.embed(torch.tensor([[value]]), None, False)
            h = ours(x, False, pos, cache, kv_len=n + i + 1)
            ph = port.model(input_ids=torch.tensor([[value]]), past_key_values=port_cache, use_cache=True)
        port_cache, ph = ph.past_key_values, ph.last_hidden_state
        assert (ours.audio_logits(h) - port.audio_lm_head(ph).view(1, 1, 8, 1026)).abs().max() <= TOL, i
        assert (ours.text_logits(h) - port.text_lm_head(ph)).abs().max() <= TOL, i


def test_both_formats_load_identical_tensors(tiny_original, tiny_native):
    a, cfg_a, _ = load_model(tiny_original, device="cpu", dtype="float32")
    b, cfg_b, _ = load_model(tiny_native, device="cpu", dtype="float32")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert cfg_a.codebook_size == cfg_b.codebook_size == 1024
    assert cfg_a.audio_vocab_size == 1026
