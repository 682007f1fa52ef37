"""Llama-style building blocks with the DualFFN audio adapter: RMSNorm, llama3 RoPE, GQA attention, MLP, layers.

Audio positions are selected by ``audio``: ``False`` (every position is text), ``True`` (every position is
audio) or a bool tensor (B, L) for mixed inputs. The uniform cases keep shapes static for compiled decode.

Projections that read the same input are built separately, under the checkpoint's names, and joined into one
matmul by ``fuse_projections`` when the model loads for inference (q/k/v, gate/up): fewer, larger matmuls.
Training keeps them separate (LoRA adapts each, under the port's names).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from higgs_audio.config import ModelConfig
from higgs_audio.model import cpu_kernels

AudioSelect = bool | torch.Tensor


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32:  # scaling before or after rounding is the same in fp32
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Normalise in fp32, cast back, then scale: the reference's order (spec §2.2). F.rms_norm computes in
        # fp32 and rounds once, so it does the first two in one kernel (on CUDA) instead of six. An fp32 weight
        # scales a bf16 prefill (``HiggsAudioModel.prefill_dtype``) in bf16: its values are bf16 ones.
        weight = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        return weight * F.rms_norm(x, x.shape[-1:], eps=self.eps)


class MLP(nn.Module):
    FUSED = {"gate_up_proj": ("gate_proj", "up_proj")}  # see fuse_projections

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.register_module("gate_up_proj", None)  # first: once joined, it takes its parts' place in the order
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is None:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies with llama3 long-context scaling when configured (spec §2.7)."""
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim))
    s = cfg.rope_scaling
    if s is None:
        return inv.float()
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    orig = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > orig / low, inv / factor, inv)
    smooth = (orig / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= orig / high) & (wavelen <= orig / low)
    return torch.where(medium, blended, scaled).float()


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
    """cos and signed sin (B, 1, L, head_dim) for positions (B, L), computed in fp32 then cast (as the
    reference). The sin's first half is negated, so that rotating half of x is a roll (see ``_apply_rope``)."""
    freqs = positions[..., None].float() * inv_freq
    cos, sin = freqs.cos().to(dtype), freqs.sin().to(dtype)
    return torch.cat((cos, cos), dim=-1)[:, None], torch.cat((-sin, sin), dim=-1)[:, None]


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, where rotate_half(x) = (-x2, x1): the sign lives in ``signed_sin``
    (negation is exact, so the products are the reference's), leaving one roll instead of a chunk, a
    negation and a concatenation, and the product and sum in one kernel."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


def attention_bias(positions: torch.Tensor, kv_len: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, L, kv_len) additive mask: 0 where cache slot <= the query's position, else -inf. Made once per
    forward pass, it is added with the score scaling in one kernel in every layer."""
    slots = torch.arange(kv_len, device=positions.device)
    visible = slots[None, None, None, :] <= positions[:, None, :, None]
    return torch.zeros(visible.shape, dtype=dtype, device=positions.device).masked_fill_(~visible, -math.inf)


@dataclass
class KVCache:
    """Preallocated keys/values for every layer, plus which cached positions hold audio.

    k, v: (layers, B, kv_heads, max_len, head_dim); audio: (B, max_len). Streams in a batch have their own
    positions, so a slot is visible to a query exactly when its index is <= the query's position.
    """

    k: torch.Tensor
    v: torch.Tensor
    audio: torch.Tensor

    @staticmethod
    def allocate(cfg: ModelConfig, batch: int, max_len: int, dtype: torch.dtype, device) -> KVCache:
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        return KVCache(
            k=torch.zeros(shape, dtype=dtype, device=device),
            v=torch.zeros(shape, dtype=dtype, device=device),
            audio=torch.zeros(batch, max_len, dtype=torch.bool, device=device),
        )

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def mark_audio(self, positions: torch.Tensor, audio: AudioSelect) -> None:
        # A bool is filled on the device: copying it from the host could not be captured in a CUDA graph.
        flags = audio if isinstance(audio, torch.Tensor) else torch.full_like(positions, audio, dtype=torch.bool)
        flags = flags.expand(positions.shape)
        self.audio.scatter_(1, positions, flags)


@dataclass
class Pass:
    """What every layer of one forward pass shares, computed once for the pass (views made here once: making
    each layer's would be operators per layer).

    ``cos``/``sin``: RoPE's cos and signed sin (B, 1, L, head_dim); ``rope_cos``/``rope_sin``: the same for every
    head of the fused projection's rows (B, heads + 2 kv_heads, L, head_dim), identity on the values' heads, so
    that one rotation covers queries, keys and values and one split separates them. ``bias``: the additive
    attention bias (B, 1, L, kv_len). With a cache: each layer's keys and values, (B, kv_heads, max_len,
    head_dim) views of it, where the positions' keys and values go in them (``slots``), and the attended first
    kv_len positions of each, in the shapes the pass's attention reads: for a decode step (L == 1), keys
    transposed (B * kv_heads, head_dim, kv_len) and values (B * kv_heads, kv_len, head_dim) for batched matmuls,
    with ``step_bias`` (B * kv_heads, 1, kv_len); otherwise (B, kv_heads, kv_len, head_dim) for SDPA."""

    cos: torch.Tensor
    sin: torch.Tensor
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor
    bias: torch.Tensor
    positions: torch.Tensor
    cache: KVCache | None = None
    keys: tuple[torch.Tensor, ...] = ()
    values: tuple[torch.Tensor, ...] = ()
    slots: torch.Tensor | None = None  # (B, kv_heads, L, head_dim) scatter index along the cache's positions
    attended_keys: tuple[torch.Tensor, ...] = ()
    attended_values: tuple[torch.Tensor, ...] = ()
    step_bias: torch.Tensor | None = None

    @staticmethod
    def over(cfg: ModelConfig, cos, sin, bias, positions: torch.Tensor, cache: KVCache | None) -> Pass:
        kv_heads = cfg.num_kv_heads

        def every_head(table: torch.Tensor, identity: float) -> torch.Tensor:
            queries_keys = table.expand(-1, cfg.num_heads + kv_heads, -1, -1)
            return torch.cat((queries_keys, torch.full_like(table, identity).expand(-1, kv_heads, -1, -1)), dim=1)

        rope_cos, rope_sin = every_head(cos, 1.0), every_head(sin, 0.0)
        if cache is None:
            return Pass(cos, sin, rope_cos, rope_sin, bias, positions)
        slots = positions[:, None, :, None].expand(-1, kv_heads, -1, cfg.head_dim)
        keys, values = cache.k[:, :, :, : bias.shape[-1]], cache.v[:, :, :, : bias.shape[-1]]
        if positions.shape[1] == 1:
            keys, values = keys.flatten(1, 2).transpose(-1, -2), values.flatten(1, 2)
        p = Pass(cos, sin, rope_cos, rope_sin, bias, positions, cache, cache.k.unbind(), cache.v.unbind(), slots,
                 keys.unbind(), values.unbind())
        return p.with_bias(bias)

    @property
    def decode_step(self) -> bool:
        return self.cache is not None and self.positions.shape[1] == 1

    def with_bias(self, bias: torch.Tensor) -> Pass:
        """This pass with another attention bias (B, 1, L, kv_len)."""
        step_bias = None
        if self.decode_step:
            b, kv_heads, kv_len = bias.shape[0], self.slots.shape[1], bias.shape[-1]
            step_bias = bias.expand(b, kv_heads, 1, kv_len).reshape(b * kv_heads, 1, kv_len)
        return replace(self, bias=bias, step_bias=step_bias)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store a layer's new keys and values (B, kv_heads, L, head_dim); returns the layer's attended ones
        (rows whose positions lie past the attended length, idle slots, are written but not read)."""
        keys, values = self.keys[layer], self.values[layer]
        if k.dtype != keys.dtype:  # a bf16 prefill into an fp32 cache (HiggsAudioModel.prefill_dtype)
            k, v = k.to(keys.dtype), v.to(values.dtype)
        keys.scatter_(2, self.slots, k)
        values.scatter_(2, self.slots, v)
        return self.attended_keys[layer], self.attended_values[layer]


class Attention(nn.Module):
    FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj")}  # see fuse_projections

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.register_module("qkv_proj", None)  # first: once joined, it takes its parts' place in the order
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """Queries, keys and values (B, L, (heads + 2 kv_heads) * head_dim), one projection or three joined."""
        if self.qkv_proj is None:
            return torch.cat((self.q_proj(x), self.k_proj(x), self.v_proj(x)), dim=-1)
        return self.qkv_proj(x)

    def _rotated(self, qkv: torch.Tensor, p: Pass):
        """q (B, heads, L, head_dim), k and v (B, kv_heads, L, head_dim), RoPE applied to q and k: all the rows
        rotate together (the values' heads by the identity), one set of RoPE kernels, then one split."""
        b, n, _ = qkv.shape
        # a decode step's rows are already (B, heads, 1, head_dim)
        heads = qkv.view(b, -1, 1, self.head_dim) if n == 1 else qkv.view(b, n, -1, self.head_dim).transpose(1, 2)
        return _apply_rope(heads, p.rope_cos, p.rope_sin).split(
            (self.num_heads, self.num_kv_heads, self.num_kv_heads), dim=1)

    def forward(self, x: torch.Tensor, p: Pass, layer: int) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self._project(x)
        if p.decode_step and cpu_kernels.attends(qkv, p.keys[layer], p.values[layer]):
            # RoPE, the cache store and attention of a decode step in our CPU kernel, from the projection's rows
            out = cpu_kernels.decode_attention(qkv, p.cos, p.sin, p.positions, p.keys[layer], p.values[layer],
                                               p.bias, self.num_heads, self.head_dim**-0.5)
            return self.o_proj(out.view(b, n, -1))
        q, k, v = self._rotated(qkv, p)
        # Training: the whole sequence in one pass, nothing kept (autograd needs no in-place).
        keys, values = (k, v) if p.cache is None else p.write(layer, k, v)
        if p.decode_step:
            out = self._decode_attention(q, keys, values, p.step_bias)
        else:
            if keys.dtype != q.dtype:  # a bf16 prefill reads the fp32 cache's keys and values in bf16
                keys, values = keys.to(q.dtype), values.to(q.dtype)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=p.bias, enable_gqa=True)
            out = out.transpose(1, 2)
        return self.o_proj(out.reshape(b, n, -1))

    def write_keys_values(self, x: torch.Tensor, p: Pass, layer: int) -> None:
        """Only what ``forward`` writes into the cache for x, computed as it does (the same values)."""
        _, k, v = self._rotated(self._project(x), p)
        p.write(layer, k, v)

    def _decode_attention(self, q, keys_t, values, bias) -> torch.Tensor:
        """Attention of one query per row, each key/value head serving its group of query heads: batched
        matmuls over (B * kv_heads) rows (``Pass``'s decode-step shapes), the scores scaled and the mask added
        in the first. SDPA with a mask and grouped heads takes its slow generic path here (8x slower on a CPU in
        bf16, and many kernels on CUDA). Softmax in fp32. Returns (B * kv_heads, group, head_dim): the heads in
        order."""
        grouped = q.reshape(keys_t.shape[0], self.num_heads // self.num_kv_heads, self.head_dim)
        scores = torch.baddbmm(bias, grouped, keys_t, alpha=self.head_dim**-0.5)
        probs = scores.softmax(-1, dtype=torch.float32)
        return torch.bmm(probs if probs.dtype == q.dtype else probs.to(q.dtype), values)


def _by_position(x: torch.Tensor, audio: AudioSelect, text_fn, audio_fn) -> torch.Tensor:
    """Apply ``text_fn`` to text positions and ``audio_fn`` to audio positions."""
    if audio is False:
        return text_fn(x)
    if audio is True:
        return audio_fn(x)
    if x.shape[1] == 1:
        # A decode step mixing text and audio streams: both paths on every row keeps shapes static
        # (capturable in a CUDA graph); such steps are rare (a stream starting or ending its audio).
        return torch.where(audio[..., None], audio_fn(x), text_fn(x))
    out = torch.empty_like(x)
    out[~audio] = text_fn(x[~audio])
    out[audio] = audio_fn(x[audio])
    return out


class DecoderLayer(nn.Module):
    """One transformer layer. ``dual``: audio positions take their own norms and MLP. ``fast_forward``: audio
    positions pass through unchanged and text queries do not see audio keys (spec §2.2)."""

    def __init__(self, cfg: ModelConfig, dual: bool, fast_forward: bool):
        super().__init__()
        self.dual, self.fast_forward = dual, fast_forward
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if dual:
            self.audio_mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
            self.audio_input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.audio_post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, audio: AudioSelect, p: Pass, layer: int) -> torch.Tensor:
        if self.fast_forward:
            if audio is True:
                return x
            keys_audio = audio if p.cache is None else p.cache.audio[:, : p.bias.shape[-1]]
            p = p.with_bias(p.bias.masked_fill(keys_audio[:, None, None, :], -math.inf))
            out = self._text_layer(x, p, layer)
            return out if audio is False else torch.where(audio[..., None], x, out)
        if not self.dual:
            return self._text_layer(x, p, layer)
        h = _by_position(x, audio, self.input_layernorm, self.audio_input_layernorm)
        x = x + self.self_attn(h, p, layer)
        return x + _by_position(
            x,
            audio,
            lambda z: self.mlp(self.post_attention_layernorm(z)),
            lambda z: self.audio_mlp(self.audio_post_attention_layernorm(z)),
        )

    def write_keys_values(self, x, audio: AudioSelect, p: Pass, layer: int) -> None:
        """Only what ``forward`` writes into the cache for x."""
        if self.fast_forward and audio is True:
            return
        if self.fast_forward or not self.dual:
            h = self.input_layernorm(x)
        else:
            h = _by_position(x, audio, self.input_layernorm, self.audio_input_layernorm)
        self.self_attn.write_keys_values(h, p, layer)

    def _text_layer(self, x, p: Pass, layer: int) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), p, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


def fuse_projections(model: nn.Module, join, can_join=None) -> dict[str, tuple[str, ...]]:
    """Replace the projections of each ``Attention`` and ``MLP`` that read the same input (their ``FUSED``) by
    one module, ``join(parts)`` over the separate modules in output order (the outputs concatenate). Returns
    {joined module name: its parts' names}. ``can_join(part names)``: False keeps that group separate."""
    joined = {}
    for owner_name, owner in list(model.named_modules()):
        for fused, parts in getattr(owner, "FUSED", {}).items():
            prefix = f"{owner_name}." if owner_name else ""
            names = tuple(prefix + part for part in parts)
            if can_join is not None and not can_join(names):
                continue
            setattr(owner, fused, join([getattr(owner, part) for part in parts]))
            for part in parts:
                delattr(owner, part)
            joined[prefix + fused] = names
    return joined
