"""Write random Higgs Audio V2 audio-tokenizer checkpoints in both official on-disk formats.

The original format: ``config.json`` (the reference tokenizer's constructor arguments) + ``model.pth`` (a plain
state dict with ``weight_g``/``weight_v`` weight-norm pairs, ``semantic_model.*`` HuBERT keys, RVQ statistics).
The transformers-native format: ``config.json`` with ``model_type`` ``higgs_audio_v2_tokenizer`` +
``model.safetensors``, renamed and with the acoustic weight norms folded, as transformers' converter writes it.

Names are generated here from the architecture, independently of the package's renaming code, so loading
both formats and getting identical tensors checks that code. Also: a loader for transformers'
``HiggsAudioV2TokenizerModel`` (the parity reference), with the stand-in ``torchaudio`` it needs.
"""

from __future__ import annotations

import importlib.machinery
import json
import math
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

RATIOS = [8, 5, 4, 2, 3]
DILATIONS = (1, 3, 9)

# The released tokenizer's sizes (spec section 1.4): the reference hard-codes encoder width 64, decoder
# width 1024 and HuBERT-base.
FULL = dict(encoder_hidden_size=64, decoder_hidden_size=1024, D=256, codebook_dim=64, hubert=None)
HUBERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                   conv_dim=[512] * 7, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)
TINY_HUBERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                   conv_dim=[16] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
TINY = dict(encoder_hidden_size=4, decoder_hidden_size=64, D=16, codebook_dim=8, hubert=TINY_HUBERT)
CONV_KERNEL, CONV_STRIDE = [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2]


def original_config(size: dict = TINY) -> dict:
    """The original ``config.json``. Non-released sizes use this package's optional size keys."""
    cfg = {
        "n_filters": 32, "D": size["D"], "codebook_dim": size["codebook_dim"],
        # Must end at 2 kbps: transformers derives 8 quantizers from the last bandwidth (4 would give 16).
        "target_bandwidths": [0.5, 1, 1.5, 2], "ratios": RATIOS, "sample_rate": 24000, "bins": 1024, "n_q": 8,
        "semantic_techer": "hubert_base_general", "downsample_mode": "step_down", "vq_scale": 1,
        "semantic_sample_rate": 16000,
    }
    if size["hubert"] is not None:
        cfg.update(encoder_hidden_size=size["encoder_hidden_size"],
                   decoder_hidden_size=size["decoder_hidden_size"], semantic_model_config=size["hubert"])
    return cfg


def transformers_config(size: dict = TINY) -> dict:
    hubert = size["hubert"] or HUBERT_BASE
    return {
        "model_type": "higgs_audio_v2_tokenizer",
        "architectures": ["HiggsAudioV2TokenizerModel"],
        "target_bandwidths": [0.5, 1, 1.5, 2],
        "sample_rate": 24000, "semantic_sample_rate": 16000, "downsample_factor": 320,
        "codebook_size": 1024, "codebook_dim": size["codebook_dim"],
        "kernel_size": 3, "unit_kernel_size": 3, "channel_ratios": [1, 1], "strides": [1, 1],
        "block_dilations": [1, 1],
        "acoustic_model_config": {
            "model_type": "dac", "encoder_hidden_size": size["encoder_hidden_size"],
            "downsampling_ratios": RATIOS, "upsampling_ratios": RATIOS,
            "decoder_hidden_size": size["decoder_hidden_size"], "hidden_size": size["D"],
        },
        "semantic_model_config": {"model_type": "hubert", "mask_time_prob": 0.0, "conv_kernel": CONV_KERNEL,
                                  "conv_stride": CONV_STRIDE, **hubert},
    }


