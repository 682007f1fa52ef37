"""Semantic branch: a HuBERT teacher built locally from fixed sizes, and the conv encoder over its features.

Module names follow transformers' ``HubertModel`` (as stored under ``semantic_model.*`` in both checkpoint
formats) so loading is a plain key match. The positional conv's weight norm is folded at load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from higgs_audio.codec.config import CodecConfig, HubertConfig
from higgs_audio.codec.streaming import features_in_chunks


class _FeatureConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, group_norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride, bias=False)
        if group_norm:  # only the first layer: one group per channel
            self.layer_norm = nn.GroupNorm(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if hasattr(self, "layer_norm"):
            x = self.layer_norm(x)
        return F.gelu(x)


class _FeatureExtractor(nn.Module):
    def __init__(self, cfg: HubertConfig) -> None:
        super().__init__()
        dims = (1, *cfg.conv_dim)
        self.conv_layers = nn.ModuleList(
            _FeatureConv(dims[i], dims[i + 1], k, s, group_norm=i == 0)
            for i, (k, s) in enumerate(zip(cfg.conv_kernel, cfg.conv_stride, strict=True))
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = wave[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class _FeatureProjection(nn.Module):
    def __init__(self, cfg: HubertConfig) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x))


class _PosConv(nn.Module):
    def __init__(self, cfg: HubertConfig) -> None:
        super().__init__()
        k = cfg.pos_conv_kernel
        self.conv = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, k, padding=k // 2, groups=cfg.pos_conv_groups)
        self.trim = 1 if k % 2 == 0 else 0  # an even kernel with k // 2 padding yields one extra frame

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[:, :, : -self.trim]
        return F.gelu(y).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, cfg: HubertConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.heads = cfg.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(h, h) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, h // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(b, t, h))


class _FeedForward(nn.Module):
    def __init__(self, cfg: HubertConfig) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output_dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class _Layer(nn.Module):
    """Post-norm transformer layer (HuBERT-base is not the 'stable layer norm' variant)."""

    def __init__(self, cfg: HubertConfig) -> None:
        super().__init__()
        self.attention = _Attention(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = _FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class _Encoder(nn.Module):
    def __init__(self, cfg: HubertConfig) -> None:
        super().__init__()
        self.pos_conv_embed = _PosConv(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_layers))


class Hubert(nn.Module):
    def __init__(self, cfg: HubertConfig) -> None:
        super().__init__()
        self.feature_extractor = _FeatureExtractor(cfg)
        self.feature_projection = _FeatureProjection(cfg)
        self.encoder = _Encoder(cfg)

    def forward(self, wave: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """(B, N) 16 kHz samples -> (B, frames, hidden): the mean of all hidden states.

        The teacher target averages the encoder input (after positional conv and layer norm) with every
        layer's output. With ``chunk``, a longer input goes through the conv feature extractor (the costly
        part: 512 channels at 3.2 kHz) that many samples at a time.
        """
        if chunk is not None and wave.shape[-1] > chunk:
            features = features_in_chunks(self.feature_extractor, wave, chunk)
        else:
            features = self.feature_extractor(wave)
        x = self.feature_projection(features.transpose(1, 2))
        x = self.encoder.layer_norm(x + self.encoder.pos_conv_embed(x))
        total = x  # summed in the order torch.stack(...).mean(dim=1) sums, without holding every state
        for layer in self.encoder.layers:
            x = layer(x)
            total = total + x
        return total / (len(self.encoder.layers) + 1)

    def output_length(self, length: int) -> int:
        for layer in self.feature_extractor.conv_layers:
            (k,), (s,) = layer.conv.kernel_size, layer.conv.stride
            length = (length - k) // s + 1
        return length


class _SemanticUnit(nn.Module):
    def __init__(self, channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2 * dilation,
                               dilation=dilation, bias=False)
        self.conv2 = nn.Conv1d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.elu(self.conv1(F.elu(x))))


class _SemanticBlock(nn.Module):
    def __init__(self, channels: int, cfg: CodecConfig) -> None:
        super().__init__()
        self.res_units = nn.ModuleList(
            _SemanticUnit(channels, cfg.semantic_unit_kernel, d) for d in cfg.semantic_dilations
        )
        self.conv = nn.Conv1d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.res_units:
            x = unit(x)
        return self.conv(x)


class SemanticEncoder(nn.Module):
    """Length-preserving conv stack over the teacher features: (B, hidden, frames) -> same shape."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        c, k = cfg.hubert.hidden_size, cfg.semantic_kernel
        self.conv = nn.Conv1d(c, c, k, padding=k // 2, bias=False)
        self.conv_blocks = nn.ModuleList(_SemanticBlock(c, cfg) for _ in range(cfg.semantic_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        for block in self.conv_blocks:
            x = block(x)
        return x
