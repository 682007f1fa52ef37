"""Weight-only quantisation and compact bf16 storage agree with full precision."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from higgs_audio.checkpoint import load_model
from higgs_audio.device import cpu_flags
from higgs_audio.model.higgs import merge_placeholders
from higgs_audio.model.quantize import CompactLinear, Int4Linear, Int8Linear
from higgs_audio.model.transformer import KVCache
from higgs_audio.text_tokenizer import TextTokenizer
from tests.helpers.tiny_model import original_config, random_weights, write_original

# Big enough for int4's 128-wide groups, small enough for CI.
SMALL = dict(
    vocab_size=128256,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
)
FRAMES = 200
HAS_AVX2 = platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= (cpu_flags() or set())


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    cfg = original_config(SMALL)
    return write_original(tmp_path_factory.mktemp("small"), random_weights(cfg, seed=11), cfg)


def _teacher_forced_logits(directory, device="cpu", **load):
    """Audio logits (FRAMES, 8, 1026) for a prompt followed by FRAMES fixed audio columns."""
    model, cfg, _ = load_model(directory, device=device, **load)
    tok = TextTokenizer(directory)
    ids = tok.encode(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nSpeak now.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|><|AUDIO_OUT|>"
    )
    columns = torch.randint(0, 1024, (8, FRAMES), generator=torch.Generator().manual_seed(2))
    merged = merge_placeholders(ids, [columns], tok.token_id("<|AUDIO|>"), tok.token_id("<|AUDIO_OUT|>"), 8)
    n = len(merged.ids)
    cache = KVCache.allocate(cfg, 1, n, model.compute_dtype, device)
    ids, codes, audio = (t[None].to(device) for t in (merged.ids, merged.codes, merged.audio))
    h = model(model.embed(ids, codes, audio), audio, torch.arange(n, device=device)[None], cache, kv_len=n)
    return model.audio_logits(h[0, merged.audio_out.to(device)]).cpu()


@pytest.fixture(scope="module")
def reference_logits(small_dir):
    return _teacher_forced_logits(small_dir, dtype="float32")


# int4 on random Gaussian weights has an inherent ~10 % weight error (16 levels over a ~5 sigma group
# range), far above what trained weights see; its bar here only proves the kernel path is right.
@pytest.mark.parametrize(
    "load, min_agree, min_corr",
    [(dict(quantize="int8"), 0.95, 0.999), (dict(dtype="auto"), 0.95, 0.999), (dict(quantize="int4"), 0.5, 0.95)],
)
@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))],
)
def test_compact_weights_agree_with_fp32(small_dir, reference_logits, load, min_agree, min_corr, device):
    """Greedy choice per frame and codebook (teacher-forced over 200 frames) and logit correlation, against
    fp32 on the CPU."""
    logits = _teacher_forced_logits(small_dir, device, **load)
    assert logits.dtype == torch.float32
    agree = (logits.argmax(-1) == reference_logits.argmax(-1)).float().mean().item()
    corr = torch.corrcoef(torch.stack([logits.flatten(), reference_logits.flatten()]))[0, 1].item()
    print(f"{device} {load}: greedy agreement {agree:.4f}, logit correlation {corr:.5f}")
    assert agree >= min_agree, agree
    assert corr > min_corr, corr


@pytest.mark.skipif(not HAS_AVX2, reason="our int8 kernel is for x86 CPUs with AVX2 and FMA")
def test_int8_with_our_cpu_kernel_agrees_with_fp32(small_dir, reference_logits, monkeypatch):
    """On a CPU without native bf16 every int8 layer runs our kernel, prefill and decode alike, and agrees with
    fp32 as closely as torch's kernels do (the bar of the test above)."""
    import higgs_audio.model.quantize as quantize_module

    monkeypatch.setattr(quantize_module, "cpu_has_native_bf16", lambda: False)
    assert quantize_module.cpu_kernels.library() is not None, "a C compiler is needed to build the int8 kernel"
    calls = []
    real = quantize_module.cpu_kernels.matmul
    monkeypatch.setattr(quantize_module.cpu_kernels, "matmul", lambda x, *a: calls.append(len(x)) or real(x, *a))
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda *a: pytest.fail("torch's int8 kernel was used"))
    logits = _teacher_forced_logits(small_dir, quantize="int8")
    assert calls and max(calls) > 200  # the prompt and its 200 frames in one pass
    agree = (logits.argmax(-1) == reference_logits.argmax(-1)).float().mean().item()
    corr = torch.corrcoef(torch.stack([logits.flatten(), reference_logits.flatten()]))[0, 1].item()
    print(f"int8, our kernel: greedy agreement {agree:.4f}, logit correlation {corr:.5f}")
    assert agree >= 0.95 and corr > 0.999, (agree, corr)


def test_quantized_layers_replace_every_linear(small_dir):
    model, _, _ = load_model(small_dir, device="cpu", quantize="int8")
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert isinstance(model.layers[0].audio_mlp.gate_up_proj, Int8Linear)
    assert model.layers[0].audio_mlp.gate_up_proj.weight.dtype == torch.int8
    auto, _, _ = load_model(small_dir, device="cpu", dtype="auto")
    assert isinstance(auto.audio_head, CompactLinear) and auto.audio_head.weight.dtype == torch.bfloat16
    assert auto.compute_dtype == torch.float32