class _Builder:
    """Collects (original name, transformers name, tensor) triples; weight-norm convs get both forms."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.original: dict[str, torch.Tensor] = {}
        self.native: dict[str, torch.Tensor] = {}

    def randn(self, *shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen) * std

    def uniform(self, *shape: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=self.gen)

    def both(self, orig: str, native: str | None, value: torch.Tensor) -> None:
        self.original[orig] = value
        if native is not None:
            self.native[native] = value

    def snake(self, orig: str, native: str, channels: int) -> None:
        self.both(orig + ".alpha", native + ".alpha", self.uniform(1, channels, 1, lo=0.5, hi=1.5))

    def wn_conv(self, orig: str, native: str, shape: tuple[int, ...], gain: float) -> None:
        """Weight-normed conv (dim 0): ``gain`` sets the folded weight's scale relative to unit fan-in."""
        v = self.randn(*shape)
        g = self.uniform(shape[0], 1, 1, lo=0.8, hi=1.2) * gain  # each row's norm, so unit fan-in variance
        self.original[orig + ".weight_g"], self.original[orig + ".weight_v"] = g, v
        self.native[native + ".weight"] = torch._weight_norm(v, g, 0)
        self.both(orig + ".bias", native + ".bias", self.randn(shape[1] if "conv_t" in native else shape[0],
                                                               std=0.01))

    def plain(self, orig: str, native: str | None, shape: tuple[int, ...], bias: bool, std: float | None = None
              ) -> None:
        std = std if std is not None else 1 / math.sqrt(math.prod(shape[1:]))
        self.both(orig + ".weight", native and native + ".weight", self.randn(*shape, std=std))
        if bias:
            self.both(orig + ".bias", native and native + ".bias", self.randn(shape[0], std=0.01))


def _residual_unit(b: _Builder, orig: str, native: str, c: int) -> None:
    b.snake(orig + ".block.0", native + ".snake1", c)
    b.wn_conv(orig + ".block.1", native + ".conv1", (c, c, 7), gain=1.0)
    b.snake(orig + ".block.2", native + ".snake2", c)
    b.wn_conv(orig + ".block.3", native + ".conv2", (c, c, 1), gain=0.3)


def _acoustic(b: _Builder, width: int, dec_width: int, latent: int) -> None:
    n = len(RATIOS)
    b.wn_conv("encoder.block.0", "acoustic_encoder.conv1", (width, 1, 7), gain=1.0)
    for m, stride in enumerate(RATIOS, start=1):
        c, o, nb = width * 2 ** (m - 1), f"encoder.block.{m}", f"acoustic_encoder.block.{m - 1}"
        for r in range(3):
            _residual_unit(b, f"{o}.block.{r}", f"{nb}.res_unit{r + 1}", c)
        b.snake(f"{o}.block.3", f"{nb}.snake1", c)
        b.wn_conv(f"{o}.block.4", f"{nb}.conv1", (2 * c, c, 2 * stride), gain=1.0)
    top = width * 2**n
    b.snake(f"encoder.block.{n + 1}", "acoustic_encoder.snake1", top)
    b.wn_conv(f"encoder.block.{n + 2}", "acoustic_encoder.conv2", (latent, top, 3), gain=1.0)

    b.wn_conv("decoder_2.model.0", "acoustic_decoder.conv1", (dec_width, latent, 7), gain=1.0)
    for m, stride in enumerate(RATIOS, start=1):
        cin, cout = dec_width // 2 ** (m - 1), dec_width // 2**m
        o, nb = f"decoder_2.model.{m}", f"acoustic_decoder.block.{m - 1}"
        b.snake(f"{o}.block.0", f"{nb}.snake1", cin)
        # ConvTranspose weight [in, out, k]; weight norm over dim 0 (the input channel).
        b.wn_conv(f"{o}.block.1", f"{nb}.conv_t1", (cin, cout, 2 * stride), gain=math.sqrt(stride / 2))
        for r in range(3):
            _residual_unit(b, f"{o}.block.{r + 2}", f"{nb}.res_unit{r + 1}", cout)
    bottom = dec_width // 2**n
    b.snake(f"decoder_2.model.{n + 1}", "acoustic_decoder.snake1", bottom)
    b.wn_conv(f"decoder_2.model.{n + 2}", "acoustic_decoder.conv2", (1, bottom, 7), gain=0.3)


