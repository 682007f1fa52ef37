"""The Higgs Audio V2 network: text and audio embeddings, DualFFN layers, final norm, text and audio heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from higgs_audio.config import ModelConfig
from higgs_audio.model.transformer import (
    AudioSelect,
    DecoderLayer,
    KVCache,
    Pass,
    RMSNorm,
    attention_bias,
    rope_cos_sin,
    rope_inv_freq,
)


@dataclass
class MergedInput:
    """A prompt with every audio placeholder replaced by its block of delayed code frames (spec §2.1)."""

    ids: torch.Tensor  # (L,) text ids; audio positions keep their placeholder id
    codes: torch.Tensor  # (L, K) audio codes; zeros at text positions
    audio: torch.Tensor  # (L,) bool: position takes the audio path
    audio_out: torch.Tensor  # (L,) bool: position holds audio-out codes (gets audio logits)


def merge_placeholders(
    ids: list[int], blocks: list[torch.Tensor], audio_in_id: int, audio_out_id: int, num_codebooks: int
) -> MergedInput:
    """Expand each ``<|AUDIO|>`` / ``<|AUDIO_OUT|>`` in ``ids`` into its (K, N) block, in order of appearance."""
    slots = [i for i, t in enumerate(ids) if t in (audio_in_id, audio_out_id)]
    if len(slots) != len(blocks):
        raise ValueError(f"prompt has {len(slots)} audio placeholders but {len(blocks)} audio blocks were given")
    pieces_ids, pieces_codes, pieces_audio, pieces_out = [], [], [], []
    start = 0
    for slot, block in zip(slots, blocks):
        if block.dim() != 2 or block.shape[0] != num_codebooks:
            raise ValueError(f"audio block must have shape ({num_codebooks}, N), got {tuple(block.shape)}")
        text = torch.tensor(ids[start:slot], dtype=torch.long)
        n = block.shape[1]
        pieces_ids += [text, torch.full((n,), ids[slot], dtype=torch.long)]
        pieces_codes += [torch.zeros(len(text), num_codebooks, dtype=torch.long), block.t().long().cpu()]
        pieces_audio += [torch.zeros(len(text), dtype=torch.bool), torch.ones(n, dtype=torch.bool)]
        is_out = ids[slot] == audio_out_id
        pieces_out += [torch.zeros(len(text), dtype=torch.bool), torch.full((n,), is_out, dtype=torch.bool)]
        start = slot + 1
    tail = torch.tensor(ids[start:], dtype=torch.long)
    pieces_ids.append(tail)
    pieces_codes.append(torch.zeros(len(tail), num_codebooks, dtype=torch.long))
    pieces_audio.append(torch.zeros(len(tail), dtype=torch.bool))
    pieces_out.append(torch.zeros(len(tail), dtype=torch.bool))
    return MergedInput(torch.cat(pieces_ids), torch.cat(pieces_codes), torch.cat(pieces_audio), torch.cat(pieces_out))


PREFILL_ROWS = 16  # passes of more positions are compute bound (prefill), fewer bandwidth bound (decode)


def _uninitialized_embedding(rows: int, dim: int) -> nn.Embedding:
    # Weights always come from a checkpoint. Skipping the random init also avoids torch's slow first use of
    # normal_ on the meta device (it imports the compiler stack: about 1 s at every start of the CLI).
    return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))


class HiggsAudioModel(nn.Module):
    """A stateless function of (inputs, cache): the caller owns the KV cache and all generation state.

    Built by ``checkpoint.load_model``: weights come from a checkpoint, derived buffers from ``reset_buffers``.
    """

    def __init__(self, cfg: ModelConfig, text_head: bool = True):
        super().__init__()
        self.cfg = cfg
        self.compute_dtype: torch.dtype | None = None  # activations' dtype when weights are stored smaller
        # Passes of more than PREFILL_ROWS positions run in this dtype end to end (residual stream, norms,
        # attention), keys and values stored in the cache's: on a CPU with native bf16 (``load_model``).
        self.prefill_dtype: torch.dtype | None = None
        h, k = cfg.hidden_size, cfg.num_codebooks
        self.embed_tokens = _uninitialized_embedding(cfg.vocab_size, h)
        self.audio_codebook_embeddings = _uninitialized_embedding(k * cfg.audio_vocab_size, h)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, dual=cfg.is_dual_ffn(i), fast_forward=cfg.is_fast_forward(i))
            for i in range(cfg.num_layers)
        )
        self.norm = RMSNorm(h, cfg.rms_norm_eps)
        self.text_head = nn.Linear(h, cfg.vocab_size, bias=False) if text_head else None
        self.audio_head = nn.Linear(h, k * cfg.audio_vocab_size, bias=False)

    def reset_buffers(self, device=None) -> None:
        """Compute the derived, non-checkpoint buffers on ``device``. ``load_model`` calls this once the
        weights are in place (the model is built on the meta device, where computing them is slow)."""
        cfg = self.cfg
        self.register_buffer("inv_freq", rope_inv_freq(cfg).to(device), persistent=False)
        offsets = torch.arange(cfg.num_codebooks, device=device) * cfg.audio_vocab_size
        self.register_buffer("codebook_offsets", offsets, persistent=False)

    def embed_audio(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., K) codes -> (..., H): the sum of one row per codebook, row ``k * (C + 2) + code``."""
        return self.audio_codebook_embeddings(codes + self.codebook_offsets).sum(-2)

    def embed(self, ids: torch.Tensor, codes: torch.Tensor | None, audio: AudioSelect) -> torch.Tensor:
        """Input embeddings (B, L, H) for text ids (B, L) and audio codes (B, L, K) at the audio positions."""
        dtype = self.compute_dtype or self.embed_tokens.weight.dtype
        if audio is True:
            return self.embed_audio(codes).to(dtype)
        x = self.embed_tokens(ids).to(dtype)
        if audio is False:
            return x
        if ids.shape[1] == 1:  # decode step: static shapes
            return torch.where(audio[..., None], self.embed_audio(codes).to(dtype), x)
        x[audio] = self.embed_audio(codes[audio]).to(dtype)
        return x

    def forward(
        self,
        x: torch.Tensor,
        audio: AudioSelect,
        positions: torch.Tensor,
        cache: KVCache | None,
        kv_len: int,
        keys_values_only: bool = False,
    ) -> torch.Tensor | None:
        """Run the layers over embeddings x (B, L, H) at ``positions`` (B, L), writing K/V into ``cache``.

        Only the first ``kv_len`` cache slots are attended (all positions must be < kv_len). Without a cache
        (training) x is a whole sequence, positions are its indices and kv_len its length.
        Returns the final-normed hidden states (B, L, H); with ``keys_values_only`` (a prompt's prefill, whose
        hidden states nothing reads) None, and the last layer stops at its keys and values (3 % of the work).
        """
        dtype = x.dtype
        if self.prefill_dtype is not None and x.shape[0] * x.shape[1] > PREFILL_ROWS:
            x = x.to(self.prefill_dtype)
        cos, sin = rope_cos_sin(self.inv_freq, positions, x.dtype)
        p = Pass.over(self.cfg, cos, sin, attention_bias(positions, kv_len, x.dtype), positions, cache)
        if cache is not None:
            cache.mark_audio(positions, audio)
        *layers, last = self.layers
        for i, layer in enumerate(layers):
            x = layer(x, audio, p, i)
        if keys_values_only:
            last.write_keys_values(x, audio, p, len(layers))
            return None
        return self.norm(last(x, audio, p, len(layers))).to(dtype)

    def text_logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.text_head is None:
            raise RuntimeError("this checkpoint has no text head (text_lm_head.weight); text cannot be generated")
        return self.text_head(h).float()

    def audio_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., K, C + 2) fp32 logits per codebook."""
        return self.audio_head(h).float().unflatten(-1, (self.cfg.num_codebooks, self.cfg.audio_vocab_size))
