"""Projections joined at load (q/k/v and gate/up, ``fuse_projections``) compute what the checkpoint's separate
ones compute: in fp32 from both on-disk formats, with compact bf16 weights, quantized at load and from saved
quantized copies; greedy generation gives the same codes. Training and saved copies keep the separate ones."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from higgs_audio.checkpoint import WEIGHTS_FILE, load_model
from higgs_audio.engine import BatchDecoder, Request
from higgs_audio.model.quantize import Int4Linear, Int8Linear
from higgs_audio.sampling import SamplingParams
from higgs_audio.text_tokenizer import TextTokenizer
from tests.engine.test_port_generation import PROMPT
from tests.model.test_quantize import _teacher_forced_logits, small_dir  # noqa: F401 (fixture)
from tests.model.test_quantized_checkpoint import saved  # noqa: F401 (fixture)


def test_loading_joins_the_separate_weights_in_order(tiny_original):
    fused, _, _ = load_model(tiny_original, device="cpu", dtype="float32")
    separate, _, _ = load_model(tiny_original, device="cpu", dtype="float32", fuse=False)
    for joined, parts in ((fused.layers[1].self_attn, separate.layers[1].self_attn),
                          (fused.layers[0].audio_mlp, separate.layers[0].audio_mlp)):
        (name, part_names), = type(joined).FUSED.items()
        assert torch.equal(getattr(joined, name).weight, torch.cat([getattr(parts, p).weight for p in part_names]))
        assert not any(hasattr(joined, p) for p in part_names)


@pytest.mark.parametrize("checkpoint", ["tiny_original", "tiny_native"])
def test_fused_logits_equal_separate_in_fp32(request, checkpoint):
    directory = request.getfixturevalue(checkpoint)
    fused = _teacher_forced_logits(directory, dtype="float32")
    separate = _teacher_forced_logits(directory, dtype="float32", fuse=False)
    assert (fused - separate).abs().max().item() <= 1e-5


@pytest.mark.parametrize("load", [dict(dtype="auto"), dict(quantize="int8"), dict(quantize="int4")],
                         ids=["compact-bf16", "int8", "int4"])
def test_fused_logits_equal_separate_after_quantizing(small_dir, load):  # noqa: F811
    """Every quantized field is per output channel, so the joined layer holds the parts' own values."""
    fused = _teacher_forced_logits(small_dir, **load)
    separate = _teacher_forced_logits(small_dir, fuse=False, **load)
    assert (fused - separate).abs().max().item() <= 1e-5 * fused.abs().max().item()


@pytest.mark.parametrize("mode, layer", [("int8", Int8Linear), ("int4", Int4Linear)])
def test_saved_copies_keep_the_separate_projections_and_load_joined(saved, mode, layer):  # noqa: F811
    with safe_open(str(saved[mode] / WEIGHTS_FILE), framework="pt") as f:
        keys = set(f.keys())
    assert {"layers.0.self_attn.q_proj.scales_zeros" if mode == "int4" else "layers.0.self_attn.q_proj.scales",
            "layers.1.audio_mlp.up_proj." + layer.FIELDS[0]} <= keys
    assert not any("qkv_proj" in k or "gate_up_proj" in k for k in keys)
    model, _, _ = load_model(saved[mode], device="cpu")
    assert isinstance(model.layers[0].self_attn.qkv_proj, layer) and isinstance(model.layers[1].mlp.gate_up_proj, layer)
    fused = _teacher_forced_logits(saved[mode])
    assert torch.equal(fused, _teacher_forced_logits(saved[mode], fuse=False))


def _greedy_codes(model, directory, frames: int) -> torch.Tensor:
    tok = TextTokenizer(directory)
    ref = torch.randint(0, 1024, (8, 20), generator=torch.Generator().manual_seed(5))
    decoder = BatchDecoder(model, tok, max_batch=1, max_len=256)
    decoder.add(Request(tok.encode(PROMPT), [ref], SamplingParams(temperature=0, ras_window=0,
                                                                  max_new_tokens=frames)))
    columns, done = [], False
    while not done:
        for e in decoder.step():
            columns += [e.column] if e.kind == "audio" else []
            done |= e.kind == "done"
    return torch.stack(columns)


@pytest.mark.parametrize("load", [dict(dtype="float32"), dict(quantize="int8")], ids=["fp32", "int8"])
def test_greedy_codes_of_fused_and_separate_projections_are_identical(tiny_original, load):
    fused = _greedy_codes(load_model(tiny_original, device="cpu", **load)[0], tiny_original, 60)
    separate = _greedy_codes(load_model(tiny_original, device="cpu", fuse=False, **load)[0], tiny_original, 60)
    assert len(fused) == 60 and torch.equal(fused, separate)


def test_saved_int8_parts_packed_and_plain_stay_separate(tmp_path):
    """Key/value rows that are not whole blocks of our kernel's 4 rows are stored plain beside packed query rows:
    such a group is not joined (a joined weight is packed whole or not at all)."""
    from higgs_audio.model import cpu_kernels
    from higgs_audio.quantized_checkpoint import save_quantized
    from tests.helpers.tiny_model import TINY, original_config, random_weights, write_original

    cfg = original_config(dict(TINY, num_key_value_heads=1, head_dim=18))  # k, v: 18 rows; q: 72
    directory = write_original(tmp_path / "odd", random_weights(cfg, seed=3), cfg)
    copy = save_quantized(directory, tmp_path / "odd-int8", "int8")
    model, _, _ = load_model(copy, device="cpu")
    attention = model.layers[0].self_attn
    assert attention.qkv_proj is None and isinstance(attention.q_proj, Int8Linear)
    assert isinstance(model.layers[0].mlp.gate_up_proj, Int8Linear)
    assert attention.q_proj.our_kernel == (cpu_kernels.library() is not None) and not attention.k_proj.our_kernel
    # as the separate layers quantized at load: key and value rows take torch's int8 kernel, query rows ours
    assert torch.equal(_teacher_forced_logits(copy), _teacher_forced_logits(directory, quantize="int8", fuse=False))
