"""Write quantized checkpoints: quantize a checkpoint once and save it, so that later runs load it without
quantizing again (``checkpoint.load_model`` reads them).

A quantized checkpoint is a directory holding the source's ``config.json`` and text-tokenizer files, a
``quantization.json`` (``{"format": 2, "mode": "int8" | "int4", "layout": {"rows": 4, "lanes": 16}}``) and one
``model.safetensors`` whose tensors carry our modules' names: each quantized linear stores its ``FIELDS``,
everything else its bf16 tensor. It is device independent (int4 is packed for the device at load). Every tensor starts at a 64-byte
aligned file offset. Format 2 stores int8 weights that fit our CPU kernel in its packed order (same shape),
so that a CPU loads them with a plain copy instead of reordering them, and records that order's ``layout``
(files written before it was recorded used 4 rows and 16 lanes); format 1 (plain order) still loads.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from pathlib import Path

import torch
from torch import nn

from higgs_audio.checkpoint import (
    FORMAT,
    INDEX_FILE,
    PADDING_PREFIX,
    QUANTIZATION_FILE,
    SAFETENSORS_DTYPES,
    WEIGHTS_FILE,
    load_model,
    read_quantization,
    resolve,
)
from higgs_audio.errors import CheckpointError
from higgs_audio.model import cpu_kernels
from higgs_audio.model.quantize import quantized_class

_ALIGN = 64  # bytes: torch's CPU int8 kernel needs weights aligned like this


def _write_aligned(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file whose tensors all start at ``_ALIGN``-byte offsets in the file. The format
    allows no gaps between tensors, so alignment gaps are filled by ``PADDING_PREFIX`` entries, which
    readers of our checkpoints skip; the header itself is padded with spaces, as the format allows."""
    header: dict = {"__metadata__": metadata}
    pieces: list[torch.Tensor] = []
    offset = 0
    for name, tensor in tensors.items():
        gap = -offset % _ALIGN
        if gap:
            pieces.append(torch.zeros(gap, dtype=torch.uint8))
            header[f"{PADDING_PREFIX}{len(pieces)}"] = {"dtype": "U8", "shape": [gap],
                                                       "data_offsets": [offset, offset + gap]}
            offset += gap
        data = tensor.contiguous().view(-1).view(torch.uint8)
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + data.numel()]}
        pieces.append(data)
        offset += data.numel()
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % _ALIGN)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for data in pieces:
            f.write(data.numpy())


def _copy_side_files(source: Path, target: Path) -> None:
    """Everything but the float weights: config.json, the text tokenizer, generation defaults, notes."""
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix != ".safetensors" and path.name != INDEX_FILE:
            shutil.copy2(path, target / path.name)


def save_quantized(model_name: str | os.PathLike, out: str | os.PathLike, mode: str, force: bool = False,
                   progress: bool = False) -> Path:
    """Quantize checkpoint ``model_name`` (hub id or directory) to ``mode`` and write it to directory ``out``.

    The directory appears whole or not at all (written beside it, then renamed); an existing ``out`` is
    replaced only with ``force``.
    """
    from tqdm import tqdm


    out = Path(out).expanduser()
    cls = quantized_class(mode)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output folder {out.parent} does not exist")
    source = resolve(model_name)
    if read_quantization(source):
        raise CheckpointError(f"{source} is already quantized; quantize the original (float) checkpoint instead")
    if source.resolve() == out.resolve():
        raise CheckpointError(f"{out} is the source checkpoint itself; write the quantized copy elsewhere")
    # bf16 on the CPU: the checkpoint's tensors stay memory-mapped, nothing is converted twice. Unfused: the copy
    # stores the official separate projections (joined again when it loads).
    model, _, _ = load_model(source, device="cpu", dtype="bfloat16", fuse=False)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    tensors: dict[str, torch.Tensor] = {}
    for name, linear in tqdm(linears, desc=f"quantizing to {mode}", unit="layer", disable=not progress,
                             leave=False, dynamic_ncols=True):
        tensors.update({f"{name}.{field}": t for field, t in cls.saved(cls.quantize(linear.weight)).items()})
    quantized = {f"{name}.weight" for name, _ in linears}
    tensors.update({k: v.contiguous() for k, v in model.state_dict().items() if k not in quantized})

    staging = out.parent / f".{out.name}.partial-{os.getpid()}-{time.monotonic_ns()}"
    staging.mkdir()
    try:
        _copy_side_files(source, staging)
        _write_aligned(staging / WEIGHTS_FILE, tensors, metadata={"format": "pt", "quantization": mode})
        (staging / QUANTIZATION_FILE).write_text(json.dumps(
            {"format": FORMAT, "mode": mode, "layout": cpu_kernels.LAYOUT, "source": str(model_name)}, indent=2) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.replaced-{os.getpid()}"
            out.rename(old)
            staging.rename(out)
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
