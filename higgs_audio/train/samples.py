"""Training samples laid out exactly as inference prompts, with their labels, and batches of them.

A sample is the prompt ``build_messages`` + ``build_prompt`` make for speaking its text (system prompt with the
scene, an optional reference clip as a cloning turn, the user text), followed by the assistant turn holding the
target clip: ``<|audio_out_bos|>``, the clip's delayed block, ``<|audio_eos|><|eot_id|>``. Inference stops at the
``<|audio_out_bos|>`` and generates that block.

Labels sit at the position they name (unshifted, as the transformers port takes them); the loss predicts
position t + 1 from position t. Two policies:

- ``target`` (default): what the model must produce at inference. The target block's codes and the stream eos
  of codebook 0 (the stop signal it samples; the engine forces every other bos and eos of the delay pattern),
  and any text of the target assistant turn. Prompt text, reference clips and padding carry -100.
- ``all``: the port processor's ``output_labels=True`` policy. Every text token except ``<|AUDIO_OUT|>``
  placeholders, padding and ``<|audio_out_bos|>``; as in the port's layout, the last K - 1 positions of each
  audio-out clip hold the delay token ``<|reserved_special_token_6|>`` and carry it as a text label. Every audio
  code of every clip (references included) except stream bos and eos.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from higgs_audio.config import ModelConfig
from higgs_audio.delay import add_delay_pattern
from higgs_audio.messages import AudioContent, Message
from higgs_audio.model.higgs import merge_placeholders
from higgs_audio.prompt import Tokenizer, build_messages, build_prompt
from higgs_audio.text import normalize_transcript, speaker_tags
from higgs_audio.text_tokenizer import SpecialTokens
from higgs_audio.voices import VoiceRef

POLICIES = ("target", "all")
IGNORE = -100
DELAY_TOKEN = "<|reserved_special_token_6|>"  # the port's name for the last K - 1 placeholders of a clip


@dataclass
class Sample:
    ids: torch.Tensor  # (L,) text ids; audio positions keep their placeholder id
    codes: torch.Tensor  # (L, K) delayed audio codes; zeros at text positions
    audio: torch.Tensor  # (L,) bool: the position takes the audio path
    text_labels: torch.Tensor  # (L,)
    audio_labels: torch.Tensor  # (L, K)

    def __len__(self) -> int:
        return len(self.ids)


def sample_messages(text: str, target: torch.Tensor, *, reference: VoiceRef | None = None,
                    scene: str | None = None, normalize: bool = True) -> list[Message]:
    """The messages ``HiggsAudio.generate`` builds to speak ``text`` (optionally cloning ``reference``): speaker
    tags read before normalising, as there, then the target clip as the assistant's answer."""
    tags = speaker_tags(text)
    if normalize:
        text = normalize_transcript(text)
    messages = build_messages(text, voices=reference, scene=scene, speaker_tags=tags)
    return [*messages, Message("assistant", AudioContent(codes=target))]


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D bool tensor."""
    edges = torch.diff(mask.int(), prepend=mask.new_zeros(1).int(), append=mask.new_zeros(1).int())
    return list(zip(torch.nonzero(edges == 1).flatten().tolist(), torch.nonzero(edges == -1).flatten().tolist()))


def build_sample(messages: list[Message], tokenizer: Tokenizer, cfg: ModelConfig, policy: str = "target") -> Sample:
    """Token ids, delayed codes and labels of ``messages``, whose last message is the target assistant clip."""
    if policy not in POLICIES:
        raise ValueError(f"label policy must be one of {POLICIES}, got {policy!r}")
    last = messages[-1]
    if last.role != "assistant" or not any(isinstance(c, AudioContent) for c in last.contents()):
        raise ValueError("a training sample must end with an assistant message holding the target audio")
    prompt = build_prompt(messages, tokenizer, add_generation_prompt=False)
    k, bos, eos = cfg.num_codebooks, cfg.audio_stream_bos_id, cfg.audio_stream_eos_id
    blocks = [add_delay_pattern(a.codes[:k].long().cpu(), bos, eos) for a in prompt.audio]
    special = SpecialTokens.of(tokenizer)
    merged = merge_placeholders(prompt.ids, blocks, special.audio_in, special.audio_out, k)
    spans = _runs(merged.audio)  # one run per clip: clips are always framed by text tokens
    text_labels = torch.full_like(merged.ids, IGNORE)
    audio_labels = torch.full_like(merged.codes, IGNORE)

    if policy == "all":
        keep = ~merged.audio & (merged.ids != special.audio_out_bos)
        text_labels[keep] = merged.ids[keep]
        delay = tokenizer.token_id(DELAY_TOKEN)
        for (start, end), clip in zip(spans, prompt.audio):
            if clip.is_output:
                text_labels[end - (k - 1) : end] = delay
        real = merged.audio[:, None] & (merged.codes != bos) & (merged.codes != eos)
        audio_labels[real] = merged.codes[real]
    else:
        start, end = spans[-1]
        block = merged.codes[start:end]
        real = (block != bos) & (block != eos)
        audio_labels[start:end][real] = block[real]
        frames = end - start - k - 1  # the clip's frames: the block is [bos | codes | eos] delayed over K rows
        audio_labels[start + frames + 1, 0] = eos
        # Text of the target turn: everything after its header that is not audio or the turn's framing tokens.
        head = len(build_prompt(messages[:-1], tokenizer, add_generation_prompt=True).ids)
        framing = {tokenizer.token_id(t) for t in ("<|audio_out_bos|>", "<|audio_eos|>", "<|eot_id|>", "<|eom_id|>")}
        ids = merged.ids
        offset = sum(e - s - 1 for s, e in spans[:-1])  # each earlier clip's placeholder became e - s positions
        for pos in range(head + offset, len(ids)):
            if not merged.audio[pos] and int(ids[pos]) not in framing:
                text_labels[pos] = ids[pos]
    return Sample(merged.ids, merged.codes, merged.audio, text_labels, audio_labels)


@dataclass
class Batch:
    """Right-padded samples: padding is text id 0 with no labels, and sits after every real position, which
    causal attention keeps invisible to them."""

    ids: torch.Tensor  # (B, L)
    codes: torch.Tensor  # (B, L, K)
    audio: torch.Tensor  # (B, L)
    text_labels: torch.Tensor  # (B, L)
    audio_labels: torch.Tensor  # (B, L, K)

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) for t in (self.ids, self.codes, self.audio, self.text_labels, self.audio_labels)))


def collate(samples: list[Sample]) -> Batch:
    n = max(len(s) for s in samples)

    def pad(t: torch.Tensor, value) -> torch.Tensor:
        extra = n - len(t)
        return torch.cat([t, t.new_full((extra, *t.shape[1:]), value)]) if extra else t

    return Batch(
        torch.stack([pad(s.ids, 0) for s in samples]),
        torch.stack([pad(s.codes, 0) for s in samples]),
        torch.stack([pad(s.audio, False) for s in samples]),
        torch.stack([pad(s.text_labels, IGNORE) for s in samples]),
        torch.stack([pad(s.audio_labels, IGNORE) for s in samples]),
    )


def pack(lengths: list[int], max_positions: int) -> list[list[int]]:
    """Group indices into micro-batches whose padded size (count x longest) stays within ``max_positions``,
    longest first, so that clips of similar length share a batch. A clip longer than the budget goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[groups[-1][0]] * (len(groups[-1]) + 1) <= max_positions:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
