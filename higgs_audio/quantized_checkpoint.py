"""Quantized checkpoints: quantize a checkpoint once, save it, and load it later without quantizing again.

A quantized checkpoint is a directory holding the source's ``config.json`` and text-tokenizer files, a
``quantization.json`` (``{"format": 2, "mode": "int8" | "int4", "layout": {"rows": 4, "lanes": 16}}``) and one ``model.safetensors`` whose
tensors carry our modules' names: each quantized linear stores its ``FIELDS``, everything else its bf16
tensor. It is device independent (int4 is packed for the device at load). Every tensor starts at a 64-byte
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from higgs_audio.errors import CheckpointError

QUANTIZATION_FILE = "quantization.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = 2
READABLE_FORMATS = (1, 2)
_FIRST_LAYOUT = {"rows": 4, "lanes": 16}  # of format 2 files written before the layout was recorded


def read_quantization(directory: Path) -> dict | None:
    """A checkpoint directory's checked ``quantization.json`` (format and mode), or None for a float checkpoint."""
    from higgs_audio.checkpoint import read_json
    from higgs_audio.model import cpu_kernels
    from higgs_audio.model.quantize import MODES

    path = directory / QUANTIZATION_FILE
    if not path.exists():
        return None
    meta = read_json(path)
    if meta.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} is not one this version reads "
                              f"({', '.join(map(str, READABLE_FORMATS))}); quantize the original checkpoint again "
                              "with 'higgs-audio quantize'")
    if meta.get("mode") not in MODES:
        raise CheckpointError(f"{path}: unknown mode {meta.get('mode')!r}, expected one of {', '.join(MODES)}")
    layout = meta.setdefault("layout", _FIRST_LAYOUT)
    if meta["format"] >= 2 and meta["mode"] == "int8" and layout != cpu_kernels.LAYOUT:
        raise CheckpointError(f"{path}: its int8 weights are packed as {layout}, this version's CPU kernel reads "
                              f"{cpu_kernels.LAYOUT}; quantize the original checkpoint again with 'higgs-audio quantize'")
    return meta


def load_quantized(directory: Path, cfg, meta: dict, device: torch.device, storage: torch.dtype) -> nn.Module:
    """Build the model from a quantized checkpoint (``meta``: its ``read_quantization``), strictly: every key,
    shape and quantized dtype is checked."""
    from higgs_audio.checkpoint import OUR_NAMES, TensorSource, check_tensors, safetensors_files
    from higgs_audio.model.higgs import HiggsAudioModel
    from higgs_audio.model import cpu_kernels
    from higgs_audio.model.quantize import quantized_class, replace_linears

    mode = meta["mode"]
    cls = quantized_class(mode)
    packed_int8 = mode == "int8" and meta["format"] >= 2  # see Int8Linear.saved
    source = TensorSource(safetensors_files(directory), OUR_NAMES)
    with torch.device("meta"):
        model = HiggsAudioModel(cfg, text_head=any(k.startswith("text_head.") for k in source.parts))
    linears = {n: (m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    specs = {f"{n}.{field}": spec for n, dims in linears.items() for field, spec in cls.field_specs(*dims).items()}
    dense = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.removesuffix(".weight") not in linears}
    check_tensors(source, {**dense, **{k: shape for k, (shape, _) in specs.items()}}, directory)
    model.load_state_dict({k: source.get(k).to(device=device, dtype=storage) for k in dense}, strict=False,
                          assign=True)

    # Read into memory on a CPU, not mapped: int8 decode from mapped pages was 18-25 % slower (4 KB pages),
    # and mapped pages stay in the resident set as long as the file is open. Two readers: most of a read is
    # page faults on the fresh memory, which each thread takes on its own core. They keep a few tensors ahead
    # of the layers being built, not all: a layer that copies its tensors (no CPU kernel) would hold both.
    pool = ThreadPoolExecutor(2) if device.type == "cpu" else None
    order, reads = list(specs), {}  # specs follow the modules' order, as replace_linears visits them

    def take(key: str) -> torch.Tensor:
        if pool is None:
            return source.get(key)
        i = order.index(key)
        for ahead in order[i : i + _READ_AHEAD]:  # keys before i are taken already
            if ahead not in reads:
                reads[ahead] = pool.submit(source.read, ahead)
        return reads.pop(key).result()

    def read(name: str, linear: nn.Linear) -> nn.Module:
        fields = {}
        for field in cls.FIELDS:
            key = f"{name}.{field}"
            tensor = take(key)
            dtype = specs[key][1]
            if tensor.dtype != dtype:
                raise CheckpointError(f"{source.origin(key)} has dtype {tensor.dtype}; {mode} needs {dtype}")
            fields[field] = tensor.to(device)
        if packed_int8 and cpu_kernels.fits(*linears[name]):
            return cls.from_tensors(**fields, packed=True)
        return cls.from_tensors(**fields)

    try:
        replace_linears(model, read)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return model


_READ_AHEAD = 8  # quantized tensors read ahead of the layer being built (a few layers' worth)
_ALIGN = 64  # bytes: torch's CPU int8 kernel needs weights aligned like this


def _write_aligned(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file whose tensors all start at ``_ALIGN``-byte offsets in the file. The format
    allows no gaps between tensors, so alignment gaps are filled by ``PADDING_PREFIX`` entries, which
    readers of our checkpoints skip; the header itself is padded with spaces, as the format allows."""
    from higgs_audio.checkpoint import PADDING_PREFIX, SAFETENSORS_DTYPES

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
    from higgs_audio.checkpoint import INDEX_FILE

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

    from higgs_audio.checkpoint import load_model, resolve
    from higgs_audio.model import cpu_kernels
    from higgs_audio.model.quantize import quantized_class

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
    # bf16 on the CPU: the checkpoint's tensors stay memory-mapped, nothing is converted twice.
    model, _, _ = load_model(source, device="cpu", dtype="bfloat16")
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
