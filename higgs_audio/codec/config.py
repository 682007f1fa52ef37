"""Codec hyper-parameters, read from either checkpoint format's ``config.json`` into one validated dataclass.

Every size the codec code uses (rates, hop, codebook counts, layer widths) comes from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from higgs_audio.errors import CheckpointError


@dataclass(frozen=True)
class HubertConfig:
    """HuBERT teacher sizes; the defaults are HuBERT-base, the official codec's ``hubert_base_general``."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    layer_norm_eps: float = 1e-5


# Teachers the original format names in ``semantic_techer`` (sic); built locally, never fetched.
TEACHERS = {"hubert_base_general": HubertConfig()}


@dataclass(frozen=True)
class CodecConfig:
    sample_rate: int = 24000
    semantic_sample_rate: int = 16000
    encoder_ratios: tuple[int, ...] = (8, 5, 4, 2, 3)
    decoder_ratios: tuple[int, ...] = (8, 5, 4, 2, 3)
    encoder_dim: int = 64  # channels after the acoustic encoder's first conv, doubled by each block
    decoder_dim: int = 1024  # channels after the acoustic decoder's first conv, halved by each block
    latent_dim: int = 256  # acoustic latent channels ("D")
    num_codebooks: int = 8
    codebook_size: int = 1024
    codebook_dim: int = 64
    semantic_hop: int = 320  # HuBERT's hop in samples at the semantic rate
    semantic_kernel: int = 3
    semantic_unit_kernel: int = 3
    semantic_dilations: tuple[int, ...] = (1, 1)
    semantic_blocks: int = 2
    hubert: HubertConfig = field(default_factory=HubertConfig)

    def __post_init__(self) -> None:
        hop = math.prod(self.encoder_ratios)
        if math.prod(self.decoder_ratios) != hop:
            raise CheckpointError(
                f"decoder ratios {self.decoder_ratios} do not upsample by the encoder hop {hop}"
            )
        if self.sample_rate % hop:
            raise CheckpointError(f"hop {hop} does not divide the sample rate {self.sample_rate}")
        if self.semantic_downsample_factor < 1:
            raise CheckpointError("semantic features would be slower than the codec frame rate")

    @property
    def hop_length(self) -> int:
        return math.prod(self.encoder_ratios)

    @property
    def frame_rate(self) -> int:
        return self.sample_rate // self.hop_length

    @property
    def semantic_downsample_factor(self) -> int:
        """How many HuBERT frames make one codec frame (2 for the official codec)."""
        return int(self.hop_length / (self.sample_rate / self.semantic_sample_rate) / self.semantic_hop)

    @property
    def quantizer_dim(self) -> int:
        return self.latent_dim + self.hubert.hidden_size


def _require(cond: bool, path: Path, message: str) -> None:
    if not cond:
        raise CheckpointError(f"{path}: {message}; this codec variant is not supported")


# Constructor arguments of the original tokenizer that do not change inference (see spec section 1.4).
_ORIGINAL_INERT = {
    "n_filters", "target_bandwidths", "normalize", "causal", "last_layer_semantic", "merge_mode",
    "semantic_mode", "device",
}
# Optional keys of ours for small test checkpoints; the official one hard-codes these sizes.
_ORIGINAL_SIZE_KEYS = {"encoder_hidden_size", "decoder_hidden_size", "semantic_model_config"}


def from_original(cfg: dict[str, Any], path: Path) -> CodecConfig:
    """Config of the original format (keyword arguments of the reference ``HiggsAudioTokenizer``)."""
    known = _ORIGINAL_INERT | _ORIGINAL_SIZE_KEYS | {
        "D", "codebook_dim", "ratios", "sample_rate", "bins", "n_q", "semantic_techer", "downsample_mode",
        "vq_scale", "semantic_sample_rate",
    }
    unknown = sorted(set(cfg) - known)
    _require(not unknown, path, f"unknown keys {unknown}")
    _require(isinstance(cfg.get("bins", 1024), int), path, "'bins' is a list (residual FSQ)")
    _require(cfg.get("downsample_mode", "step_down") == "step_down", path, "'downsample_mode' is not 'step_down'")
    _require(cfg.get("vq_scale", 1) == 1, path, "'vq_scale' is not 1")
    teacher = cfg.get("semantic_techer", "hubert_base_general")
    if "semantic_model_config" in cfg:
        hubert = _hubert(cfg["semantic_model_config"], path)
    else:
        _require(teacher in TEACHERS, path, f"semantic teacher {teacher!r} is unknown (known: {sorted(TEACHERS)})")
        hubert = TEACHERS[teacher]
    ratios = tuple(cfg.get("ratios", (8, 5, 4, 2, 3)))
    names = {"sample_rate": "sample_rate", "semantic_sample_rate": "semantic_sample_rate",
             "encoder_dim": "encoder_hidden_size", "decoder_dim": "decoder_hidden_size", "latent_dim": "D",
             "num_codebooks": "n_q", "codebook_size": "bins", "codebook_dim": "codebook_dim"}
    return CodecConfig(encoder_ratios=ratios, decoder_ratios=ratios, hubert=hubert, **_given(cfg, names))


