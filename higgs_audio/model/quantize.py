"""Linear layers whose weights are stored compactly: bf16 with fp32 compute, weight-only int8 and int4.

Decode reads every weight once per step, so its speed is memory bandwidth: smaller weights are faster.
Prefill is compute bound, so on a CPU without native bf16 it must not run bf16 matmuls (they are emulated
and many times slower than fp32): ``CompactLinear`` upcasts the weight there instead.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("int8", "int4")
INT4_GROUP = 128
_INT4_INNER_K_TILES = 8
_DECODE_ROWS = 16  # at most this many rows: a bandwidth-bound matrix-vector product


def cpu_has_native_bf16() -> bool:
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


_scratch = threading.local()


def _widened(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` converted to ``dtype`` in a reused per-thread buffer: a fresh 50-100 MB allocation per
    call costs more in page faults than the conversion itself (prefill converts every layer's weights)."""
    key = (dtype, weight.device)
    buf = getattr(_scratch, "buffers", {}).get(key)
    if buf is None or buf.numel() < weight.numel():
        buf = torch.empty(weight.numel(), dtype=dtype, device=weight.device)
        _scratch.buffers = {**getattr(_scratch, "buffers", {}), key: buf}
    return buf[: weight.numel()].view(weight.shape).copy_(weight)


class CompactLinear(nn.Module):
    """A bias-free linear layer keeping its weight in a smaller dtype than the activations."""

    def __init__(self, weight: torch.Tensor, native: bool):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.native = native  # the device multiplies in the weight dtype at full speed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native or x.numel() // x.shape[-1] <= _DECODE_ROWS:
            return F.linear(x.to(self.weight.dtype), self.weight).to(x.dtype)
        return F.linear(x, _widened(self.weight, x.dtype))


class Int8Linear(nn.Module):
    """Weight-only int8 with one scale per output channel (symmetric)."""

    def __init__(self, out_features: int, in_features: int, device=None):
        super().__init__()
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.bfloat16, device=device))

    @staticmethod
    def from_float(weight: torch.Tensor) -> Int8Linear:
        w = weight.float()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        layer = Int8Linear(*w.shape, device=w.device)
        layer.weight.copy_((w / scales[:, None]).round().clamp(-127, 127).to(torch.int8))
        layer.scales.copy_(scales.to(torch.bfloat16))
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if flat.shape[0] > _DECODE_ROWS:
            # Prefill is compute bound: dequantise once per call and use the fast dense matmul, in fp32 on
            # a CPU without native bf16.
            dtype = torch.bfloat16 if x.is_cuda or cpu_has_native_bf16() else torch.float32
            out = F.linear(flat.to(dtype), _widened(self.weight, dtype).mul_(self.scales.to(dtype)[:, None]))
        else:
            out = torch._weight_int8pack_mm(flat.to(torch.bfloat16), self.weight, self.scales)
        return out.to(x.dtype).reshape(*shape[:-1], -1)


class Int4Linear(nn.Module):
    """Weight-only int4 in groups of ``INT4_GROUP`` input channels, asymmetric (scale and zero per group)."""

    def __init__(self, out_features: int, in_features: int, packed: torch.Tensor, scales_zeros: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.register_buffer("packed", packed)
        self.register_buffer("scales_zeros", scales_zeros)

    @staticmethod
    def from_float(weight: torch.Tensor) -> Int4Linear:
        out_f, in_f = weight.shape
        if in_f % INT4_GROUP:
            raise ValueError(f"int4 needs input sizes divisible by {INT4_GROUP}, got {in_f}")
        w = weight.float().reshape(out_f, in_f // INT4_GROUP, INT4_GROUP)
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp(min=1e-6)
        q = ((w - lo) / scale).round().clamp(0, 15).to(torch.int32).reshape(out_f, in_f)
        # tinygemm dequantises as (q - 8) * scale + zero, so the zero is the value of code 8
        zero = lo + 8 * scale
        scales_zeros = torch.stack([scale[..., 0], zero[..., 0]], dim=-1).transpose(0, 1).contiguous()
        if weight.is_cuda:
            q8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
            packed = torch.ops.aten._convert_weight_to_int4pack(q8, _INT4_INNER_K_TILES)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, _INT4_INNER_K_TILES)
        return Int4Linear(out_f, in_f, packed, scales_zeros.to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if x.is_cuda:
            out = torch.ops.aten._weight_int4pack_mm(flat, self.packed, INT4_GROUP, self.scales_zeros)
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, INT4_GROUP, self.scales_zeros)
        return out.to(x.dtype).reshape(*shape[:-1], -1)


def _swap_linears(model: nn.Module, make) -> None:
    """Replace every nn.Linear with ``make(weight)``, one at a time. Modules are looked up by name as we go:
    holding them all in a list would keep every old weight alive until the end (double peak memory)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, attr, make(getattr(owner, attr).weight.data))


def compact_linears(model: nn.Module, native: bool) -> None:
    """Swap every nn.Linear for a CompactLinear over the same (already compact) weight."""
    _swap_linears(model, lambda weight: CompactLinear(weight, native))


def quantize_linears(model: nn.Module, mode: str) -> None:
    """Swap every nn.Linear for its weight-only ``mode`` version."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization {mode!r}: use one of {', '.join(MODES)}")
    _swap_linears(model, Int8Linear.from_float if mode == "int8" else Int4Linear.from_float)
