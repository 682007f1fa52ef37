"""The DualFFN variants of spec §2.2 for layers outside ``audio_dual_ffn_layers``."""

from __future__ import annotations

import pytest
import torch

from higgs_audio.checkpoint import load_model
from higgs_audio.model.transformer import KVCache
from tests.helpers.tiny_model import original_config, original_shapes, random_weights, write_original


def _model(tmp_path, adapter: str, dual_layers: list[int]):
    cfg = original_config(audio_adapter_type=adapter, audio_dual_ffn_layers=dual_layers)
    directory = write_original(tmp_path / adapter, random_weights(cfg, seed=3), cfg)
    model, mcfg, _ = load_model(directory, device="cpu", dtype="float32")
    return model, mcfg


def _run(model, cfg, ids, codes, audio):
    n = ids.shape[1]
    cache = KVCache.allocate(cfg, 1, n, torch.float32, "cpu")
    x = model.embed(ids, codes, audio)
    return model(x, audio, torch.arange(n)[None], cache, kv_len=n)


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (1, 24), generator=g)
    audio = torch.zeros(1, 24, dtype=torch.bool)
    audio[0, 6:16] = True
    codes = torch.randint(0, 1026, (1, 24, 8), generator=g)
    return ids, codes, audio


def test_checkpoint_of_fast_forward_layers_has_no_audio_weights():
    shapes = original_shapes(original_config(audio_dual_ffn_layers=[1]))
    assert "layers.0.audio_mlp.up_proj.weight" not in shapes
    assert "layers.1.audio_mlp.up_proj.weight" in shapes


def test_fast_forward_layers_skip_audio_and_hide_it_from_text(tmp_path):
    model, cfg = _model(tmp_path, "dual_ffn_fast_forward", [])
    ids, codes, audio = _inputs(0)
    h = _run(model, cfg, ids, codes, audio)
    # audio positions pass through every layer unchanged: only the final norm applies
    assert torch.allclose(h[audio], model.norm(model.embed_audio(codes[audio])), atol=1e-6)
    # text positions never see audio keys, so changing the audio changes nothing for them
    other = codes.clone()
    other[audio] = (other[audio] + 7) % 1026
    h2 = _run(model, cfg, ids, other, audio)
    assert torch.allclose(h[~audio], h2[~audio], atol=1e-6)


def test_fast_forward_only_outside_listed_layers(tmp_path):
    model, cfg = _model(tmp_path, "dual_ffn_fast_forward", [1])
    ids, codes, audio = _inputs(1)
    h = _run(model, cfg, ids, codes, audio)
    other = codes.clone()
    other[audio] = (other[audio] + 7) % 1026
    # layer 1 is a DualFFN layer: text after the audio block attends to it there
    assert not torch.allclose(h[0, 16:], _run(model, cfg, ids, other, audio)[0, 16:], atol=1e-4)


def test_plain_dual_ffn_adapter_runs_audio_through_text_path(tmp_path):
    model, cfg = _model(tmp_path, "dual_ffn", [])
    ids, codes, audio = _inputs(2)
    n = ids.shape[1]
    x = model.embed(ids, codes, audio)
    as_audio = model(x, audio, torch.arange(n)[None], KVCache.allocate(cfg, 1, n, torch.float32, "cpu"), n)
    as_text = model(x, False, torch.arange(n)[None], KVCache.allocate(cfg, 1, n, torch.float32, "cpu"), n)
    assert torch.allclose(as_audio, as_text, atol=1e-6)


@pytest.mark.parametrize("adapter", ["dual_ffn_fast_forward", "dual_ffn"])
def test_cached_decode_equals_full_prefill(tmp_path, adapter):
    """Decoding one position at a time over the cache gives the same states as one prefill."""
    model, cfg = _model(tmp_path, adapter, [1])
    ids, codes, audio = _inputs(3)
    full = _run(model, cfg, ids, codes, audio)
    n = ids.shape[1]
    cache = KVCache.allocate(cfg, 1, 32, torch.float32, "cpu")
    for i in range(n):
        a = bool(audio[0, i])
        x = model.embed(ids[:, i : i + 1], codes[:, i : i + 1], a)
        h = model(x, a, torch.tensor([[i]]), cache, kv_len=i + 1)
        assert torch.allclose(h[0, 0], full[0, i], atol=1e-5), i


@pytest.mark.parametrize(("adapter", "dual_layers"), [("dual_ffn_fast_forward", [0]), ("dual_ffn_fast_forward", [1]),
                                                    ("dual_ffn", [])])
def test_keys_values_only_writes_the_cache_of_a_full_pass(tmp_path, adapter, dual_layers):
    """A prefill stops the last layer at its keys and values (DualFFN or fast-forward there): same cache."""
    model, cfg = _model(tmp_path, adapter, dual_layers)
    ids, codes, audio = _inputs(6)
    n = ids.shape[1]
    x = model.embed(ids, codes, audio)
    caches = [KVCache.allocate(cfg, 1, n + 4, torch.float32, "cpu") for _ in range(2)]
    for cache, only in zip(caches, (False, True)):
        for a in (audio, True):  # a mixed pass, then an all-audio one (fast-forward layers write nothing for it)
            start = 0 if a is audio else n - 4
            out = model(x[:, start:], a, torch.arange(start, n)[None], cache, kv_len=n, keys_values_only=only)
            assert (out is None) == only
    for a, b in zip(caches[0].__dict__.values(), caches[1].__dict__.values(), strict=True):
        assert torch.equal(a, b)
    assert caches[1].k[-1].abs().sum() > 0


def test_batched_streams_at_different_positions_match_single_streams(tiny_original):
    model, cfg, _ = load_model(tiny_original, device="cpu", dtype="float32")
    prompts = [_inputs(s) for s in (4, 5)]
    lengths = [24, 17]
    cache = KVCache.allocate(cfg, 2, 40, torch.float32, "cpu")
    singles = []
    for b, ((ids, codes, audio), n) in enumerate(zip(prompts, lengths)):
        one = KVCache.allocate(cfg, 1, 40, torch.float32, "cpu")
        x = model.embed(ids[:, :n], codes[:, :n], audio[:, :n])
        model(x, audio[:, :n], torch.arange(n)[None], one, kv_len=n)
        singles.append(one)
        cache.k[:, b], cache.v[:, b] = one.k[:, 0], one.v[:, 0]
    step = torch.randint(0, 1026, (2, 1, 8), generator=torch.Generator().manual_seed(9))
    pos = torch.tensor([[lengths[0]], [lengths[1]]])
    batched = model(model.embed(None, step, True), True, pos, cache, kv_len=40)
    for b, n in enumerate(lengths):
        h = model(model.embed(None, step[b : b + 1], True), True, torch.tensor([[n]]), singles[b], kv_len=n + 1)
        assert torch.allclose(batched[b], h[0], atol=1e-5)
