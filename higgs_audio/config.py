"""The generation model's configuration, read from either on-disk format and validated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from higgs_audio.errors import CheckpointError

DEFAULT_MODEL = "bosonai/higgs-audio-v2-generation-3B-base"  # the official checkpoints on the hub
DEFAULT_CODEC = "bosonai/higgs-audio-v2-tokenizer"
ORIGINAL_TYPE = "higgs_audio"
NATIVE_TYPE = "higgs_audio_v2"
ADAPTERS = ("dual_ffn", "dual_ffn_fast_forward")


@dataclass(frozen=True)
class ModelConfig:
    """Everything the network needs; one source of truth for sizes and audio-token ids."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    num_codebooks: int
    codebook_size: int  # real codes per codebook; each codebook's vocabulary adds stream bos and eos
    audio_stream_bos_id: int
    audio_stream_eos_id: int
    adapter: str = "dual_ffn_fast_forward"
    dual_ffn_layers: tuple[int, ...] = ()
    max_position_embeddings: int = 131072
    source_format: str = ORIGINAL_TYPE
    token_ids: dict[str, int] = field(default_factory=dict)  # audio special tokens as named in config.json

    @property
    def audio_vocab_size(self) -> int:
        """Rows per codebook in the audio embedding and head (codes + stream bos + stream eos)."""
        return self.codebook_size + 2

    def is_dual_ffn(self, layer: int) -> bool:
        return layer in self.dual_ffn_layers

    def is_fast_forward(self, layer: int) -> bool:
        """Layers that audio positions skip entirely (spec §2.2)."""
        return self.adapter == "dual_ffn_fast_forward" and layer not in self.dual_ffn_layers

    @staticmethod
    def from_dict(raw: dict, source: Path) -> ModelConfig:
        kind = raw.get("model_type")
        if kind == ORIGINAL_TYPE:
            return _from_original(raw, source)
        if kind == NATIVE_TYPE:
            return _from_native(raw, source)
        raise CheckpointError(
            f"{source}: model_type {kind!r} is not a Higgs Audio V2 generation model "
            f"(expected {ORIGINAL_TYPE!r} or {NATIVE_TYPE!r})"
        )


def _require(raw: dict, key: str, source: Path):
    if key not in raw:
        raise CheckpointError(f"{source}: required key {key!r} is missing")
    return raw[key]


