"""Drop-in for the reference's ``boson_multimodal.serve.serve_engine``: change one import and keep your code.

    from higgs_audio.serve_engine import HiggsAudioServeEngine, ChatMLSample, Message, AudioContent

Differences, on purpose: the device defaults to ``auto`` instead of ``cuda``; audio in user/system turns is
used instead of silently dropped (spec §10.8); ``generated_audio_tokens`` holds the decodable codes of every
segment rather than the first segment's raw delayed columns (which also made the reference raise when no
audio was produced).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from higgs_audio.api import HiggsAudio
from higgs_audio.config import DEFAULT_CODEC, DEFAULT_MODEL
from higgs_audio.messages import AudioContent, ChatMLSample, Message, TextContent

__all__ = ["AudioContent", "ChatMLSample", "HiggsAudioResponse", "HiggsAudioServeEngine", "Message", "TextContent"]

REFERENCE_STOPS = ("<|end_of_text|>", "<|eot_id|>")


@dataclass
class HiggsAudioResponse:
    audio: np.ndarray | None = None
    generated_audio_tokens: np.ndarray | None = None
    sampling_rate: int = 24000
    generated_text: str = ""
    generated_text_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    usage: dict | None = None


class HiggsAudioServeEngine:
    def __init__(
        self,
        model_name_or_path: str = DEFAULT_MODEL,
        audio_tokenizer_name_or_path: str = DEFAULT_CODEC,
        tokenizer_name_or_path: str | None = None,
        device: str = "auto",
        torch_dtype="auto",
        kv_cache_lengths: list[int] = (1024, 4096, 8192),
    ):
        if tokenizer_name_or_path is not None:
            raise ValueError("a separate text tokenizer is not supported: the model checkpoint's own is used")
        self.api = HiggsAudio.from_pretrained(
            model_name_or_path, audio_tokenizer_name_or_path, device=device, dtype=torch_dtype,
            max_len=max(kv_cache_lengths),
        )

    def generate(
        self,
        chat_ml_sample: ChatMLSample | dict | None = None,
        max_new_tokens: int = 2048,
        temperature: float = 0.7,
        top_k: int | None = None,
        top_p: float = 0.95,
        stop_strings: list[str] | None = None,
        force_audio_gen: bool = False,
        ras_win_len: int | None = 7,
        ras_win_max_num_repeat: int = 2,
        seed: int | None = None,
        *,
        content: str | None = None,
    ) -> HiggsAudioResponse:
        """As the reference; ``content="text"`` is the short form (default voice, audio forced)."""
        params = dict(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            stop=tuple(s for s in (stop_strings or ()) if s not in REFERENCE_STOPS),
            ras_window=max(ras_win_len or 0, 0),
            ras_max_repeat=ras_win_max_num_repeat,
            seed=seed,
        )
        if (chat_ml_sample is None) == (content is None):
            raise ValueError("give either chat_ml_sample or content")
        if content is not None:
            result = self.api.generate(content, **params)
        else:
            result = self.api.generate(messages=chat_ml_sample, force_audio=force_audio_gen, **params)
        tokens = np.asarray(result.text_ids, dtype=np.int64)
        prompt = result.usage["prompt_tokens"]
        completion = result.usage["completion_tokens"]
        return HiggsAudioResponse(
            audio=result.audio if len(result.audio) else None,
            generated_audio_tokens=result.codes.numpy() if result.codes.shape[1] else None,
            sampling_rate=result.sample_rate,
            generated_text=self.api.tokenizer.decode(result.text_ids),
            generated_text_tokens=tokens,
            usage={
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "cached_tokens": 0,
            },
        )
