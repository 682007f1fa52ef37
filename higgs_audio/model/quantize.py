"""Linear layers whose weights are stored compactly: bf16 with fp32 compute, weight-only int8 and int4.

Decode reads every weight once per step, so its speed is memory bandwidth: smaller weights are faster.
Prefill is compute bound, so on a CPU without native bf16 it must not run bf16 matmuls (they are emulated
and many times slower than fp32): ``CompactLinear`` upcasts the weight there instead.
"""

from __future__ import annotations

import functools
import math
import threading
import time

import torch
import torch.nn.functional as F
from torch import nn

from higgs_audio.device import cpu_flags
from higgs_audio.model import cpu_kernels

INT4_GROUP = 128
_INT4_INNER_K_TILES = 8
_DECODE_ROWS = 16  # at most this many rows: a bandwidth-bound matrix-vector product
# Up to how many rows an int8 kernel beats dequantising and a dense matmul, measured on an 8192 x 3072 layer
# with 2 cores. Ours (cpu_kernels) without native bf16: at every size (60 against 102 ms at 300 rows, AVX2);
# with native bf16 up to about 48 (13.1 against 13.4 ms at 64 rows, 3.5 against 7.8 at 16). torch's
# kernel, where ours cannot be built: without native bf16 up to 96 (31 against 41 ms at 64 rows, even at
# 128), with native bf16 up to the decode limit (the dense matmul wins from about 24 rows).
_OUR_KERNEL_ROWS_BF16 = 48
_INT8_KERNEL_ROWS_FP32 = 96
_CPU_ALIGN = 64  # bytes; what torch's CPU allocator guarantees
_UNPACKED_SLICE_BYTES = 4 << 20  # bf16 weight rows unpacked per matmul: fits the L3 beside the rest


_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 and Arm names in /proc/cpuinfo


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices faster than fp32. A CPU whose flags lack bf16 instructions
    has none; otherwise it is measured (under 100 ms, once), because the kernels torch reaches also depend on
    its build and on oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``). Native and emulated bf16 differ by over 5x,
    but a busy machine can stall the fp32 run's threads as long, hence the flags first."""
    flags = cpu_flags()
    if flags is not None and not flags & _BF16_FLAGS:
        return False

    def seconds(x: torch.Tensor, w: torch.Tensor) -> float:
        start = time.perf_counter()
        F.linear(x, w)
        return time.perf_counter() - start

    x, w = torch.randn(64, 1024), torch.randn(1024, 1024)
    pairs = [(x.bfloat16(), w.bfloat16()), (x, w)]
    best = [min(seconds(*pair) for _ in range(2)) for pair in pairs]  # the first call of each sets up kernels
    for _ in range(4):  # alternating, so that other work on the machine slows both alike
        best = [min(b, seconds(*pair)) for b, pair in zip(best, pairs)]
    return best[0] < best[1]


_scratch = threading.local()


