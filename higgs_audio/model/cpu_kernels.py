"""Our CPU kernels (``cpu_kernels.c``), built with the system C compiler at first use: a weight-only int8
matrix product and a decode step's attention (RoPE, the cache store and the two products).

torch's CPU int8 kernel reads weights at ~19 GB/s on two AVX2 cores, about half of what a bf16 product
streams, so int8 decode gained little over bf16. Ours reads ~28 GB/s and multiplies in int16 (twice the
products per instruction of fp32), which also makes it faster than dequantising for a 300-token prefill.
torch's decode attention spends its time setting up many small matmuls; ours reads the cache once.

They are compiled once per source and compiler into the cache folder (about a second) and loaded with
ctypes, which releases the GIL during each call. Without an x86 CPU with AVX2 and FMA, or without a working
C compiler (``$CC``, else ``cc``), or with ``HIGGS_AUDIO_CPU_KERNELS=0``, ``library()`` is None and torch's
kernels run instead.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from higgs_audio.cache import fingerprint, kernel_dir
from higgs_audio.device import cpu_flags

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.c")
ROWS, LANES = 4, 16  # the packed layout, passed to the C source when it is built
LAYOUT = {"rows": ROWS, "lanes": LANES}  # recorded in the quantized checkpoints that store it
FLAGS = ("-O3", "-fno-math-errno", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", f"-DROWS={ROWS}",
         f"-DLANES={LANES}")
SWITCH = "HIGGS_AUDIO_CPU_KERNELS"  # "0": torch's kernels only (to compare, or to rule ours out)


def _build(compiler: str, target: Path) -> None:
    """Compile into a temporary file next to ``target`` and rename it: a concurrent process sees either no
    library or a whole one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp], check=True, capture_output=True, text=True,
                       timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _torch_uses_libgomp() -> bool:
    try:
        return "libgomp" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _digest(compiler: str) -> str:
    return fingerprint(SOURCE.read_bytes(), compiler, FLAGS)


def version() -> str:
    """Which kernels compute on this CPU, for caches of computed values (a voice's keys and values): our
    build's digest, or "torch" where it cannot run."""
    return f"cpu_kernels-{_digest(_compiler())}" if library() is not None else "torch"


