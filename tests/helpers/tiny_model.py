"""Write tiny random Higgs Audio V2 generation checkpoints in both official on-disk formats.

The original format (`model_type: higgs_audio`, prefix-less keys, sharded safetensors + index, optional
frozen/trainable split tensors) and the transformers-native one (`model_type: higgs_audio_v2`, `model.`
prefixes, `codebook_size` 1026). Both carry the real Llama-3 text tokenizer with the Higgs special tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.helpers.text_tokenizer import write_text_tokenizer

# The released checkpoint's numbers (spec §1.1, §1.2, §11).
FULL = dict(
    vocab_size=128256,
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=28,
    num_attention_heads=24,
    num_key_value_heads=8,
    head_dim=128,
)
TINY = dict(
    vocab_size=128256,  # the real tokenizer's ids must be valid rows
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)
ROPE_SCALING = {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}
NUM_CODEBOOKS, CODEBOOK_SIZE = 8, 1024


def original_config(size: dict = TINY, **overrides) -> dict:
    text = dict(
        size,
        model_type="llama",
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=dict(ROPE_SCALING),
        max_position_embeddings=131072,
        tie_word_embeddings=True,
    )
    cfg = dict(
        model_type="higgs_audio",
        text_config=text,
        audio_adapter_type="dual_ffn_fast_forward",
        audio_dual_ffn_layers=list(range(size["num_hidden_layers"])),
        audio_num_codebooks=NUM_CODEBOOKS,
        audio_codebook_size=CODEBOOK_SIZE,
        audio_stream_bos_id=1024,
        audio_stream_eos_id=1025,
        use_delay_pattern=True,
        encode_audio_in_tokens=True,
        skip_audio_tower=True,
        encode_whisper_embed=False,
        audio_embed_avg=False,
        use_audio_out_embed_projector=False,
        use_audio_out_self_attention=False,
        audio_decoder_proj_num_layers=0,
        use_rq_transformer=False,
        audio_in_token_idx=128015,
        audio_out_token_idx=128016,
        audio_out_bos_token_id=128013,
        audio_eos_token_id=128012,
        pad_token_id=128001,
        audio_ffn_hidden_size=size["hidden_size"],
        audio_ffn_intermediate_size=size["intermediate_size"],
    )
    cfg.update(overrides)
    return cfg


def native_config(size: dict = TINY) -> dict:
    return dict(
        size,
        model_type="higgs_audio_v2",
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_parameters=dict(ROPE_SCALING, rope_theta=500000.0),
        max_position_embeddings=131072,
        tie_word_embeddings=False,
        num_codebooks=NUM_CODEBOOKS,
        codebook_size=CODEBOOK_SIZE + 2,
        audio_token_id=128016,
        audio_bos_token_id=128013,
        audio_delay_token_id=128014,
        audio_stream_bos_id=1024,
        audio_stream_eos_id=1025,
        pad_token_id=128001,
        bos_token_id=128000,
        eos_token_id=128009,
    )


def original_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of an original-format checkpoint (spec §1.3)."""
    t = cfg["text_config"]
    h, i, hd = t["hidden_size"], t["intermediate_size"], t["head_dim"]
    q, kv = t["num_attention_heads"] * hd, t["num_key_value_heads"] * hd
    audio_rows = cfg["audio_num_codebooks"] * (cfg["audio_codebook_size"] + 2)
    shapes = {
        "embed_tokens.weight": (t["vocab_size"], h),
        "audio_codebook_embeddings.weight": (audio_rows, h),
        "norm.weight": (h,),
        "audio_decoder_proj.text_lm_head.weight": (t["vocab_size"], h),
        "audio_decoder_proj.audio_lm_head.weight": (audio_rows, h),
    }
    dual = set(cfg["audio_dual_ffn_layers"])
    for n in range(t["num_hidden_layers"]):
        p = f"layers.{n}."
        shapes.update({
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        })
        mlps = ("mlp", "audio_mlp") if n in dual else ("mlp",)
        for m in mlps:
            shapes.update({
                p + f"{m}.gate_proj.weight": (i, h),
                p + f"{m}.up_proj.weight": (i, h),
                p + f"{m}.down_proj.weight": (h, i),
            })
        if n in dual:
            shapes[p + "audio_input_layernorm.weight"] = (h,)
            shapes[p + "audio_post_attention_layernorm.weight"] = (h,)
    return shapes


