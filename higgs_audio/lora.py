"""LoRA adapter files in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``) under the
transformers port's module names (``model.layers.N...``, ``audio_lm_head``): reading them and merging their
updates into weights as they load. Needs neither peft nor the training extra, and an adapted model runs exactly
as fast as the base one. Writing them is ``higgs_audio.train.adapter``'s job.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from higgs_audio.errors import CheckpointError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # what PeftModel puts before the base model's module names in its files


def port_name(ours: str) -> str:
    """Our module name -> the transformers port's."""
    if ours.startswith("layers."):
        return "model." + ours
    return {"audio_head": "audio_lm_head", "text_head": "text_lm_head"}.get(ours, ours)


def our_name(port: str) -> str:
    if port.startswith("model.layers."):
        return port.removeprefix("model.")
    return {"audio_lm_head": "audio_head", "text_lm_head": "text_head"}.get(port, port)


def read_adapter(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weight updates of a LoRA adapter folder, by our parameter name: {``layers.0.self_attn.q_proj.weight``:
    scale * B @ A} in fp32. Refuses adapter kinds whose update is not that product (DoRA, per-module ranks...)."""
    from safetensors.torch import load_file

    directory = Path(directory).expanduser()
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: --adapter takes a folder written by 'higgs-audio finetune' "
                                  f"(PEFT's {CONFIG_FILE} + {WEIGHTS_FILE})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_path} is not valid JSON: {e}") from None
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{config_path}: peft_type {config.get('peft_type')!r} is not supported (only LORA)")
    for key, plain in (("use_dora", False), ("fan_in_fan_out", False), ("bias", "none"), ("rank_pattern", {}),
                       ("alpha_pattern", {}), ("modules_to_save", None)):
        if config.get(key, plain) not in (plain, None, {}, []):
            raise CheckpointError(f"{config_path}: {key}={config[key]!r} is not supported (only plain LoRA)")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    try:
        tensors = load_file(str(weights_path))
    except Exception as e:  # safetensors raises its own error type for damaged files
        raise CheckpointError(f"{weights_path} is not a readable safetensors file: {e}") from None
    updates = {}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        b = tensors.get(key.replace(".lora_A.", ".lora_B."))
        if b is None:
            raise CheckpointError(f"{weights_path}: {key!r} has no matching lora_B tensor")
        module = key.removeprefix(PEFT_PREFIX).split(".lora_A.")[0]
        updates[f"{our_name(module)}.weight"] = scale * (b.float() @ a.float())
    if not updates:
        raise CheckpointError(f"{weights_path} holds no LoRA tensors")
    return updates


def apply_updates(state: dict[str, torch.Tensor], updates: dict[str, torch.Tensor], where: str) -> None:
    """Add adapter updates to a state dict in place (in fp32, then back to each tensor's dtype)."""
    for name, delta in updates.items():
        if name not in state:
            raise CheckpointError(f"the adapter changes {name!r}, which the model {where} does not have")
        w = state[name]
        if w.shape != delta.shape:
            raise CheckpointError(f"the adapter's update of {name!r} is {list(delta.shape)} but the model {where} "
                                  f"has {list(w.shape)}: it was trained for another model size")
        state[name] = (w.float() + delta.to(w.device)).to(w.dtype)
