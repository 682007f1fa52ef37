"""Band-limited resampling with a Hann-windowed sinc kernel, in torch.

The codec's semantic branch resamples 24 kHz audio to 16 kHz before HuBERT, and the official tokenizer does
that with torchaudio's default resampler. This module computes the same polyphase filter (windowed sinc,
``lowpass_filter_width`` zero crossings, cut-off at ``rolloff`` times the lower Nyquist rate) so the codes
match without depending on torchaudio.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F


@lru_cache(maxsize=16)
def _kernel(
    orig: int, new: int, width: int, rolloff: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, int]:
    """Polyphase kernel (new, 1, taps) and the one-sided padding it needs; rates already divided by their gcd."""
    cutoff = min(orig, new) * rolloff
    pad = math.ceil(width * orig / cutoff)
    # Input offsets seen by each output phase, in units of input samples / orig (i.e. seconds * orig).
    taps = torch.arange(-pad, pad + orig, dtype=dtype, device=device)[None, None] / orig
    phases = torch.arange(0, -new, -1, dtype=dtype, device=device)[:, None, None] / new
    t = ((phases + taps) * cutoff).clamp(-width, width)
    window = torch.cos(t * math.pi / width / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones((), dtype=dtype, device=device), torch.sin(t) / t)
    return sinc * (window * (cutoff / orig)), pad


def resample(
    wave: torch.Tensor, orig_freq: int, new_freq: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> torch.Tensor:
    """Resample the last axis of ``wave`` from ``orig_freq`` to ``new_freq`` Hz; output length ceil(T * new / orig)."""
    if orig_freq <= 0 or new_freq <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_freq} -> {new_freq}")
    if orig_freq == new_freq:
        return wave
    if not wave.is_floating_point():
        raise TypeError(f"resample needs a floating-point tensor, got {wave.dtype}")
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    kernel, pad = _kernel(orig, new, lowpass_filter_width, float(rolloff), wave.dtype, wave.device)
    shape = wave.shape
    length = shape[-1]
    flat = F.pad(wave.reshape(-1, length), (pad, pad + orig))
    out = F.conv1d(flat[:, None], kernel, stride=orig)  # (N, new, frames): phase-major
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    target = math.ceil(new * length / orig)
    return out[..., :target].reshape(*shape[:-1], target)