def _buffer(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reused per-thread buffer of at least ``numel`` elements: a fresh 50-100 MB allocation per call costs
    more in page faults than the work done in it (prefill converts every layer's weights)."""
    key = (dtype, device)
    buf = getattr(_scratch, "buffers", {}).get(key)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: usable both inside and outside inference mode
            buf = torch.empty(numel, dtype=dtype, device=device)
        _scratch.buffers = {**getattr(_scratch, "buffers", {}), key: buf}
    return buf[:numel]


def _widened(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` converted to ``dtype`` in a reused per-thread buffer."""
    return _buffer(weight.numel(), dtype, weight.device).view(weight.shape).copy_(weight)


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

    FIELDS = ("weight", "scales")  # the tensors a quantized checkpoint stores per layer
    # Each field's dimension over output channels: a layer whose outputs are several layers' outputs in turn
    # (fused projections) has their fields joined along it (int8 packs whole blocks of rows).
    OUTPUT_DIMS = {"weight": 0, "scales": 0}

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, packed: bool = False):
        """``weight``: (out, in) int8, in the plain order or, ``packed``, in our CPU kernel's order (as saved
        checkpoints hold it for layers that ``cpu_kernels.fits``)."""
        super().__init__()
        self.out_features, self.in_features = n, k = weight.shape
        self.our_kernel = (weight.device.type == "cpu" and cpu_kernels.fits(n, k)
                           and cpu_kernels.library() is not None)
        if self.our_kernel:
            weight = weight.view(cpu_kernels.packed_shape(n, k)) if packed else cpu_kernels.pack(weight)
            if weight.data_ptr() % 32:  # the kernel's aligned loads
                weight = weight.clone()
            scales = scales.float()
        else:
            if packed:
                weight = cpu_kernels.unpacked(weight.view(cpu_kernels.packed_shape(n, k))).reshape(n, k)
            if weight.device.type == "cpu" and weight.data_ptr() % _CPU_ALIGN:
                # torch's CPU int8 kernel crashes on a weight that is not 64-byte aligned once it gets 3 or
                # more rows (torch 2.13); tensors read from a safetensors file sit at arbitrary offsets.
                weight = weight.clone()
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)

    @staticmethod
    def quantize(weight: torch.Tensor) -> dict[str, torch.Tensor]:
        w = weight.float()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        q = (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
        return {"weight": q, "scales": scales.to(torch.bfloat16)}

    @staticmethod
    def field_specs(out_features: int, in_features: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"weight": ((out_features, in_features), torch.int8), "scales": ((out_features,), torch.bfloat16)}

    @staticmethod
    def from_tensors(weight: torch.Tensor, scales: torch.Tensor, packed: bool = False) -> Int8Linear:
        return Int8Linear(weight, scales, packed)

    @staticmethod
    def saved(fields: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``quantize``'s tensors as a checkpoint stores them: weights that fit our CPU kernel in its order, so
        that a CPU loads them without reordering (elsewhere the plain order is restored at load)."""
        n, k = fields["weight"].shape
        if not cpu_kernels.fits(n, k):
            return fields
        return {**fields, "weight": cpu_kernels.pack(fields["weight"]).view(n, k)}

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int8Linear:
        return cls.from_tensors(**cls.quantize(weight))

    def _kernel_rows(self) -> float:
        """Up to how many rows an int8 kernel beats dequantising for a dense matmul on this CPU."""
        if cpu_has_native_bf16():
            return _OUR_KERNEL_ROWS_BF16 if self.our_kernel else _DECODE_ROWS
        return math.inf if self.our_kernel else _INT8_KERNEL_ROWS_FP32

    def _unpacked_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (m, k) bf16 times the unscaled weight, unpacked to bf16 a few MiB of rows at a time: each
        slice is multiplied while it is still in cache (a whole layer's bf16 copy is 48 MiB, past the L3)."""
        n, k = self.out_features, self.in_features
        rows = max(cpu_kernels.ROWS, _UNPACKED_SLICE_BYTES // (2 * k) // cpu_kernels.ROWS * cpu_kernels.ROWS)
        buffer = _buffer(min(rows, n) * k, torch.bfloat16, x.device)
        out = torch.empty(x.shape[0], n, dtype=torch.bfloat16)
        for start in range(0, n, rows):
            part = self.weight[start // cpu_kernels.ROWS : (start + rows) // cpu_kernels.ROWS]
            weight = cpu_kernels.unpack_bf16(part, buffer[: part.numel()])
            torch.mm(x, weight.t(), out=out[:, start : start + weight.shape[0]])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if x.is_cuda or flat.shape[0] > self._kernel_rows():
            # Prefill is compute bound: dequantise once per call and use the fast dense matmul, in fp32 on
            # a CPU without native bf16. On CUDA always: torch's int8 kernel there took 155 us for one row of
            # a 3072 x 8192 layer on an H200, dequantising and a bf16 matmul 85 us (the bf16 matmul alone 21).
            # The scales multiply the (m, n) product, not the (n, k) weight: far fewer multiplications, and
            # the int8 values stay exact in bf16.
            dtype = torch.bfloat16 if x.is_cuda or cpu_has_native_bf16() else torch.float32
            rows = flat.to(dtype)
            if x.is_cuda:
                # A plain allocation: the caching allocator makes it cheap, and a captured CUDA graph then owns
                # its copy, where the shared scratch buffer could be replaced (freed) by a larger layer later.
                out = F.linear(rows, self.weight.to(dtype))
            elif self.our_kernel:  # only with native bf16: without, our kernel takes every row count
                out = self._unpacked_matmul(rows)
            else:
                out = F.linear(rows, _widened(self.weight, dtype))
            out = out.to(x.dtype).mul_(self.scales.to(x.dtype))
        elif self.our_kernel:
            out = cpu_kernels.matmul(flat, self.weight, self.scales)
        else:
            out = torch._weight_int8pack_mm(flat.to(torch.bfloat16), self.weight, self.scales)
        return out.to(x.dtype).reshape(*shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    """Weight-only int4 in groups of ``INT4_GROUP`` input channels, asymmetric (scale and zero per group).

    The kernels' packed layout differs between CUDA and the CPU, so checkpoints store ``codes``: two 4-bit
    codes per byte, the even input channel in the high nibble; they are packed for the device at load."""

    FIELDS = ("codes", "scales_zeros")
    OUTPUT_DIMS = {"codes": 0, "scales_zeros": 1}

    def __init__(self, out_features: int, in_features: int, packed: torch.Tensor, scales_zeros: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.register_buffer("packed", packed)
        self.register_buffer("scales_zeros", scales_zeros)

    @staticmethod
    def quantize(weight: torch.Tensor) -> dict[str, torch.Tensor]:
        out_f, in_f = weight.shape
        if in_f % INT4_GROUP:
            raise ValueError(f"int4 needs input sizes divisible by {INT4_GROUP}, got {in_f}")
        w = weight.float().reshape(out_f, in_f // INT4_GROUP, INT4_GROUP)
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp(min=1e-6)
        q = ((w - lo) / scale).round().clamp(0, 15).to(torch.uint8).reshape(out_f, in_f)
        # tinygemm dequantises as (q - 8) * scale + zero, so the zero is the value of code 8
        zero = lo + 8 * scale
        scales_zeros = torch.stack([scale[..., 0], zero[..., 0]], dim=-1).transpose(0, 1).contiguous()
        return {"codes": q[:, ::2] << 4 | q[:, 1::2], "scales_zeros": scales_zeros.to(torch.bfloat16)}

    @staticmethod
    def field_specs(out_features: int, in_features: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        groups = in_features // INT4_GROUP
        return {"codes": ((out_features, in_features // 2), torch.uint8),
                "scales_zeros": ((groups, out_features, 2), torch.bfloat16)}

    @staticmethod
    def from_tensors(codes: torch.Tensor, scales_zeros: torch.Tensor) -> Int4Linear:
        out_f, in_f = codes.shape[0], codes.shape[1] * 2
        if codes.is_cuda:
            packed = torch.ops.aten._convert_weight_to_int4pack(codes, _INT4_INNER_K_TILES)
        else:
            q = torch.stack([codes >> 4, codes & 15], dim=-1).reshape(out_f, in_f).to(torch.int32)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, _INT4_INNER_K_TILES)
        return Int4Linear(out_f, in_f, packed, scales_zeros)

    @staticmethod
    def saved(fields: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``quantize``'s tensors as a checkpoint stores them: as they are."""
        return fields

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int4Linear:
        return cls.from_tensors(**cls.quantize(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if x.is_cuda:
            out = torch.ops.aten._weight_int4pack_mm(flat, self.packed, INT4_GROUP, self.scales_zeros)
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, INT4_GROUP, self.scales_zeros)
        return out.to(x.dtype).reshape(*shape[:-1], self.out_features)


QUANTIZED = {"int8": Int8Linear, "int4": Int4Linear}
MODES = tuple(QUANTIZED)


def quantized_class(mode: str):
    try:
        return QUANTIZED[mode]
    except KeyError:
        raise ValueError(f"unknown quantization {mode!r}: use one of {', '.join(MODES)}") from None


def replace_linears(model: nn.Module, make, progress: str | None = None) -> None:
    """Replace every nn.Linear with ``make(name, linear)``, one at a time. Modules are looked up by name as
    we go: holding them all in a list would keep every old weight alive until the end (double peak memory).
    ``progress``: a bar with this label on standard error."""
    from tqdm import tqdm

    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name in tqdm(names, desc=progress, unit="layer", disable=progress is None, leave=False, dynamic_ncols=True):
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, attr, make(name, getattr(owner, attr)))


def compact_linears(model: nn.Module, native: bool) -> None:
    """Swap every nn.Linear for a CompactLinear over the same (already compact) weight."""
    replace_linears(model, lambda name, linear: CompactLinear(linear.weight.data, native))


def quantize_linears(model: nn.Module, mode: str, progress: bool = False) -> None:
    """Swap every nn.Linear for its weight-only ``mode`` version (a bar on standard error with ``progress``)."""
    cls = quantized_class(mode)
    replace_linears(model, lambda name, linear: cls.from_float(linear.weight.data),
                    progress=f"quantizing to {mode}" if progress else None)
