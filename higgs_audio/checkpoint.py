"""Find checkpoints (hub id or local directory) and load the generation model from them, safely and strictly:
the official float checkpoints in either on-disk format, and our quantized copies."""

from __future__ import annotations

import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from higgs_audio.config import ModelConfig
from higgs_audio.device import pick_device, pick_dtype
from higgs_audio.errors import CheckpointError
from higgs_audio.files import read_json, resolve
from higgs_audio.lora import apply_updates, read_adapter
from higgs_audio.model import cpu_kernels
from higgs_audio.model.higgs import HiggsAudioModel
from higgs_audio.model.quantize import (
    MODES,
    compact_linears,
    cpu_has_native_bf16,
    quantize_linears,
    quantized_class,
    replace_linears,
)
from higgs_audio.model.transformer import RMSNorm, fuse_projections

# --- generation model weights -------------------------------------------------------------------

INDEX_FILE = "model.safetensors.index.json"
QUANTIZATION_FILE = "quantization.json"  # marks a quantized checkpoint (see quantized_checkpoint.py)
WEIGHTS_FILE = "model.safetensors"  # a quantized checkpoint's one weight file
FORMAT = 2
READABLE_FORMATS = (1, 2)
_FIRST_LAYOUT = {"rows": 4, "lanes": 16}  # of format 2 files written before the layout was recorded
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.original_inv_freq", "audio_codebook_weights")
SAFETENSORS_DTYPES = {torch.int8: "I8", torch.uint8: "U8", torch.bfloat16: "BF16", torch.float16: "F16",
                      torch.float32: "F32"}
_DTYPES = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}
PADDING_PREFIX = "__padding__."  # alignment filler in the files we write (quantized copies), not a tensor
# Training wrappers store some matrices as a frozen and a trainable part, concatenated along rows (frozen first).
_SPLIT_PARTS = (("embedding_frozen", "embedding_trainable"), ("linear_frozen", "linear_trainable"))


OUR_NAMES = "ours"  # the source format of files we write (quantized copies): keys are our parameter names


