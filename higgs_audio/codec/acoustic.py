"""DAC-style acoustic encoder and decoder (Snake activations, dilated residual units, strided convs).

Module names follow the transformers port so its checkpoints load by identity; weight norm is folded at load,
so every conv here is a plain one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

DILATIONS = (1, 3, 9)


class Snake(nn.Module):
    """x + sin(alpha * x)^2 / alpha, with a learnt alpha per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place on one temporary: half the memory passes of the plain expression, same rounding.
        y = torch.mul(self.alpha, x).sin_()
        return y.mul_(y).mul_((self.alpha + 1e-9).reciprocal()).add_(x)


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.snake1 = Snake(channels)
        self.conv1 = nn.Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake(channels)
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.snake2(self.conv1(self.snake1(x)))).add_(x)


class EncoderBlock(nn.Module):
    """Three residual units at ``channels``, then a strided conv to ``2 * channels``."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.res_unit1, self.res_unit2, self.res_unit3 = (ResidualUnit(channels, d) for d in DILATIONS)
        self.snake1 = Snake(channels)
        self.conv1 = nn.Conv1d(channels, 2 * channels, 2 * stride, stride=stride, padding=math.ceil(stride / 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_unit3(self.res_unit2(self.res_unit1(x)))
        return self.conv1(self.snake1(x))


class AcousticEncoder(nn.Module):
    def __init__(self, width: int, ratios: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 7, padding=3)
        self.block = nn.ModuleList(EncoderBlock(width * 2**i, s) for i, s in enumerate(ratios))
        top = width * 2 ** len(ratios)
        self.snake1 = Snake(top)
        self.conv2 = nn.Conv1d(top, latent_dim, 3, padding=1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) samples -> (B, latent_dim, frames)."""
        x = self.conv1(wave)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))

    def output_length(self, length: int) -> int:
        """Frames produced for ``length`` input samples (the convs' length arithmetic, nothing run)."""
        for conv in self.modules():
            if isinstance(conv, nn.Conv1d):
                (k,), (s,), (d,), (p,) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
                length = (length + 2 * p - d * (k - 1) - 1) // s + 1
        return length


class DecoderBlock(nn.Module):
    """Transposed conv upsampling exactly ``stride`` times, then three residual units."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.snake1 = Snake(in_channels)
        self.conv_t1 = nn.ConvTranspose1d(
            in_channels, out_channels, 2 * stride, stride=stride,
            padding=math.ceil(stride / 2), output_padding=stride % 2,
        )
        self.res_unit1, self.res_unit2, self.res_unit3 = (ResidualUnit(out_channels, d) for d in DILATIONS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_t1(self.snake1(x))
        return self.res_unit3(self.res_unit2(self.res_unit1(x)))


class AcousticDecoder(nn.Module):
    def __init__(self, latent_dim: int, width: int, ratios: Sequence[int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(latent_dim, width, 7, padding=3)
        self.block = nn.ModuleList(
            DecoderBlock(width // 2**i, width // 2 ** (i + 1), s) for i, s in enumerate(ratios)
        )
        bottom = width // 2 ** len(ratios)
        self.snake1 = Snake(bottom)
        self.conv2 = nn.Conv1d(bottom, 1, 7, padding=3)  # no tanh: the official decoder leaves output unbounded

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim, frames) -> (B, 1, frames * hop)."""
        x = self.conv1(latent)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))

    def context_frames(self) -> tuple[int, int]:
        """Latent frames before and after a frame that its output samples depend on (the receptive field).

        Walks every conv in forward order and widens the needed input interval; a residual unit's skip path
        needs a subset of its conv branch's interval, so chaining the convs is exact. Snakes are pointwise.
        """
        hop = math.prod(conv.stride[0] for conv in self.modules() if isinstance(conv, nn.ConvTranspose1d))
        frame = 1000  # any frame far from the edges: the layers are shift-equivariant
        lo, hi = frame * hop, frame * hop + hop - 1
        for conv in reversed([m for m in self.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]):
            (k,), (s,), (p,) = conv.kernel_size, conv.stride, conv.padding
            if isinstance(conv, nn.ConvTranspose1d):
                # output n = i * s - p + j for taps j in [0, k)
                lo, hi = -((k - 1 - lo - p) // s), (hi + p) // s
            else:
                d = conv.dilation[0]
                lo, hi = lo * s - p, hi * s - p + d * (k - 1)
        return frame - lo, hi - frame