def _semantic_convs(b: _Builder, h: int) -> None:
    b.plain("encoder_semantic.conv.conv", "encoder_semantic.conv", (h, h, 3), bias=False)
    for blk in range(2):
        o = f"encoder_semantic.conv_blocks.{blk}"
        for u in range(2):
            b.plain(f"{o}.res_units.{u}.conv1.conv", f"{o}.res_units.{u}.conv1", (h, h, 3), bias=False)
            b.plain(f"{o}.res_units.{u}.conv2", f"{o}.res_units.{u}.conv2", (h, h, 1), bias=False, std=0.3 / h**0.5)
        b.plain(f"{o}.conv.conv", f"{o}.conv", (h, h, 3), bias=True)
    # The training-only semantic decoder: stored by both formats, unused at inference.
    b.plain("decoder_semantic.conv1.conv", "decoder_semantic.conv1", (h, h, 3), bias=False)
    for blk in range(2):
        o = f"decoder_semantic.conv_blocks.{blk}"
        b.plain(f"{o}.conv.conv", f"{o}.conv", (h, h, 3), bias=True)
        for u in range(2):
            b.plain(f"{o}.res_units.{u}.conv1.conv", f"{o}.res_units.{u}.conv1", (h, h, 3), bias=False)
            b.plain(f"{o}.res_units.{u}.conv2", f"{o}.res_units.{u}.conv2", (h, h, 1), bias=False)
    b.plain("decoder_semantic.conv2.conv", "decoder_semantic.conv2", (h, h, 3), bias=False)