def _rename(key: str, source_format: str) -> str:
    """Map a checkpoint key to our module's parameter name."""
    if source_format == OUR_NAMES:
        return key
    if source_format == "higgs_audio":
        if key.startswith("audio_decoder_proj.text_lm_head."):
            return "text_head." + key.removeprefix("audio_decoder_proj.text_lm_head.")
        if key.startswith("audio_decoder_proj.audio_lm_head."):
            return "audio_head." + key.removeprefix("audio_decoder_proj.audio_lm_head.")
        return key
    if key.startswith("model.embed_audio_tokens.embed_audio_tokens."):
        return "audio_codebook_embeddings." + key.removeprefix("model.embed_audio_tokens.embed_audio_tokens.")
    if key.startswith("model."):
        return key.removeprefix("model.")
    return {"audio_lm_head.weight": "audio_head.weight", "text_lm_head.weight": "text_head.weight"}.get(key, key)


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint: those named by the shard index, else every ``*.safetensors``."""
    index = directory / INDEX_FILE
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no 'weight_map'")
        files = [directory / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{index} names shard {f.name}, which is missing from {directory}")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in directory.glob("*.bin"))
        hint = f" (found {pickles}: pickle weights are not loaded, convert them to safetensors)" if pickles else ""
        raise CheckpointError(f"{directory} holds no *.safetensors weight files{hint}")
    return files


def _open(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:  # SafetensorError and OSError both mean the file is unusable
        raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from None


class TensorSource:
    """Lazy access to a checkpoint's tensors under our names, merging split frozen/trainable parts."""

    def __init__(self, files: list[Path], source_format: str):
        self._handles = {f: _open(f) for f in files}
        self._headers: dict[Path, tuple[int, dict]] = {}  # data start and header, for read()
        self.parts: dict[str, list[tuple[Path, str]]] = {}
        split: dict[str, dict[str, tuple[Path, str]]] = {}
        for f, h in self._handles.items():
            for key in h.keys():
                if key.endswith(_IGNORED_SUFFIXES) or key.startswith(PADDING_PREFIX):
                    continue
                for frozen, trainable in _SPLIT_PARTS:
                    for part in (frozen, trainable):
                        if f".{part}." in key:
                            whole = key.replace(f".{part}.", ".")
                            split.setdefault(whole, {})[part] = (f, key)
                            break
                    else:
                        continue
                    break
                else:
                    self._add(_rename(key, source_format), [(f, key)])
        for whole, found in split.items():
            order = next(p for p in _SPLIT_PARTS if p[0] in found or p[1] in found)
            missing = [p for p in order if p not in found]
            if missing:
                f, key = next(iter(found.values()))
                raise CheckpointError(f"{f}: key {key!r} has no matching {missing[0]!r} part to merge with")
            self._add(_rename(whole, source_format), [found[p] for p in order])

    def _add(self, name: str, parts: list[tuple[Path, str]]) -> None:
        if name in self.parts:
            raise CheckpointError(f"{parts[0][0]}: key {parts[0][1]!r} duplicates a tensor already read as {name!r}")
        self.parts[name] = parts

    def shape(self, name: str) -> tuple[int, ...]:
        shapes = [tuple(self._handles[f].get_slice(k).get_shape()) for f, k in self.parts[name]]
        return (sum(s[0] for s in shapes), *shapes[0][1:]) if len(shapes) > 1 else shapes[0]

    def origin(self, name: str) -> str:
        return " + ".join(f"{f}:{k!r}" for f, k in self.parts[name])

    def dtype(self, name: str) -> torch.dtype:
        path, key = self.parts[name][0]
        return _DTYPES[self._handles[path].get_slice(key).get_dtype()]

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """A copy in this process's own memory, read from the file instead of mapped (mapped pages count in
        its resident memory for as long as the file stays open, and are 4 KB pages). ``out``: a contiguous
        tensor of the stored shape and dtype to read into."""
        if len(self.parts[name]) > 1:
            joined = self.get(name)  # joined parts: a copy already
            return joined if out is None else out.copy_(joined)
        path, key = self.parts[name][0]
        if path not in self._headers:
            with open(path, "rb") as f:
                size = struct.unpack("<Q", f.read(8))[0]
                self._headers[path] = (8 + size, json.loads(f.read(size)))
        start, header = self._headers[path]
        entry = header[key]
        begin, end = entry["data_offsets"]
        stored = _DTYPES[entry["dtype"]]
        if out is None:
            out = torch.empty(entry["shape"], dtype=stored)
        elif out.dtype != stored:
            raise CheckpointError(f"{self.origin(name)} has dtype {stored}, unlike the tensors it is joined with "
                                  f"({out.dtype})")
        with open(path, "rb") as f:
            f.seek(start + begin)
            got = f.readinto(out.view(-1).view(torch.uint8).numpy())
        if got != end - begin:
            raise CheckpointError(f"cannot read {self.origin(name)}: the file ends early (truncated?)")
        return out

    def read_rows(self, names: list[str]) -> torch.Tensor:
        """The tensors ``names`` (one dtype, the same trailing shape) one after another along their first
        dimension, each read into its rows of one allocation: no joined copy beside the parts (freed part
        buffers stayed in the process's memory, glibc keeping them)."""
        shapes = [self.shape(name) for name in names]
        out = torch.empty((sum(shape[0] for shape in shapes), *shapes[0][1:]), dtype=self.dtype(names[0]))
        row = 0
        for name, shape in zip(names, shapes):
            self.read(name, out[row : row + shape[0]])
            row += shape[0]
        return out

    def get(self, name: str) -> torch.Tensor:
        try:
            tensors = [self._handles[f].get_tensor(k) for f, k in self.parts[name]]
        except Exception as e:
            raise CheckpointError(f"cannot read {self.origin(name)} (corrupt or truncated file?): {e}") from None
        return torch.cat(tensors) if len(tensors) > 1 else tensors[0]


