"""Batched sampling rules of the reference generation loop (spec §5.2-§5.4), as pure tensor functions.

Every function works on B streams at once; per-stream settings are tensors with leading dim B, so a
decode step never loops over streams in Python. Randomness comes from a counter-based generator keyed
by (seed, counter, salt): a stream's draws depend only on its own seed and step, never on which other
streams share the batch, and a call is reproducible from its seed.

Greedy streams (temperature 0) take the argmax of the scores. Repetition-aware sampling (RAS) still
redraws repeated codes for them, as the reference does (spec §5.3, §10.7); with the keyed generator
those redraws are reproducible too. Disable RAS per stream with ``max_repeat = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch

# Salts keep the text, audio and RAS draws of one step independent of each other.
SALT_TEXT = 1
SALT_AUDIO = 2
SALT_RAS = 3

_MASK32 = 0xFFFFFFFF


def _setting(default, doc: str = ""):
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings: the one home of their names, defaults and meanings, from which the
    CLI's flags and the server's request fields are made (``describe``)."""

    temperature: float = _setting(0.7, "0 = greedy")
    top_k: int | None = _setting(50, "0 = off")
    top_p: float = _setting(0.95)
    ras_window: int = _setting(7, "repetition-aware sampling window in frames; 0 = off")
    ras_max_repeat: int = _setting(2)
    seed: int | None = _setting(None, "same seed, same audio, batched or not")
    max_new_tokens: int = _setting(2048, "steps per request, 25 per second of audio")  # text tokens, audio start, columns
    max_audio_seconds: float | None = _setting(None, "runaway guard per audio segment")
    stop: tuple[str, ...] = _setting(())

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, "temperature must be >= 0 (0 = greedy)"),
            (self.top_k is None or self.top_k >= 0, "top_k must be >= 0 (0 or None = off)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.ras_window >= 0, "ras_window must be >= 0 (0 = off)"),
            (self.ras_max_repeat >= 1, "ras_max_repeat must be >= 1"),
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.max_audio_seconds is None or self.max_audio_seconds > 0, "max_audio_seconds must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def describe(name: str) -> str:
    """A ``SamplingParams`` field's meaning and default, for help texts: "0 = greedy (default 0.7)"."""
    setting = next(f for f in fields(SamplingParams) if f.name == name)
    doc, default = setting.metadata["doc"], setting.default
    if default is None:
        return doc
    return f"{doc} (default {default})" if doc else f"default {default}"


def warp(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Temperature -> top-k -> top-p on (B, R, V) fp32 logits, per stream, in the reference's (HF) order.

    ``temperature`` (B,): scores / temperature (values <= 0 mean greedy and leave the scores unscaled).
    ``top_k`` (B,) long, 0 = off: keep every score >= the k-th largest.
    ``top_p`` (B,), 1.0 = off: sort ascending, remove entries whose cumulative softmax is <= 1 - p,
    always keeping the top one. Removed entries become -inf. Rows R share their stream's settings.
    Pass ``top_p`` as float64 to reproduce HF's threshold ``1 - p`` bit for bit.
    """
    b, _, v = logits.shape
    temp = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).to(logits.dtype)
    scores = logits / temp.view(b, 1, 1)
    # One ascending sort serves both filters: top-k removes a prefix of this order.
    sorted_scores, order = scores.sort(dim=-1)
    k = top_k.view(b, 1, 1).long()
    kth = sorted_scores.gather(-1, (v - k).clamp(0, v - 1).expand(-1, scores.shape[1], 1))
    threshold = torch.where(k > 0, kth, torch.full_like(kth, -math.inf))
    remove = sorted_scores < threshold
    cumulative = sorted_scores.masked_fill(remove, -math.inf).softmax(dim=-1).cumsum(dim=-1)
    cut = (1 - top_p.double()).to(scores.dtype).view(b, 1, 1)
    remove_p = (cumulative <= cut) & (top_p < 1).view(b, 1, 1)
    remove_p[..., -1] = False
    remove = remove | remove_p
    return scores.masked_fill(torch.zeros_like(remove).scatter(-1, order, remove), -math.inf)


def keyed_uniform(
    seed: torch.Tensor, counter: torch.Tensor, salt: int, shape: Sequence[int] | int
) -> torch.Tensor:
    """(B, *shape) float32 uniforms in (0, 1), a pure function of (seed[b], counter[b], salt, index).

    A stateless hash (Wellons' lowbias32, kept in 32-bit words inside int64 so no product overflows)
    replaces a sequential generator. Values are (2m + 1) / 2^24 for a 23-bit m: exactly representable
    in float32 and never 0 or 1.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    seed, counter = seed.long(), counter.long()
    key = _hash32((seed & _MASK32) ^ _hash32((salt * 0x9E3779B9) & _MASK32))  # the salt's hash: a Python int
    for word in ((seed >> 32) & _MASK32, counter & _MASK32, (counter >> 32) & _MASK32):
        key = _hash32(key ^ word)
    key2 = _hash32(key ^ 0x5BD1E995)
    n = math.prod(shape)
    index = torch.arange(n, device=seed.device, dtype=torch.long)
    h = _hash32(_hash32(index ^ key[:, None]) ^ key2[:, None])
    return (((h >> 9).float() + 0.5) * 2.0**-23).view(-1, *shape)


def sample(
    scores: torch.Tensor, greedy: torch.Tensor, seed: torch.Tensor, counter: torch.Tensor, salt: int
) -> torch.Tensor:
    """(B, R, V) scores -> (B, R) ids: argmax for greedy streams, else a draw from softmax(scores).

    Draws use the Gumbel-max trick with keyed noise, so they are independent of batch neighbours.
    """
    u = keyed_uniform(seed, counter, salt, scores.shape[1:])
    gumbel = -torch.log(-torch.log(u))
    noisy = scores + torch.where(greedy.view(-1, 1, 1), torch.zeros_like(gumbel), gumbel).to(scores.dtype)
    return noisy.argmax(dim=-1)


def ras(
    candidate: torch.Tensor,
    raw_logits: torch.Tensor,
    history: torch.Tensor,
    max_repeat: torch.Tensor,
    seed: torch.Tensor,
    counter: torch.Tensor,
) -> torch.Tensor:
    """Repetition-aware sampling (spec §5.3) on a candidate column (B, K).

    ``history`` (B, K, W): the last W audio-out columns of each stream (prompt audio-out blocks and
    generated columns, delayed, bos/eos included), padded with -1 where a stream has fewer or uses a
    shorter window. A row whose candidate occurs ``>= max_repeat`` times there is redrawn from
    ``softmax(raw_logits)`` (no temperature/top-k/top-p); the redraw is not re-checked.
    ``max_repeat`` (B,) of 0 disables RAS for that stream.
    """
    repeats = (history == candidate.unsqueeze(-1)).sum(dim=-1)
    limit = max_repeat.view(-1, 1)
    trigger = (limit > 0) & (repeats >= limit)
    redraw = sample(raw_logits.float(), torch.zeros_like(trigger[:, 0]), seed, counter, SALT_RAS)
    return torch.where(trigger, redraw, candidate)


def _mul32(x, c: int):
    """x * c mod 2^32 for x in [0, 2^32). A c of 2^31 or more is used as c - 2^32 (the same modulo 2^32), so
    the int64 product stays within (-2^63, 2^63) and never overflows."""
    return (x * (c - 2**32 if c >= 2**31 else c)) & _MASK32


def _hash32(x):
    """lowbias32 (C. Wellons): a bijective 32-bit integer mixer with low bias, on tensors or Python ints."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)