def _given(source: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """CodecConfig arguments (``names``: ours -> the file's) for the keys ``source`` sets; the rest keep
    CodecConfig's defaults, which are the reference's."""
    return {ours: source[theirs] for ours, theirs in names.items() if theirs in source}


def _hubert(sub: dict[str, Any], path: Path) -> HubertConfig:
    """HuBERT sizes from a transformers ``HubertConfig`` dict, refusing variants we do not build."""
    _require(sub.get("feat_extract_norm", "group") == "group", path, "HuBERT 'feat_extract_norm' is not 'group'")
    _require(not sub.get("do_stable_layer_norm", False), path, "HuBERT uses 'do_stable_layer_norm'")
    _require(not sub.get("conv_bias", False), path, "HuBERT feature convs have biases")
    _require(sub.get("feat_proj_layer_norm", True), path, "HuBERT has no feature-projection layer norm")
    _require(not sub.get("conv_pos_batch_norm", False), path, "HuBERT uses 'conv_pos_batch_norm'")
    for key in ("hidden_act", "feat_extract_activation"):
        _require(sub.get(key, "gelu") == "gelu", path, f"HuBERT {key!r} is not 'gelu'")
    base = HubertConfig()
    return HubertConfig(
        hidden_size=sub.get("hidden_size", base.hidden_size),
        num_layers=sub.get("num_hidden_layers", base.num_layers),
        num_heads=sub.get("num_attention_heads", base.num_heads),
        intermediate_size=sub.get("intermediate_size", base.intermediate_size),
        conv_dim=tuple(sub.get("conv_dim", base.conv_dim)),
        conv_kernel=tuple(sub.get("conv_kernel", base.conv_kernel)),
        conv_stride=tuple(sub.get("conv_stride", base.conv_stride)),
        pos_conv_kernel=sub.get("num_conv_pos_embeddings", base.pos_conv_kernel),
        pos_conv_groups=sub.get("num_conv_pos_embedding_groups", base.pos_conv_groups),
        layer_norm_eps=sub.get("layer_norm_eps", base.layer_norm_eps),
    )


def from_transformers(cfg: dict[str, Any], path: Path) -> CodecConfig:
    """Config of the transformers-native format (``model_type`` ``higgs_audio_v2_tokenizer``)."""
    acoustic = cfg.get("acoustic_model_config") or {}
    semantic = cfg.get("semantic_model_config") or {}
    _require(all(s == 1 for s in cfg.get("strides", (1, 1))), path, "semantic encoder strides are not 1")
    _require(all(r == 1 for r in cfg.get("channel_ratios", (1, 1))), path, "semantic channel ratios are not 1")
    _require(len(cfg.get("strides", (1, 1))) == len(cfg.get("channel_ratios", (1, 1))), path,
             "'strides' and 'channel_ratios' differ in length")
    sample_rate = cfg.get("sample_rate", 24000)
    enc_ratios = tuple(acoustic.get("downsampling_ratios", (8, 5, 4, 2)))
    dec_ratios = tuple(acoustic.get("upsampling_ratios", enc_ratios[::-1]))
    codebook_size = cfg.get("codebook_size", 1024)
    # The port derives the quantizer count from the largest target bandwidth (kbps).
    bandwidths = cfg.get("target_bandwidths", (0.5, 1, 1.5, 2, 4))
    frame_rate = math.ceil(sample_rate / math.prod(enc_ratios))
    num_codebooks = int(1000 * bandwidths[-1] // (frame_rate * math.ceil(math.log2(codebook_size))))
    given = {**_given(acoustic, {"encoder_dim": "encoder_hidden_size", "decoder_dim": "decoder_hidden_size",
                                 "latent_dim": "hidden_size"}),
             **_given(cfg, {"semantic_sample_rate": "semantic_sample_rate", "codebook_dim": "codebook_dim",
                            "semantic_hop": "downsample_factor", "semantic_kernel": "kernel_size",
                            "semantic_unit_kernel": "unit_kernel_size"})}
    return CodecConfig(
        sample_rate=sample_rate, encoder_ratios=enc_ratios, decoder_ratios=dec_ratios, num_codebooks=num_codebooks,
        codebook_size=codebook_size, semantic_dilations=tuple(cfg.get("block_dilations", (1, 1))),
        semantic_blocks=len(cfg.get("strides", (1, 1))), hubert=_hubert(semantic, path), **given,
    )
