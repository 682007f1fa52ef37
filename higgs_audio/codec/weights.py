"""Read a codec checkpoint of either format into a validated state dict with our (transformers-port) names.

Original format: ``config.json`` + ``model.pth``, read with ``torch.load(weights_only=True)``; names like
``encoder.block.1.block.0.block.1.weight_v`` are renamed the way transformers' converter does.
Transformers format: ``config.json`` (``model_type`` ``higgs_audio_v2_tokenizer``) + ``model.safetensors``.
Weight-norm pairs of both namings (``weight_g``/``weight_v``, ``parametrizations.weight.original0``/``1``) are
folded into plain weights; HuBERT's positional conv is normalised per kernel tap (dim 2), all others per
output row (dim 0).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from higgs_audio.codec import config as codec_config
from higgs_audio.codec.config import CodecConfig
from higgs_audio.errors import CheckpointError
from higgs_audio.files import read_json, resolve

TRANSFORMERS_MODEL_TYPE = "higgs_audio_v2_tokenizer"
ORIGINAL_WEIGHTS = "model.pth"
TRANSFORMERS_WEIGHTS = "model.safetensors"

# Stored by both formats but not used for inference (training-only parts and quantiser statistics).
_UNUSED = re.compile(
    r"^(decoder_semantic\..*|fc1\..*|semantic_model\.masked_spec_embed"
    r"|quantizer\.quantizers\.\d+\.codebook\.(cluster_size|embed_avg|inited))$"
)
_POS_CONV = "semantic_model.encoder.pos_conv_embed.conv."
_RES_PARTS = ("snake1", "conv1", "snake2", "conv2")


def read_config(directory: Path) -> tuple[CodecConfig, Path]:
    """The codec config and the weights file of a checkpoint directory, whichever format it is."""
    path = directory / "config.json"
    raw = read_json(path)
    if raw.get("model_type") == TRANSFORMERS_MODEL_TYPE:
        return codec_config.from_transformers(raw, path), directory / TRANSFORMERS_WEIGHTS
    if "model_type" in raw:
        raise CheckpointError(
            f"{path}: model_type {raw['model_type']!r} is not an audio codec "
            f"(expected {TRANSFORMERS_MODEL_TYPE!r}, or the original tokenizer's config without model_type)"
        )
    return codec_config.from_original(raw, path), directory / ORIGINAL_WEIGHTS


def frame_rate(name_or_path: str | os.PathLike) -> int:
    """Audio frames per second of a codec checkpoint (a directory or hub id), from its config alone."""
    return read_config(resolve(name_or_path))[0].frame_rate


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth`` (tensors only, never arbitrary pickled objects) or ``.safetensors`` file."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the codec checkpoint directory must contain it")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(
            f"{path} cannot be loaded as plain tensors (torch.load with weights_only=True refused it; "
            f"it may hold arbitrary Python objects, which are never unpickled here): {e}"
        ) from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise CheckpointError(f"{path} must hold a flat state dict (name -> tensor), found {type(data).__name__}")
    return data


def _rename_original(key: str, n_blocks: int) -> str:
    """One original name -> transformers-port name (the rules of transformers' tokenizer converter)."""
    rules: list[tuple[str, Callable[[re.Match[str]], str] | str]] = [
        (r"^encoder\.block\.0\.", "acoustic_encoder.conv1."),
        (rf"^encoder\.block\.{n_blocks + 1}\.", "acoustic_encoder.snake1."),
        (rf"^encoder\.block\.{n_blocks + 2}\.", "acoustic_encoder.conv2."),
        (r"^encoder\.block\.(\d+)\.block\.([012])\.block\.([0-3])\.",
         lambda m: f"acoustic_encoder.block.{int(m[1]) - 1}.res_unit{int(m[2]) + 1}.{_RES_PARTS[int(m[3])]}."),
        (r"^encoder\.block\.(\d+)\.block\.3\.", lambda m: f"acoustic_encoder.block.{int(m[1]) - 1}.snake1."),
        (r"^encoder\.block\.(\d+)\.block\.4\.", lambda m: f"acoustic_encoder.block.{int(m[1]) - 1}.conv1."),
        (r"^decoder_2\.model\.0\.", "acoustic_decoder.conv1."),
        (rf"^decoder_2\.model\.{n_blocks + 1}\.", "acoustic_decoder.snake1."),
        (rf"^decoder_2\.model\.{n_blocks + 2}\.", "acoustic_decoder.conv2."),
        (r"^decoder_2\.model\.(\d+)\.block\.0\.", lambda m: f"acoustic_decoder.block.{int(m[1]) - 1}.snake1."),
        (r"^decoder_2\.model\.(\d+)\.block\.1\.", lambda m: f"acoustic_decoder.block.{int(m[1]) - 1}.conv_t1."),
        (r"^decoder_2\.model\.(\d+)\.block\.([234])\.block\.([0-3])\.",
         lambda m: f"acoustic_decoder.block.{int(m[1]) - 1}.res_unit{int(m[2]) - 1}.{_RES_PARTS[int(m[3])]}."),
        (r"^quantizer\.vq\.layers\.(\d+)\._codebook\.", lambda m: f"quantizer.quantizers.{m[1]}.codebook."),
        (r"^quantizer\.vq\.layers\.", "quantizer.quantizers."),
        (r"^fc_prior\.", "fc."),
        (r"^fc_post1\.", "fc1."),
        (r"^fc_post2\.", "fc2."),
        (r"^((?:en|de)coder_semantic(?:\..*)?)\.(conv|conv1|conv2)\.conv\.", r"\1.\2."),
    ]
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def _fold_weight_norm(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    pairs = {".weight_g": ".weight_v", ".parametrizations.weight.original0": ".parametrizations.weight.original1"}
    out: dict[str, torch.Tensor] = {}
    folded: set[str] = set()
    for key, g in sd.items():
        g_suffix = next((s for s in pairs if key.endswith(s)), None)
        if g_suffix is None:
            continue
        base = key[: -len(g_suffix)]
        v = sd.get(base + pairs[g_suffix])
        if v is None:
            raise CheckpointError(f"{path}: {key} has no matching {base + pairs[g_suffix]}")
        dim = 2 if base + "." == _POS_CONV else 0
        expected = tuple(n if i == dim else 1 for i, n in enumerate(v.shape))
        if tuple(g.shape) != expected:
            raise CheckpointError(
                f"{path}: weight-norm magnitude {key}: expected shape {expected} (norm over dim {dim} "
                f"of {tuple(v.shape)}), found {tuple(g.shape)}"
            )
        # torch's own kernel, over dim 0: reducing over another dim gives results that vary with the thread
        # count, and both formats of one checkpoint must load to identical tensors.
        g0, v0 = (t.float().movedim(dim, 0).contiguous() for t in (g, v))
        out[base + ".weight"] = torch._weight_norm(v0, g0, 0).movedim(0, dim).contiguous()
        folded.update((key, base + pairs[g_suffix]))
    for key, value in sd.items():
        if key in folded:
            continue
        if key.endswith(tuple(pairs.values())):
            raise CheckpointError(f"{path}: {key} has no matching weight-norm magnitude")
        if key in out:
            raise CheckpointError(f"{path}: {key} is stored both plain and as a weight-norm pair")
        out[key] = value
    return out


def to_model_names(
    tensors: dict[str, torch.Tensor], cfg: CodecConfig, path: Path, original: bool
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Weight-norm-folded tensors under our names, and for each our name the name stored in the file.

    Original format: renamed, and quantiser layers beyond ``n_q`` dropped (the reference ignores them).
    """
    folded = _fold_weight_norm(tensors, path)
    if original:
        origin = {_rename_original(k, len(cfg.encoder_ratios)): k for k in folded}
        if len(origin) != len(folded):
            raise CheckpointError(f"{path}: two tensors map to the same name; the file is malformed")
        extra = re.compile(r"^quantizer\.quantizers\.(\d+)\.")
        origin = {k: o for k, o in origin.items() if not ((m := extra.match(k)) and int(m[1]) >= cfg.num_codebooks)}
    else:
        origin = {k: k for k in folded}
    for key, stored in origin.items():
        # An uninitialised codebook would make the reference run k-means on the input instead.
        if key.endswith("codebook.inited") and not bool(folded[stored].reshape(-1)[0]):
            raise CheckpointError(f"{path}: {stored} is 0: that codebook was never trained (initialised)")
    return {k: folded[o] for k, o in origin.items()}, origin


def check_and_select(
    tensors: dict[str, torch.Tensor], origin: dict[str, str], expected: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """Exactly the expected tensors, after strict name and shape checks; known unused tensors dropped."""

    def name(key: str) -> str:
        stored = origin.get(key, key)
        return key if stored == key else f"{key} (stored as {stored})"

    missing = [k for k in expected if k not in tensors]
    if missing:
        raise CheckpointError(
            f"{path}: {len(missing)} expected tensors are missing, e.g. {missing[:3]} (transformers-port names); "
            "the file does not match its config.json"
        )
    unexpected = [origin[k] for k in tensors if k not in expected and not _UNUSED.match(k)]
    if unexpected:
        raise CheckpointError(
            f"{path}: {len(unexpected)} unexpected tensors, e.g. {unexpected[:3]}; "
            "the file does not match its config.json"
        )
    for key, want in expected.items():
        if tensors[key].shape != want.shape:
            raise CheckpointError(
                f"{path}: tensor {name(key)}: expected shape {tuple(want.shape)}, found {tuple(tensors[key].shape)}"
            )
        if not tensors[key].is_floating_point():
            raise CheckpointError(f"{path}: tensor {name(key)}: expected floating point, found {tensors[key].dtype}")
    return {k: tensors[k] for k in expected}