def random_weights(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights scaled so activations keep unit size and logits are well spread (no near-ties)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in original_shapes(cfg).items():
        if len(shape) == 1:
            out[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif "embed" in name:
            out[name] = torch.randn(shape, generator=g)
        else:
            out[name] = torch.randn(shape, generator=g) * (1.5 / math.sqrt(shape[1]))
    return out


def to_native_keys(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename original keys as transformers' converter does (spec §1.6)."""
    out = {}
    for k, v in weights.items():
        if k == "audio_codebook_embeddings.weight":
            out["model.embed_audio_tokens.embed_audio_tokens.weight"] = v
        elif k.startswith("audio_decoder_proj."):
            out[k.removeprefix("audio_decoder_proj.")] = v
        else:
            out["model." + k] = v
    return out


def _save_sharded(weights: dict[str, torch.Tensor], directory: Path, shards: int) -> None:
    names = sorted(weights)
    groups = [names[i::shards] for i in range(shards)]
    weight_map = {}
    for n, group in enumerate(groups, 1):
        fname = f"model-{n:05d}-of-{shards:05d}.safetensors"
        save_file({k: weights[k].contiguous() for k in group}, str(directory / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in group})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in weights.values())},
             "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_original(
    directory: Path,
    weights: dict[str, torch.Tensor] | None = None,
    cfg: dict | None = None,
    shards: int = 2,
    split_frozen: bool = False,
) -> Path:
    """Write an original-format checkpoint; ``split_frozen`` stores embeddings/heads as frozen+trainable parts."""
    cfg = cfg or original_config()
    weights = dict(weights if weights is not None else random_weights(cfg))
    if split_frozen:
        for key, (frozen, trainable) in {
            "embed_tokens.weight": ("embedding_frozen", "embedding_trainable"),
            "audio_decoder_proj.text_lm_head.weight": ("linear_frozen", "linear_trainable"),
            "audio_decoder_proj.audio_lm_head.weight": ("linear_frozen", "linear_trainable"),
        }.items():
            w = weights.pop(key)
            stem = key.removesuffix(".weight")
            cut = w.shape[0] - 7
            weights[f"{stem}.{frozen}.weight"], weights[f"{stem}.{trainable}.weight"] = w[:cut], w[cut:]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    _save_sharded(weights, directory, shards)
    write_text_tokenizer(directory)
    return directory


def write_native(directory: Path, weights: dict[str, torch.Tensor] | None = None, size: dict = TINY) -> Path:
    """Write a transformers-native checkpoint (single file, text head kept)."""
    weights = weights if weights is not None else random_weights(original_config(size))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(native_config(size), indent=2))
    save_file({k: v.contiguous() for k, v in to_native_keys(weights).items()}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    write_text_tokenizer(directory)
    return directory


def load_port(directory: Path):
    """The same checkpoint (native format) in transformers' HiggsAudioV2ForConditionalGeneration, fp32, eval."""
    from safetensors.torch import load_file
    from transformers import HiggsAudioV2Config, HiggsAudioV2ForConditionalGeneration

    raw = json.loads((directory / "config.json").read_text())
    config = HiggsAudioV2Config(**{k: v for k, v in raw.items() if k != "model_type"})
    config._attn_implementation = "eager"
    model = HiggsAudioV2ForConditionalGeneration(config, use_text_head=True)
    model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    return model.float().eval()