def check_tensors(source: TensorSource, expected: dict[str, tuple[int, ...]], where: Path) -> None:
    """Strict key and shape check; every message names the file, the key and expected vs found."""
    missing = sorted(set(expected) - set(source.parts))
    if missing:
        raise CheckpointError(
            f"{where}: missing key {missing[0]!r} (expected shape {list(expected[missing[0]])})"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    unexpected = sorted(set(source.parts) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"unexpected key {source.origin(unexpected[0])}: the model built from {where}/config.json has no such "
            "parameter" + (f" ({len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
        )
    for name, shape in expected.items():
        found = source.shape(name)
        if found != tuple(shape):
            raise CheckpointError(
                f"shape mismatch for {source.origin(name)}: expected {list(shape)}, found {list(found)}"
            )


# --- quantized checkpoints (written by quantized_checkpoint.save_quantized) ---------------------

def read_quantization(directory: Path) -> dict | None:
    """A checkpoint directory's checked ``quantization.json`` (format and mode), or None for a float checkpoint."""
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
                              f"{cpu_kernels.LAYOUT}; quantize the original checkpoint again with "
                              "'higgs-audio quantize'")
    return meta


def _joined_linear(parts: list[nn.Linear]) -> nn.Linear:
    """An empty (meta) linear layer whose outputs are ``parts``' outputs concatenated."""
    return nn.Linear(parts[0].in_features, sum(p.out_features for p in parts), bias=False, device="meta")


def _load_quantized(directory: Path, cfg, meta: dict, device: torch.device, storage: torch.dtype,
                    fuse: bool) -> nn.Module:
    """Build the model from a quantized checkpoint (``meta``: its ``read_quantization``), strictly: every key,
    shape and quantized dtype is checked. ``fuse``: join projections (``fuse_projections``) from the stored
    separate ones."""
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
    # Packed int8 weights join along their blocks of rows only when every part is packed (or none is).
    same_order = (lambda names: len({cpu_kernels.fits(*linears[n]) for n in names}) == 1) if packed_int8 else None
    joined = fuse_projections(model, _joined_linear, same_order) if fuse else {}

    # Read into memory on a CPU, not mapped: int8 decode from mapped pages was 18-25 % slower (4 KB pages),
    # and mapped pages stay in the resident set as long as the file is open. Two readers: most of a read is
    # page faults on the fresh memory, which each thread takes on its own core. They keep a few tensors ahead
    # of the layers being built, not all: a layer that copies its tensors (no CPU kernel) would hold both.
    pool = ThreadPoolExecutor(2) if device.type == "cpu" else None
    parts = {n: joined.get(n, (n,)) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    order = [(name, field) for name in parts for field in cls.FIELDS]  # as replace_linears visits the modules
    reads = {}

    def field_of(name: str, field: str) -> torch.Tensor:
        """A (joined) linear layer's ``field``: its parts' fields joined along their output dimension."""
        keys = [f"{part}.{field}" for part in parts[name]]
        for key in keys:
            if source.dtype(key) != specs[key][1]:
                raise CheckpointError(f"{source.origin(key)} has dtype {source.dtype(key)}; {mode} needs "
                                      f"{specs[key][1]}")
        if pool is None and len(keys) == 1:
            return source.get(keys[0])
        if cls.OUTPUT_DIMS[field] == 0:
            return source.read_rows(keys)
        return torch.cat([source.read(key) for key in keys], dim=cls.OUTPUT_DIMS[field])

    def take(name: str, field: str) -> torch.Tensor:
        if pool is None:
            return field_of(name, field)
        i = order.index((name, field))
        for ahead in order[i : i + _READ_AHEAD]:  # those before i are taken already
            if ahead not in reads:
                reads[ahead] = pool.submit(field_of, *ahead)
        return reads.pop((name, field)).result()

    def read(name: str, linear: nn.Linear) -> nn.Module:
        fields = {field: take(name, field).to(device) for field in cls.FIELDS}
        if packed_int8 and cpu_kernels.fits(*linears[parts[name][0]]):
            return cls.from_tensors(**fields, packed=True)
        return cls.from_tensors(**fields)

    try:
        replace_linears(model, read)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return model



_READ_AHEAD = 8  # quantized tensors read ahead of the layer being built (a few layers' worth)


def load_model(name_or_path: str | os.PathLike, device="auto", dtype="auto", quantize: str | None = None,
               progress: bool = False, adapter: str | os.PathLike | None = None, fuse: bool = True):
    """Load the generation model strictly. Returns (model, config, directory).

    ``dtype`` is the compute dtype. ``auto`` on a CPU keeps the weights in bf16 (half the memory and
    bandwidth) while computing in fp32; ``quantize`` ("int8" or "int4") stores linear weights quantized.
    A checkpoint written by ``higgs-audio quantize`` loads as it was quantized. ``progress`` shows a bar
    while quantizing at load (a minute or more on a CPU). ``adapter``: a LoRA adapter folder (``higgs-audio
    finetune``), merged into the weights as they load. ``fuse``: q/k/v and gate/up become one matmul each
    (``fuse_projections``), joined from the checkpoint's separate weights; off where the separate modules are
    needed by name (training's LoRA layers, writing a quantized copy).
    """
    directory = resolve(name_or_path)
    config_path = directory / "config.json"
    cfg = ModelConfig.from_dict(read_json(config_path), config_path)
    saved = read_quantization(directory)
    saved_mode = saved and saved["mode"]
    if saved_mode and quantize not in (None, saved_mode):
        raise CheckpointError(f"{directory} holds {saved_mode} weights and cannot be loaded as {quantize}: "
                              f"ask for {saved_mode} (or nothing), or quantize the original checkpoint")
    quantize = saved_mode or quantize
    device = pick_device(device)
    compute = pick_dtype(dtype, device)
    compact_cpu = device.type == "cpu" and dtype in (None, "auto")
    storage = torch.bfloat16 if compact_cpu or (quantize and compute == torch.float32) else compute
    if saved_mode:
        if adapter is not None:
            raise CheckpointError(f"{directory} is quantized and an adapter cannot be merged into it: merge the "
                                  "adapter into the original checkpoint ('higgs-audio finetune merge'), then quantize")
        model = _load_quantized(directory, cfg, saved, device, storage, fuse)
    else:
        source = TensorSource(safetensors_files(directory), cfg.source_format)
        # The native converter drops the text head unless asked to keep it; without it we can still speak.
        with torch.device("meta"):
            model = HiggsAudioModel(cfg, text_head="text_head.weight" in source.parts)
        check_tensors(source, {k: tuple(v.shape) for k, v in model.state_dict().items()}, directory)
        joined = fuse_projections(model, _joined_linear) if fuse else {}
        parts = {f"{name}.weight": [f"{part}.weight" for part in names] for name, names in joined.items()}
        updates = read_adapter(adapter) if adapter is not None else {}
        state = {}
        # Joined weights are read into memory, not mapped (mapped pages of the parts would stay resident beside
        # them), by two readers: most of a read is page faults on the fresh memory, each reader's on its core.
        with ThreadPoolExecutor(2) as pool:
            reads = dict(zip(parts, pool.map(lambda name: source.read_rows(parts[name]), parts)))
        for name in model.state_dict():
            if name not in parts:
                state[name] = source.get(name).to(device=device, dtype=storage)
                continue
            # Adapters update the separate weights (rows) they were trained on.
            state[name] = weight = reads.pop(name).to(device=device, dtype=storage)
            row = 0
            for part in parts[name]:
                rows = weight[row : row + source.shape(part)[0]]
                row += rows.shape[0]
                if part in updates:
                    piece = {part: rows}
                    apply_updates(piece, {part: updates.pop(part)}, str(directory))
                    rows.copy_(piece[part])
        apply_updates(state, updates, str(directory))
        if quantize:
            # Tensors read on the CPU are views of the memory-mapped files, and one live view keeps its whole
            # file mapped. Copy what stays in float so each shard is unmapped once its linears are quantized.
            linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
            state = {k: v if k in linear else v.clone() for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        del state, source  # the open files' mappings go as soon as no tensor uses them
        if quantize:
            quantize_linears(model, quantize, progress)
        elif storage != compute:
            compact_linears(model, native=device.type != "cpu" or cpu_has_native_bf16())
    model.reset_buffers(device)
    model.compute_dtype = compute
    if compact_cpu and compute == torch.float32 and cpu_has_native_bf16():
        # Prefill in bf16 end to end, as the port does: its matmuls are bf16 here already, the fp32 norms,
        # attention and residual stream around them are what the port skips (its prefill was faster on AMX;
        # this path is not measured there yet). Decode stays in fp32.
        model.prefill_dtype = torch.bfloat16
    if compute == torch.float32:  # norms' weights in fp32 hold the same values (bf16 widens exactly) and then
        for norm in model.modules():  # scale in the normalising operator itself
            if isinstance(norm, RMSNorm):
                norm.weight.data = norm.weight.data.float()
    return model.eval().requires_grad_(False), cfg, directory
