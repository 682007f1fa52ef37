"""Device and dtype choice, made once at load time."""

from __future__ import annotations

from pathlib import Path

import torch

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def pick_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` prefers CUDA, then Apple MPS, then the CPU."""
    if spec is None or str(spec) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} was requested but this torch build sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {spec!r} was requested but Apple MPS is not available")
    return device


def pick_dtype(spec: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on accelerators; fp32 on the CPU, where bf16 matmuls are usually emulated and slow."""
    if isinstance(spec, torch.dtype):
        if spec not in _DTYPES.values():
            raise ValueError(f"unsupported dtype {spec}: use float32, bfloat16 or float16")
        return spec
    if spec is None or spec == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    try:
        return _DTYPES[str(spec).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {spec!r}: use auto, float32, bfloat16 or float16") from None


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags (Linux), or None where they cannot be read."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith(("flags", "Features"))),
                None)
