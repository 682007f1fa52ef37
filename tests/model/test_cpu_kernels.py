"""Our CPU kernels (built from C at first use): the int8 matrix product against exact arithmetic, decode
attention against torch's."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from higgs_audio.model import cpu_kernels
from higgs_audio.model.quantize import Int8Linear
from tests.model.test_quantize import HAS_AVX2

pytestmark = pytest.mark.skipif(not HAS_AVX2, reason="our int8 kernel is for x86 CPUs with AVX2 and FMA")


def _exact(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return (x.double() @ weight.double().t() * scales.double()).float()


def _product(x, weight, scales):
    return cpu_kernels.matmul(x, cpu_kernels.pack(weight), scales.float())


@pytest.mark.parametrize("n, k", [(4, 16), (64, 96), (8, 272), (256, 1024)])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 17])
def test_product_matches_exact_arithmetic(m, n, k):
    """Every row count (pairs and a lone row), input sizes that are not whole 256-wide chunks, one block."""
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    weight = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    scales = torch.rand(n, generator=g) * 0.01
    x = torch.randn(m, k, generator=g)
    exact = _exact(x, weight, scales)
    out = _product(x, weight, scales)
    assert out.shape == (m, n) and out.dtype == torch.float32
    # x is rounded to int16 per row: ~3e-5 of the result's scale
    assert ((out - exact).norm() / exact.norm()).item() < 2e-4


def test_packing_interleaves_four_rows_and_unpacks():
    weight = torch.arange(8 * 48, dtype=torch.int32).remainder(251).sub(125).to(torch.int8).reshape(8, 48)
    packed = cpu_kernels.pack(weight)
    assert packed.shape == (2, 3, 4, 16) and packed.data_ptr() % 32 == 0
    assert torch.equal(packed[1, 2, 3], weight[1 * 4 + 3, 2 * 16 : 3 * 16])
    assert torch.equal(cpu_kernels.unpacked(packed).reshape(8, 48), weight)
    assert torch.equal(cpu_kernels.unpack_bf16(packed, torch.empty(8 * 48, dtype=torch.bfloat16)), weight.bfloat16())


def test_long_rows_of_extreme_values_do_not_overflow():
    """Every product at its largest (127 or -128 x 32767) over 8192 inputs: summing them all in int32 would
    wrap around, so the kernel widens its sums to fp32 on the way."""
    weight = torch.full((4, 8192), 127, dtype=torch.int8)
    weight[1] = -128
    x = torch.full((2, 8192), 3.0)
    out = _product(x, weight, torch.ones(4))
    assert torch.allclose(out[:, 0], torch.full((2,), 3.0 * 127 * 8192), rtol=1e-5)
    assert torch.allclose(out[:, 1], torch.full((2,), -3.0 * 128 * 8192), rtol=1e-5)


def test_rows_are_scaled_apart():
    """Each input row has its own int16 scale: a row of zeros stays zeros, and a tiny row beside a huge one
    keeps its precision."""
    g = torch.Generator().manual_seed(1)
    weight = torch.randint(-127, 128, (8, 64), dtype=torch.int8, generator=g)
    x = torch.randn(3, 64, generator=g)
    x[0] = 0
    x[1] *= 1e-6
    x[2] *= 1e6
    out = _product(x, weight, torch.ones(8))
    exact = _exact(x, weight, torch.ones(8))
    assert torch.equal(out[0], torch.zeros(8))
    for row in (1, 2):
        assert ((out[row] - exact[row]).norm() / exact[row].norm()).item() < 2e-4


def test_thread_count_does_not_change_the_result():
    g = torch.Generator().manual_seed(2)
    weight = torch.randint(-127, 128, (512, 256), dtype=torch.int8, generator=g)
    x = torch.randn(6, 256, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _product(x, weight, torch.ones(512))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, _product(x, weight, torch.ones(512)))


def test_layers_of_other_shapes_fall_back_to_torch(monkeypatch):
    """The packed layout needs output sizes divisible by 4 (and input sizes by 16, which torch's kernel needs
    too: it crashed on 40 with AVX-512); other layers keep the plain weight and torch's kernel."""
    import higgs_audio.model.quantize as quantize_module

    monkeypatch.setattr(quantize_module, "cpu_has_native_bf16", lambda: False)
    assert Int8Linear.from_float(torch.randn(64, 32)).our_kernel
    for shape in ((66, 32), (62, 48)):
        layer = Int8Linear.from_float(torch.randn(*shape))
        assert not layer.our_kernel and layer.weight.shape == shape
        x = torch.randn(2, shape[1])
        assert layer(x).shape == (2, shape[0])


