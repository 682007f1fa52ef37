"""What a generation gives back: ``GenerationResult``, made from a request's ``Stream`` record once it ended."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from higgs_audio import output
from higgs_audio.codec import AudioCodec
from higgs_audio.engine import Stream
from higgs_audio.text_tokenizer import TextTokenizer


@dataclass
class GenerationResult:
    audio: np.ndarray  # float32 mono
    sample_rate: int
    codes: torch.Tensor  # (K, T) audio codes of every generated segment, joined
    text: str  # text the model generated besides audio (special tokens removed)
    text_ids: list[int]  # the generated text tokens, special ones included (<|audio_eos|> after each audio segment)
    finish_reason: str  # stop | length | max_audio | no_text_head
    usage: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


def make_result(stream: Stream, codec: AudioCodec, tokenizer: TextTokenizer, decode: bool = True
                ) -> GenerationResult:
    """The result of a stream that ended (``decode=False``: the codes without audio)."""
    codes = output.stack_frames(stream.frames, codec.num_codebooks)
    notes = []
    if codes.shape[1]:
        audio = output.decode(codec, codes) if decode else np.zeros(0, np.float32)
    else:
        audio = np.zeros(0, dtype=np.float32)
        notes.append("no audio generated: the model produced only text" if stream.text_ids
                     else "no audio generated")
        warnings.warn(notes[-1], stacklevel=3)
    if stream.reason == "max_audio":
        notes.append(
            f"audio reached the {stream.request.params.max_audio_seconds:.1f} s guard without ending and was cut"
        )
    end = stream.t_end or time.perf_counter()
    return GenerationResult(
        audio=audio,
        sample_rate=codec.sample_rate,
        codes=codes,
        text=tokenizer.decode(stream.text_ids, skip_special_tokens=True),
        text_ids=list(stream.text_ids),
        finish_reason=stream.reason,
        usage={
            "prompt_tokens": stream.prompt_len,
            "completion_tokens": stream.steps,
            "audio_frames": codes.shape[1],
            "audio_seconds": codes.shape[1] / codec.frame_rate,
        },
        timings={
            "prefill_s": stream.t_prefill - stream.t0,
            "first_audio_s": None if stream.t_first is None else stream.t_first - stream.t0,
            "total_s": end - stream.t0,
        },
        warnings=notes,
    )