def test_int8_and_int4_linear_error_is_small():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(384, 256, generator=g)
    x = torch.randn(5, 256, generator=g)
    exact = x @ w.t()
    for layer, tol in ((Int8Linear.from_float(w), 0.01), (Int4Linear.from_float(w), 0.12)):
        rel = ((layer(x) - exact).norm() / exact.norm()).item()
        assert rel < tol, (type(layer).__name__, rel)
    with pytest.raises(ValueError, match="divisible by 128"):
        Int4Linear.from_float(torch.randn(8, 100))


def test_int8_prefill_runs_inside_and_outside_inference_mode():
    """The dequantisation scratch buffer first made under inference mode (a decode step on CUDA, or a chunked
    prefill) must still serve a prefill outside it (a plain ``add``)."""
    layer = Int8Linear.from_float(torch.randn(64, 32))
    x = torch.randn(20, 32)  # more rows than the matrix-vector path takes
    with torch.inference_mode():
        inside = layer(x)
    assert torch.equal(layer(x), inside)


def test_quantized_linear_takes_no_rows():
    """A DualFFN layer hands its audio MLP no rows when a prompt has no audio positions."""
    w = torch.randn(384, 256)
    for layer in (Int8Linear.from_float(w), Int4Linear.from_float(w)):
        assert layer(torch.randn(1, 0, 256)).shape == (1, 0, 384)


def test_cpu_without_native_bf16_computes_prefill_in_fp32(small_dir, reference_logits, monkeypatch):
    """On a CPU that emulates bf16, compact weights are widened to fp32 for prefill-sized matmuls, and int8
    prefill without our kernel (no C compiler) dequantises to fp32; both still agree with the fp32 model."""
    import higgs_audio.model.quantize as quantize_module

    widened = []
    real_widened = quantize_module._widened
    monkeypatch.setattr(quantize_module, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(quantize_module.cpu_kernels, "library", lambda: None)
    monkeypatch.setattr(quantize_module, "_widened", lambda w, d: widened.append(d) or real_widened(w, d))
    for load in (dict(dtype="auto"), dict(quantize="int8")):
        widened.clear()
        logits = _teacher_forced_logits(small_dir, **load)
        assert widened and set(widened) == {torch.float32}, load
        agree = (logits.argmax(-1) == reference_logits.argmax(-1)).float().mean().item()
        assert agree >= 0.95, (load, agree)


@pytest.mark.parametrize("native, kernel_rows", [(True, [1, 16]), (False, [1, 16, 17, 40, 96])])
def test_int8_uses_torch_kernel_while_it_beats_dequantising(monkeypatch, native, kernel_rows):
    """Up to 16 rows torch's int8 kernel is used; without native bf16 (dequantising to fp32 is slow) and
    without our kernel up to 96, so that a short prefill (a prompt's tail after its cached prefix) stays
    fast. Both paths agree."""
    import higgs_audio.model.quantize as quantize_module

    monkeypatch.setattr(quantize_module, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(quantize_module.cpu_kernels, "library", lambda: None)
    calls, real = [], torch._weight_int8pack_mm
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda x, *a: calls.append(x.shape[0]) or real(x, *a))
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(256, 128, generator=g), torch.randn(200, 128, generator=g)
    layer = Int8Linear.from_float(w)
    for rows in (1, 16, 17, 40, 96, 97, 200):
        exact = x[:rows] @ w.t()
        assert ((layer(x[:rows]) - exact).norm() / exact.norm()).item() < 0.01, rows
    assert calls == kernel_rows


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the ISA caps below are x86 names")
def test_emulated_bf16_is_detected_by_measurement():
    """With oneDNN and ATen capped to AVX2 (no bf16 instructions), the probe must find bf16 slower than fp32,
    whatever the CPU flags say, so that prefill computes in fp32."""
    code = "from higgs_audio.model.quantize import cpu_has_native_bf16 as f; print(f())"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cpu_flags_without_bf16_decide_without_measuring(monkeypatch):
    """A CPU without bf16 instructions computes in fp32 even when a busy machine would skew the measurement."""
    import higgs_audio.model.quantize as quantize_module

    monkeypatch.setattr(quantize_module, "cpu_flags", lambda: {"sse4_2", "avx2", "fma"})
    monkeypatch.setattr(quantize_module.F, "linear", lambda *a: pytest.fail("measured despite the flags"))
    assert quantize_module.cpu_has_native_bf16.__wrapped__() is False


def test_int8_weight_at_an_unaligned_offset_serves_a_batch():
    """Weights read from a safetensors file sit at arbitrary offsets; torch's int8 kernel crashed the process
    on those for 3+ rows, so the layer must realign them. Run apart: a crash would end the test session."""
    code = (
        "import torch\n"
        "from higgs_audio.model.quantize import Int8Linear\n"
        "buf = torch.zeros(4096 * 512 + 64, dtype=torch.int8)\n"
        "off = (64 - buf.data_ptr() % 64) % 64 + 8\n"
        "w = buf[off : off + 4096 * 512].view(4096, 512).random_(-127, 127)\n"
        "layer = Int8Linear(w, torch.ones(4096, dtype=torch.bfloat16))\n"
        "x = torch.randn(4, 512)\n"
        "exact = x @ w.float().t()\n"
        "print(((layer(x) - exact).norm() / exact.norm()).item() < 0.01)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"


def test_quantizing_at_load_shows_progress_only_when_asked(tiny_original, capsys):
    load_model(tiny_original, device="cpu", quantize="int8")
    assert capsys.readouterr().err == ""
    load_model(tiny_original, device="cpu", quantize="int8", progress=True)
    assert "quantizing to int8" in capsys.readouterr().err