def test_a_missing_compiler_falls_back_with_a_warning(monkeypatch, tmp_path, caplog):
    """No C compiler: int8 layers use torch's kernel and the log says why; nothing is left in the cache."""
    import higgs_audio.model.quantize as quantize_module

    monkeypatch.setenv("HIGGS_AUDIO_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setattr(quantize_module, "cpu_has_native_bf16", lambda: False)
    cpu_kernels.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="higgs_audio.model.cpu_kernels"):
            assert cpu_kernels.library() is None
            layer = Int8Linear.from_float(torch.randn(64, 32))
        assert "could not build" in caplog.text and "torch's slower kernels" in caplog.text
        assert not layer.our_kernel
        assert not list((tmp_path / "kernels").iterdir())
    finally:
        cpu_kernels.library.cache_clear()


def test_the_kernel_is_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HIGGS_AUDIO_CACHE", str(tmp_path))
    cpu_kernels.library.cache_clear()
    try:
        assert cpu_kernels.library() is not None
        built = list((tmp_path / "kernels").iterdir())
        assert len(built) == 1 and built[0].suffix == ".so"
        stamp = built[0].stat().st_mtime_ns
        cpu_kernels.library.cache_clear()
        assert cpu_kernels.library() is not None
        assert built[0].stat().st_mtime_ns == stamp
    finally:
        cpu_kernels.library.cache_clear()


@pytest.mark.parametrize("native, kernel_rows", [(False, [1, 48, 49, 200]), (True, [1, 48])])
def test_layers_use_our_kernel_while_it_beats_dequantising(monkeypatch, native, kernel_rows):
    """Without native bf16 our kernel takes every row count (prefill too); with native bf16 a dense bf16
    matmul over the weight unpacked from the kernel's layout wins above 48 rows. Both paths agree."""
    import higgs_audio.model.quantize as quantize_module

    monkeypatch.setattr(quantize_module, "cpu_has_native_bf16", lambda: native)
    calls, real = [], cpu_kernels.matmul
    monkeypatch.setattr(cpu_kernels, "matmul", lambda x, *a: calls.append(x.shape[0]) or real(x, *a))
    g = torch.Generator().manual_seed(3)
    w, x = torch.randn(256, 128, generator=g), torch.randn(200, 128, generator=g)
    layer = Int8Linear.from_float(w)
    assert layer.our_kernel
    for rows in (1, 48, 49, 200):
        exact = x[:rows] @ w.t()
        assert ((layer(x[:rows]) - exact).norm() / exact.norm()).item() < 0.01, rows
    assert calls == kernel_rows