@functools.cache
def library() -> ctypes.CDLL | None:
    """The built kernels, or None where they cannot run here (the reason is logged once)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not {"avx2", "fma"} <= (cpu_flags() or set()):
        log.info("CPU kernels: need an x86 CPU with AVX2 and FMA; using torch's")
        return None
    if os.environ.get(SWITCH) == "0":
        log.info("CPU kernels: switched off by %s=0; using torch's", SWITCH)
        return None
    if not _torch_uses_libgomp():
        # Our threads come from libgomp; beside another OpenMP runtime (a conda build's Intel OpenMP) both
        # thread pools would compete for the cores.
        log.info("CPU kernels: torch runs another OpenMP runtime than libgomp; using torch's kernels")
        return None
    compiler = _compiler()
    if not compiler:
        log.warning("CPU kernels: no C compiler found (set CC or install gcc); int8 and decode attention on "
                    "this CPU run torch's slower kernels")
        return None
    path = kernel_dir() / f"cpu_kernels-{_digest(compiler)}.so"
    try:
        if not path.exists():
            _build(compiler, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or e
        log.warning("CPU kernels: could not build or load %s (%s); int8 and decode attention on this CPU run "
                    "torch's slower kernels", path, str(detail).strip()[:500])
        return None
    lib.int8_matmul.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    lib.int8_matmul.restype = ctypes.c_int
    lib.int8_pack.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    lib.int8_pack.restype = None
    lib.int8_unpack_bf16.argtypes = lib.int8_pack.argtypes
    lib.int8_unpack_bf16.restype = None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.attention_step.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, i64, ptr, ptr, i64, i64, i64, i64, i64,
                                   ctypes.c_float, ptr, ctypes.c_int]
    lib.attention_values.argtypes = [ptr, i64, i64, i64, i64, ptr, i64, i64, i64, ptr, ctypes.c_int]
    for name in ("attention_step", "attention_values"):
        getattr(lib, name).restype = None
    return lib


def fits(out_features: int, in_features: int) -> bool:
    return out_features % ROWS == 0 and in_features % LANES == 0


def packed_shape(n: int, k: int) -> tuple[int, int, int, int]:
    return n // ROWS, k // LANES, ROWS, LANES


def pack(weight: torch.Tensor) -> torch.Tensor:
    """An (n, k) int8 weight in the kernel's layout, ``ROWS`` rows' ``LANES``-wide slices interleaved, in a
    fresh allocation (torch aligns those to 64 bytes; the kernel's loads need 32). In C where the kernel is
    built: torch's strided copy moves under 1 GB/s, seconds for a whole model."""
    n, k = weight.shape
    lib = library() if weight.device.type == "cpu" else None
    if lib is None:
        return weight.reshape(n // ROWS, ROWS, k // LANES, LANES).transpose(1, 2).contiguous()
    weight = weight.contiguous()
    packed = torch.empty(packed_shape(n, k), dtype=torch.int8)
    lib.int8_pack(weight.data_ptr(), n, k, packed.data_ptr(), torch.get_num_threads())
    return packed


def unpacked(packed: torch.Tensor) -> torch.Tensor:
    """A view of a packed weight in the plain layout, as (n / ROWS, ROWS, k / LANES, LANES): copied into a
    contiguous tensor it reads as the (n, k) weight."""
    return packed.transpose(1, 2)


def unpack_bf16(packed: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The plain (n, k) weight of a packed one as bf16, written into ``out`` (n * k bf16 elements): one pass,
    where torch's strided copy and conversion took over a second longer per full-size prefill."""
    blocks, slices, rows, lanes = packed.shape
    plain = out.view(blocks * rows, slices * lanes)
    library().int8_unpack_bf16(packed.data_ptr(), *plain.shape, plain.data_ptr(), torch.get_num_threads())
    return plain


def matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``x`` (m, k) times the packed (n, k) weight, transposed, times fp32 ``scales`` (n,): (m, n) fp32."""
    x = x.float().contiguous()
    m, k = x.shape
    n = scales.shape[0]
    out = torch.empty(m, n)
    if m and library().int8_matmul(x.data_ptr(), m, k, packed.data_ptr(), scales.data_ptr(), n, out.data_ptr(),
                                   torch.get_num_threads()):
        raise MemoryError(f"int8 kernel: no memory for a {m} x {k} int16 copy of the input")
    return out


def attends(qkv: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether ``decode_attention`` serves one decode step: fp32 on an x86 CPU where the kernels are built, the
    fused projection's rows contiguous, each cached position's key and value rows contiguous."""
    d = keys.shape[-1]
    return (qkv.device.type == "cpu" and qkv.dtype == keys.dtype == values.dtype == torch.float32
            and d % 8 == 0 and d <= 1024 and qkv.is_contiguous()
            and all(t.stride(-1) == 1 and t.stride(-2) == d for t in (keys, values)) and library() is not None)


def decode_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                     keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, heads: int,
                     scale: float) -> torch.Tensor:
    """One decode step's attention from the fused projection ``qkv`` (b, 1, (heads + 2 kv_heads) d): its keys,
    rotated by RoPE (``cos`` and signed ``sin``, (b, ..., d)), and values are stored at ``positions`` (b, 1) in
    ``keys``/``values``, a layer's (b, kv_heads, max_len, d) cache views, and its rotated queries attend to the
    first ``bias.shape[-1]`` positions (``bias`` (b, 1, 1, kv_len) additive). Returns (b, heads, 1, d). Softmax
    in between is torch's (one kernel)."""
    b, kv_heads, _, d = keys.shape
    kv_len = bias.shape[-1]
    cos, sin, positions = cos.contiguous(), sin.contiguous(), positions.contiguous()
    scores = torch.empty(b, heads, kv_len)
    threads = torch.get_num_threads()
    lib = library()
    lib.attention_step(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), positions.data_ptr(), b, heads,
                       heads // kv_heads, d, keys.data_ptr(), values.data_ptr(), keys.stride(0), keys.stride(1),
                       values.stride(0), values.stride(1), kv_len, scale, scores.data_ptr(), threads)
    probs = torch.add(bias.reshape(b, 1, kv_len), scores).softmax(-1)
    out = torch.empty(b, heads, 1, d)
    lib.attention_values(probs.data_ptr(), b, heads, heads // kv_heads, d, values.data_ptr(), values.stride(0),
                         values.stride(1), kv_len, out.data_ptr(), threads)
    return out
