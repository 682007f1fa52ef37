"""LoRA for training: presets, injection with ``peft``, and writing adapters in PEFT's format under the
transformers port's module names, so ``PeftModel.from_pretrained(port_model, DIR)`` loads them as well as our
loader does (``higgs_audio.lora``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from higgs_audio.lora import CONFIG_FILE, PEFT_PREFIX, WEIGHTS_FILE, our_name, port_name

_ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_AUDIO_MLP = ("audio_mlp.gate_proj", "audio_mlp.up_proj", "audio_mlp.down_proj")
# What each preset adapts (our module names), its rank and alpha.
PRESETS = {
    # A speaker's timbre: the audio path only (the DualFFN audio MLPs) and the audio head.
    "voice": dict(targets=(*_AUDIO_MLP, "audio_head"), rank=16, alpha=32),
    # A style, language or accent: also how text and audio attend to each other.
    "style": dict(targets=(*_ATTENTION, *_AUDIO_MLP), rank=16, alpha=32),
    # Everything audio, at a higher rank.
    "full-audio-adapter": dict(targets=(*_ATTENTION, *_AUDIO_MLP, "audio_head"), rank=64, alpha=64),
}


def inject(model: torch.nn.Module, preset: str, rank: int | None = None, alpha: float | None = None,
           dropout: float = 0.0):
    """Add LoRA layers (peft) to ``model`` in place, freeze everything else; returns the peft LoraConfig.
    Adapter weights are kept in fp32 whatever the base weights' dtype."""
    from peft import LoraConfig, inject_adapter_in_model

    spec = PRESETS[preset]
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in spec["targets"] if not any(name.endswith(t) for name in names)]
    if missing:  # peft adapts whatever matches and says nothing of the rest
        raise ValueError(f"the model has no {missing[0]!r} layers to adapt: load it with fuse=False")
    config = LoraConfig(r=rank or spec["rank"], lora_alpha=alpha or spec["alpha"], lora_dropout=dropout,
                        target_modules=list(spec["targets"]), bias="none")
    model.requires_grad_(False)
    inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
    return config


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's file names (port module names, adapter name dropped)."""
    out = {}
    for name, p in model.named_parameters():
        if "lora_" not in name:
            continue
        module, _, rest = name.partition(".lora_")
        kind, _, param = rest.split(".")  # e.g. A, default, weight
        out[f"{PEFT_PREFIX}{port_name(module)}.lora_{kind}.{param}"] = p.detach().float().cpu().contiguous()
    return out


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put tensors written by ``trainable_state`` back into an injected model (resuming)."""
    params = dict(model.named_parameters())
    for key, value in state.items():
        module, _, rest = key.removeprefix(PEFT_PREFIX).partition(".lora_")
        kind, param = rest.split(".")
        params[f"{our_name(module)}.lora_{kind}.default.{param}"].data.copy_(value)


def save_adapter(model: torch.nn.Module, config, directory: Path, base_model: str) -> None:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's format) into ``directory``."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    saved = config.to_dict()
    saved["target_modules"] = sorted(port_name(t) for t in config.target_modules)
    saved["base_model_name_or_path"] = base_model
    (directory / CONFIG_FILE).write_text(json.dumps(saved, indent=2, sort_keys=True, default=str))
    save_file(trainable_state(model), str(directory / WEIGHTS_FILE), metadata={"format": "pt"})