def test_dense_path_unpacks_the_weight_in_slices(monkeypatch):
    """With native bf16, a prefill-sized product unpacks the weight a slice of rows at a time (here 40 rows:
    six whole slices and a last of 16) into each slice's own output columns, then scales the product: the
    int8 arithmetic exactly, but for x and the product rounded to bf16."""
    import higgs_audio.model.quantize as quantize_module

    monkeypatch.setattr(quantize_module, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(quantize_module, "_UNPACKED_SLICE_BYTES", 40 * 128 * 2)
    slices, real = [], cpu_kernels.unpack_bf16
    monkeypatch.setattr(cpu_kernels, "unpack_bf16",
                        lambda packed, out: slices.append(packed.shape[0]) or real(packed, out))
    g = torch.Generator().manual_seed(4)
    layer = Int8Linear.from_float(torch.randn(256, 128, generator=g))
    x = torch.randn(100, 128, generator=g)
    plain = cpu_kernels.unpacked(layer.weight).reshape(256, 128)
    exact = _exact(x.bfloat16().float(), plain, layer.scales)
    assert ((layer(x) - exact).norm() / exact.norm()).item() < 4e-3
    assert slices == [10] * 6 + [4]  # blocks of four rows


def _attention_module(heads, kv_heads, d):
    from higgs_audio.model.transformer import Attention

    module = Attention.__new__(Attention)
    torch.nn.Module.__init__(module)
    module.num_heads, module.num_kv_heads, module.head_dim = heads, kv_heads, d
    return module


@pytest.mark.parametrize("streams, heads, kv_heads, d, kv_len", [(1, 24, 8, 128, 400), (4, 24, 8, 128, 333),
                                                                  (3, 4, 2, 16, 37), (2, 6, 6, 40, 5)])
def test_decode_attention_matches_torch(streams, heads, kv_heads, d, kv_len):
    """A decode step's RoPE, cache store and attention from the fused projection's rows, against the model's
    torch operators on the same rows: grouped heads, head sizes with and without whole 32-wide chunks, views of
    a longer cache, and each stream at its own position (later slots masked by the bias)."""
    from higgs_audio.model.transformer import KVCache, Pass, attention_bias, rope_cos_sin

    g = torch.Generator().manual_seed(streams * 100 + d)
    caches = [torch.randn(streams, kv_heads, kv_len + 20, d, generator=g) for _ in range(2)]
    qkv = torch.randn(streams, 1, (heads + 2 * kv_heads) * d, generator=g)
    positions = torch.randint(0, kv_len - 1, (streams, 1), generator=g)  # the last slot is masked for all
    bias = attention_bias(positions, kv_len, torch.float32)
    cos, sin = rope_cos_sin(1.0 / 500000 ** (torch.arange(0, d, 2) / d), positions + 1000, torch.float32)
    module = _attention_module(heads, kv_heads, d)

    keys, values = (c.clone() for c in caches)
    assert cpu_kernels.attends(qkv, keys, values)
    ours = cpu_kernels.decode_attention(qkv, cos, sin, positions, keys, values, bias, heads, d**-0.5)
    expected_keys, expected_values = (c.clone() for c in caches)
    cache = KVCache(expected_keys[None], expected_values[None], torch.zeros(streams, kv_len + 20, dtype=torch.bool))
    shape = SimpleNamespace(num_heads=heads, num_kv_heads=kv_heads, head_dim=d)
    step = Pass.over(shape, cos, sin, bias, positions, cache)
    q, k, v = module._rotated(qkv, step)
    expected = module._decode_attention(q, *step.write(0, k, v), step.step_bias)
    assert ours.shape == (streams, heads, 1, d)
    assert torch.allclose(ours, expected.reshape(ours.shape), atol=1e-5, rtol=1e-5)
    assert torch.equal(values, expected_values)
    assert torch.allclose(keys, expected_keys, atol=1e-6, rtol=0)
    assert not torch.equal(keys, caches[0])
    # only the visible slots count: changing a masked one changes nothing
    values[:, :, positions.max() + 1 :] = 1e6
    again = cpu_kernels.decode_attention(qkv, cos, sin, positions, keys, values, bias, heads, d**-0.5)
    assert torch.allclose(again, ours, atol=1e-5, rtol=1e-5)


def test_decode_attention_is_only_taken_for_fp32_rows():
    qkv = torch.randn(1, 1, 128)
    keys = torch.randn(1, 2, 9, 16)
    assert cpu_kernels.attends(qkv, keys, keys)
    assert not cpu_kernels.attends(qkv.bfloat16(), keys.bfloat16(), keys.bfloat16())
    assert not cpu_kernels.attends(qkv, keys.transpose(-1, -2).contiguous().transpose(-1, -2), keys)
    assert not cpu_kernels.attends(torch.randn(1, 1, 96), torch.randn(1, 2, 9, 12), torch.randn(1, 2, 9, 12))
    assert not cpu_kernels.attends(torch.randn(1, 1, 256)[..., ::2], keys, keys)


def test_version_names_the_build_or_torch(monkeypatch):
    built = cpu_kernels.version()
    assert built.startswith("cpu_kernels-") and built == cpu_kernels.version()
    monkeypatch.setattr(cpu_kernels, "library", lambda: None)
    assert cpu_kernels.version() == "torch"


def test_another_openmp_runtime_than_torchs_libgomp_keeps_torchs_kernels(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_torch_uses_libgomp", lambda: False)
    cpu_kernels.library.cache_clear()
    try:
        assert cpu_kernels.library() is None
    finally:
        cpu_kernels.library.cache_clear()


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("HIGGS_AUDIO_CPU_KERNELS", "0")
    cpu_kernels.library.cache_clear()
    try:
        assert cpu_kernels.library() is None
        assert not Int8Linear.from_float(torch.randn(64, 32)).our_kernel
    finally:
        cpu_kernels.library.cache_clear()