def _hubert(b: _Builder, hub: dict) -> None:
    p, h, dims = "semantic_model.", hub["hidden_size"], [1] + hub["conv_dim"]
    for i, k in enumerate(CONV_KERNEL):
        b.plain(f"{p}feature_extractor.conv_layers.{i}.conv", f"{p}feature_extractor.conv_layers.{i}.conv",
                (dims[i + 1], dims[i], k), bias=False, std=math.sqrt(2 / (dims[i] * k)))
    for name, c in ((f"{p}feature_extractor.conv_layers.0.layer_norm", dims[1]),
                    (f"{p}feature_projection.layer_norm", dims[-1]), (f"{p}encoder.layer_norm", h)):
        b.both(name + ".weight", name + ".weight", 1 + b.randn(c, std=0.1))
        b.both(name + ".bias", name + ".bias", b.randn(c, std=0.1))
    b.plain(f"{p}feature_projection.projection", f"{p}feature_projection.projection", (h, dims[-1]), bias=True)
    k, groups = hub["num_conv_pos_embeddings"], hub["num_conv_pos_embedding_groups"]
    pos = f"{p}encoder.pos_conv_embed.conv"
    # Weight norm over dim 2 (per kernel tap): original stores weight_g/weight_v, the port a parametrization.
    g, v = b.uniform(1, 1, k, lo=0.05, hi=0.15), b.randn(h, h // groups, k)
    b.original[pos + ".weight_g"], b.original[pos + ".weight_v"] = g, v
    b.native[pos + ".parametrizations.weight.original0"] = g
    b.native[pos + ".parametrizations.weight.original1"] = v
    b.both(pos + ".bias", pos + ".bias", b.randn(h, std=0.01))
    for layer in range(hub["num_hidden_layers"]):
        o = f"{p}encoder.layers.{layer}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            b.plain(f"{o}.attention.{proj}", f"{o}.attention.{proj}", (h, h), bias=True)
        b.plain(f"{o}.feed_forward.intermediate_dense", f"{o}.feed_forward.intermediate_dense",
                (hub["intermediate_size"], h), bias=True)
        b.plain(f"{o}.feed_forward.output_dense", f"{o}.feed_forward.output_dense",
                (h, hub["intermediate_size"]), bias=True)
        for ln in ("layer_norm", "final_layer_norm"):
            b.both(f"{o}.{ln}.weight", f"{o}.{ln}.weight", 1 + b.randn(h, std=0.1))
            b.both(f"{o}.{ln}.bias", f"{o}.{ln}.bias", b.randn(h, std=0.1))
    b.both(f"{p}masked_spec_embed", None, b.uniform(h, lo=0.0, hi=1.0))


def _quantizer(b: _Builder, dim: int, codebook_dim: int, n_q: int, bins: int) -> None:
    for i in range(n_q):
        o, nb = f"quantizer.vq.layers.{i}", f"quantizer.quantizers.{i}"
        b.plain(f"{o}.project_in", f"{nb}.project_in", (codebook_dim, dim), bias=True)
        b.plain(f"{o}.project_out", f"{nb}.project_out", (dim, codebook_dim), bias=True, std=0.5 / codebook_dim**0.5)
        # Random, not zero (transformers' init zero-fills them, which makes every distance a tie). Later layers
        # see a smaller residual, so their codebooks shrink too: the nearest code then varies from frame to
        # frame instead of being whichever code has the smallest norm.
        embed = b.randn(bins, codebook_dim, std=0.8**i)
        b.both(f"{o}._codebook.embed", f"{nb}.codebook.embed", embed)
        b.both(f"{o}._codebook.inited", f"{nb}.codebook.inited", torch.ones(1))
        b.both(f"{o}._codebook.cluster_size", f"{nb}.codebook.cluster_size", b.uniform(bins, lo=0.0, hi=5.0))
        b.both(f"{o}._codebook.embed_avg", f"{nb}.codebook.embed_avg", embed.clone())


def random_state(size: dict = TINY, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(original-format state dict, transformers-format state dict) of the same random weights."""
    b = _Builder(seed)
    hub = size["hubert"] or HUBERT_BASE
    _acoustic(b, size["encoder_hidden_size"], size["decoder_hidden_size"], size["D"])
    _semantic_convs(b, hub["hidden_size"])
    _hubert(b, hub)
    dim = size["D"] + hub["hidden_size"]
    b.plain("fc_prior", "fc", (dim, dim), bias=True)
    b.plain("fc_post1", "fc1", (hub["hidden_size"], dim), bias=True)
    b.plain("fc_post2", "fc2", (size["D"], dim), bias=True)
    _quantizer(b, dim, size["codebook_dim"], 8, 1024)
    return b.original, b.native


def write_original(directory: Path, state: dict[str, torch.Tensor], size: dict = TINY) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(original_config(size), indent=2))
    torch.save(state, directory / "model.pth")
    return directory


def write_transformers(directory: Path, state: dict[str, torch.Tensor], size: dict = TINY) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(transformers_config(size), indent=2))
    save_file({k: v.contiguous() for k, v in state.items()}, directory / "model.safetensors")
    return directory


def write_checkpoints(root: Path, size: dict = TINY, seed: int = 0) -> tuple[Path, Path]:
    """Write the same random weights in both formats under ``root``; return (original dir, transformers dir)."""
    original, native = random_state(size, seed)
    return write_original(root / "original", original, size), write_transformers(root / "transformers", native, size)


def install_torchaudio_stand_in() -> None:
    """transformers' tokenizer module imports torchaudio (no wheel loads beside torch 2.13 here) and only calls
    ``torchaudio.functional.resample``: give it ours, which tests prove equal to torchaudio's."""
    if "torchaudio" in sys.modules:
        return
    from higgs_audio.codec.resample import resample

    package = types.ModuleType("torchaudio")
    package.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    functional = types.ModuleType("torchaudio.functional")
    functional.__spec__ = importlib.machinery.ModuleSpec("torchaudio.functional", None)
    functional.resample = resample
    package.functional = functional
    sys.modules["torchaudio"], sys.modules["torchaudio.functional"] = package, functional


def load_port(transformers_dir: Path):
    """transformers' ``HiggsAudioV2TokenizerModel`` from a transformers-format directory, fp32, in RAM."""
    install_torchaudio_stand_in()
    from transformers.models.higgs_audio_v2_tokenizer.modeling_higgs_audio_v2_tokenizer import (
        HiggsAudioV2TokenizerModel,
    )

    model = HiggsAudioV2TokenizerModel.from_pretrained(transformers_dir, dtype=torch.float32).eval()
    for tensor in list(model.parameters()) + list(model.buffers()):  # weights are mapped lazily; copy them
        tensor.data = tensor.data.clone()
    return model
