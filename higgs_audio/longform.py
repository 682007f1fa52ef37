"""Long-form generation: speak a transcript chunk by chunk so any length fits the model's context.

Each chunk's prompt is the voice context (system prompt, reference turns) followed by the last
``context_chunks`` generated chunks as user/assistant turns (text, then its audio codes), as the
reference's ``--generation_chunk_buffer_size`` does: the model hears how it has been speaking, so the
voice stays the same across chunks. Unlike the reference, each chunk gets a fresh seed derived from the
run's seed (the reference re-applies one seed to every chunk), and the chunks' codes are decoded as one
stream, so the joins are as smooth as any other frame boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from higgs_audio.api import HiggsAudio
from higgs_audio.engine import Request
from higgs_audio.errors import HiggsAudioError
from higgs_audio.inputs import default_max_audio_seconds
from higgs_audio.messages import AudioContent, Message
from higgs_audio.output import decode
from higgs_audio.prompt import Prompt, Voices, build_context, build_prompt
from higgs_audio.sampling import SamplingParams
from higgs_audio.text import speaker_tags, split_chunks


@dataclass
class ChunkResult:
    text: str
    seed: int | None
    codes: torch.Tensor  # (K, T)
    finish_reason: str
    context_chunks: int  # generated chunks its prompt carried


@dataclass
class LongformResult:
    audio: np.ndarray  # float32 mono
    sample_rate: int
    chunks: list[ChunkResult]
    warnings: list[str] = field(default_factory=list)

    @property
    def codes(self) -> torch.Tensor:
        return torch.cat([c.codes for c in self.chunks], dim=1)


def chunk_seed(seed: int, index: int) -> int:
    """The seed of chunk ``index``: ``seed`` itself for the first chunk (so a one-chunk run equals an
    unchunked one), then well-mixed, distinct seeds derived from (seed, index)."""
    if index == 0:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def prompt_positions(prompt: Prompt, num_codebooks: int) -> int:
    """Positions the prompt takes in the model: each audio block of T frames becomes T + K + 1 delayed
    columns in place of its placeholder, and the forced audio start adds one more."""
    return len(prompt.ids) + sum(a.codes.shape[1] + num_codebooks for a in prompt.audio) + 1


def generate_longform(
    api: HiggsAudio,
    text: str,
    *,
    voices: Voices = None,
    scene: str | None = None,
    system: str | None = None,
    refs_in_system: bool = False,
    chunk_method: str | None = None,
    max_words: int = 200,
    max_turns: int = 1,
    context_chunks: int | None = 2,
    normalize: bool = True,
    seed: int | None = None,
    on_prompt: Callable[[int, str, int | None, Prompt], None] | None = None,
    progress: bool = False,
    **params,
) -> LongformResult:
    """Speak ``text``, split by ``chunk_method`` (see ``text.split_chunks``), with resolved ``voices``
    (``VoiceRef``/``VoiceProfile``, a list or a ``{"SPEAKERi": voice}`` mapping).

    ``context_chunks``: how many previous generated chunks each prompt carries (None: all, as the
    reference's default; 0: none). Older ones are also dropped when a prompt would leave a chunk less
    than ``max_new_tokens`` of the cache. ``on_prompt(index, text, seed, prompt)`` sees each prompt before
    it runs. ``params``: further ``SamplingParams`` fields (temperature, top_k, max_new_tokens, ...).
    """
    if context_chunks is not None and context_chunks < 0:
        raise ValueError("context_chunks must be >= 0 (or None to keep every chunk)")
    tags = speaker_tags(text)  # before normalisation, as the reference: 【SPEAKER0】 is no tag
    pieces = [p for p in split_chunks(text, chunk_method, max_words, max_turns, normalize=normalize) if p.strip()]
    if not pieces:
        raise HiggsAudioError("there is no text to speak")
    context = build_context(voices=voices, scene=scene, system=system, refs_in_system=refs_in_system,
                            speaker_tags=tags)
    done: list[ChunkResult] = []
    notes: list[str] = []
    bar = _progress(len(pieces), progress)
    try:
        for i, piece in enumerate(pieces):
            chunk_seed_i = None if seed is None else chunk_seed(seed, i)
            request, prompt, keep = chunk_request(api, context, done, piece, i, seed=chunk_seed_i,
                                                  context_chunks=context_chunks, **params)
            if on_prompt is not None:
                on_prompt(i, piece, chunk_seed_i, prompt)
            result = api.generate_batch([request], decode=False)[0]
            done.append(ChunkResult(piece, chunk_seed_i, result.codes, result.finish_reason, keep))
            where = f"chunk {i + 1}/{len(pieces)}: " if len(pieces) > 1 else ""
            notes += [where + w for w in result.warnings]
            if result.finish_reason == "length" and result.codes.shape[1]:
                notes.append(where + "stopped at max_new_tokens before the speech ended; raise it or use "
                             "smaller chunks")
            bar.set_postfix_str(f"{sum(c.codes.shape[1] for c in done) / api.codec.frame_rate:.1f} s of audio")
            bar.update()
    finally:
        bar.close()
    codes = torch.cat([c.codes for c in done], dim=1)  # one stream: the joins are as smooth as any frame boundary
    return LongformResult(decode(api.codec, codes), api.sample_rate, done, notes)


def chunk_request(api: HiggsAudio, context: list[Message], done: Sequence[ChunkResult], text: str, index: int, *,
                  seed: int | None = None, context_chunks: int | None = 2, **params) -> tuple[Request, Prompt, int]:
    """The engine request for chunk ``index`` (``text``, with its own ``seed``) after the ``done`` chunks:
    the voice ``context``, then the last ``context_chunks`` chunks (None: all), fewer when
    they would leave less than ``max_new_tokens`` of the cache. Returns (request, its prompt, chunks it
    carries)."""
    # A chunk that generated no audio stays too (an empty audio turn), as in the reference.
    keep = len(done) if context_chunks is None else min(context_chunks, len(done))
    budget = params.get("max_new_tokens", SamplingParams.max_new_tokens)
    prompt, keep = _fit(api, context, done[len(done) - keep:], text, budget, index)
    sampling = SamplingParams(**{"max_audio_seconds": default_max_audio_seconds(text), **params, "seed": seed})
    return Request(prompt.ids, [a.codes for a in prompt.audio], sampling), prompt, keep


def _fit(api: HiggsAudio, context: list[Message], kept: Sequence[ChunkResult], text: str, budget: int,
         index: int) -> tuple[Prompt, int]:
    """The chunk's prompt with as many of the ``kept`` chunks (newest last) as leave ``budget`` positions
    free in the cache; returns it with the number of chunks it carries."""
    k, max_len = api.model.cfg.num_codebooks, api.decoder.max_len
    for start in range(len(kept) + 1):
        history = [m for c in kept[start:] for m in (Message("user", c.text),
                                                      Message("assistant", AudioContent(codes=c.codes)))]
        prompt = build_prompt([*context, *history, Message("user", text)], api.tokenizer,
                              add_generation_prompt=True, force_audio=True)
        used = prompt_positions(prompt, k)
        if used + budget <= max_len:
            return prompt, len(kept) - start
    if used + 1 > max_len:
        raise HiggsAudioError(
            f"chunk {index + 1}'s prompt needs {used} positions but the model's cache holds {max_len}: "
            "use shorter reference clips or smaller chunks, or raise the cache length (max_len, --max-len)"
        )
    return prompt, 0  # fits, with less room to generate than asked for


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="chunk", desc="speaking", disable=not enabled, leave=False, dynamic_ncols=True)