def _rope(raw: dict, source: Path) -> tuple[float, dict | None]:
    """Read RoPE base and scaling from either the old (rope_theta + rope_scaling) or new (rope_parameters) form."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict):
        theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(raw.get("rope_theta", 10000.0))
        scaling = raw.get("rope_scaling")
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "default":
            scaling = None
        elif kind != "llama3":
            raise CheckpointError(f"{source}: rope type {kind!r} is not supported (only 'llama3' and 'default')")
        else:
            missing = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
            missing -= scaling.keys()
            if missing:
                raise CheckpointError(f"{source}: llama3 rope scaling lacks {sorted(missing)}")
    return theta, scaling


def _llama_fields(text: dict, source: Path) -> dict:
    heads = int(_require(text, "num_attention_heads", source))
    hidden = int(_require(text, "hidden_size", source))
    theta, scaling = _rope(text, source)
    act = text.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{source}: hidden_act {act!r} is not supported (Higgs Audio V2 uses 'silu')")
    for flag in ("attention_bias", "mlp_bias"):
        if text.get(flag):
            raise CheckpointError(f"{source}: {flag}=true is not supported (Higgs Audio V2 has no biases)")
    return dict(
        vocab_size=int(_require(text, "vocab_size", source)),
        hidden_size=hidden,
        intermediate_size=int(_require(text, "intermediate_size", source)),
        num_layers=int(_require(text, "num_hidden_layers", source)),
        num_heads=heads,
        num_kv_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=int(text.get("head_dim") or hidden // heads),
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-5)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(text.get("max_position_embeddings", 131072)),
    )


# Options of the original config that change the network in ways we do not implement, with their only
# supported value (spec §1.1).
_FIXED_OPTIONS = {
    "use_audio_out_self_attention": False,
    "use_audio_out_embed_projector": False,
    "audio_embed_avg": False,
    "use_rq_transformer": False,
    "encode_whisper_embed": False,
    "skip_audio_tower": True,
    "use_delay_pattern": True,
    "encode_audio_in_tokens": True,
}
_ORIGINAL_TOKEN_KEYS = (
    "audio_in_token_idx",
    "audio_out_token_idx",
    "audio_out_bos_token_id",
    "audio_eos_token_id",
    "pad_token_id",
)


def _from_original(raw: dict, source: Path) -> ModelConfig:
    for key, supported in _FIXED_OPTIONS.items():
        if key in raw and bool(raw[key]) != supported:
            raise CheckpointError(
                f"{source}: option {key}={raw[key]!r} is not implemented (only {key}={supported} is); "
                "this checkpoint needs the reference implementation"
            )
    if int(raw.get("audio_decoder_proj_num_layers", 0) or 0) > 0:
        raise CheckpointError(
            f"{source}: option audio_decoder_proj_num_layers={raw['audio_decoder_proj_num_layers']} is not implemented "
            "(only 0 is)"
        )
    adapter = raw.get("audio_adapter_type", "dual_ffn_fast_forward")
    if adapter not in ADAPTERS:
        raise CheckpointError(
            f"{source}: audio_adapter_type {adapter!r} is not implemented (supported: {', '.join(ADAPTERS)}); "
            "the 'stack' adapter adds extra audio layers"
        )
    text = _require(raw, "text_config", source)
    if not isinstance(text, dict):
        raise CheckpointError(f"{source}: text_config must be an object")
    fields = _llama_fields(text, source)
    layers = raw.get("audio_dual_ffn_layers")
    layers = tuple(range(fields["num_layers"])) if layers is None else tuple(int(i) for i in layers)
    bad = [i for i in layers if not 0 <= i < fields["num_layers"]]
    if bad:
        raise CheckpointError(f"{source}: audio_dual_ffn_layers lists layers {bad} outside 0..{fields['num_layers'] - 1}")
    return ModelConfig(
        **fields,
        num_codebooks=int(raw.get("audio_num_codebooks", 8)),
        codebook_size=int(raw.get("audio_codebook_size", 1024)),
        audio_stream_bos_id=int(raw.get("audio_stream_bos_id", 1024)),
        audio_stream_eos_id=int(raw.get("audio_stream_eos_id", 1025)),
        adapter=adapter,
        dual_ffn_layers=layers,
        source_format=ORIGINAL_TYPE,
        token_ids={k: int(raw[k]) for k in _ORIGINAL_TOKEN_KEYS if raw.get(k) is not None},
    )


def _from_native(raw: dict, source: Path) -> ModelConfig:
    fields = _llama_fields(raw, source)
    vocab = int(raw.get("codebook_size", 1026))
    bos, eos = int(raw.get("audio_stream_bos_id", 1024)), int(raw.get("audio_stream_eos_id", 1025))
    # The native format counts stream bos/eos inside codebook_size; with the port's default of 1024 the bos
    # frame silently aliases a real code, so insist on the released layout.
    if (bos, eos) != (vocab - 2, vocab - 1):
        raise CheckpointError(
            f"{source}: codebook_size {vocab} does not hold the stream bos/eos ids {bos}/{eos} as its last two "
            "entries (the released checkpoint has codebook_size 1026 with bos 1024, eos 1025)"
        )
    token_ids = {
        "audio_out_token_idx": raw.get("audio_token_id"),
        "audio_out_bos_token_id": raw.get("audio_bos_token_id"),
        "pad_token_id": raw.get("pad_token_id"),
    }
    return ModelConfig(
        **fields,
        num_codebooks=int(raw.get("num_codebooks", 8)),
        codebook_size=vocab - 2,
        audio_stream_bos_id=bos,
        audio_stream_eos_id=eos,
        adapter="dual_ffn",
        dual_ffn_layers=tuple(range(fields["num_layers"])),
        source_format=NATIVE_TYPE,
        token_ids={k: int(v) for k, v in token_ids.items() if v is not None},
    )
