"""What a generation takes in: voices (library names, clips, profiles), reference audio and text or messages
become the engine's ``Request``. ``HiggsAudio`` builds its requests with these methods."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from higgs_audio.engine import Request
from higgs_audio.errors import AudioInputError
from higgs_audio.messages import AudioContent, ChatMLSample, Message, TextContent, coerce_messages
from higgs_audio.prompt import build_messages, build_prompt
from higgs_audio.sampling import SamplingParams
from higgs_audio.text import normalize_transcript, speaker_tags
from higgs_audio.voices import Clip, VoiceProfile, VoiceRef, resolve_voice


def default_max_audio_seconds(text: str) -> float:
    """Runaway guard for one audio segment: generous for normal speech (~15 characters/s), 4x slower plus 10 s."""
    return 10.0 + len(text) / 4.0


class RequestBuilder:
    """The request-building part of ``HiggsAudio``: it reads ``model``, ``tokenizer``, ``codec``, ``decoder``
    and ``voice_library``."""

    @property
    def max_reference_seconds(self) -> float:
        """The longest reference audio a prompt can hold: a clip of T frames takes T + K + 1 positions of the
        cache (or of the model's positions, if fewer), and at least one position is left to generate."""
        positions = min(self.decoder.max_len, self.model.cfg.max_position_embeddings)
        return (positions - self.model.cfg.num_codebooks - 2) / self.codec.frame_rate

    def voice(self, spec, transcript: str | None = None) -> VoiceRef | VoiceProfile:
        """A voice from a VoiceRef/VoiceProfile, ``"profile:description"``, an audio path (transcript from
        ``transcript`` or a sidecar ``.txt``), ``(array, sample_rate)``, or a voice-library name (see
        ``voices.resolve_voice``)."""
        found = resolve_voice(spec, self.voice_library, transcript)
        if not isinstance(found, Clip):
            return found
        audio = found.audio
        if isinstance(audio, tuple):
            audio = AudioContent(array=np.asarray(audio[0], dtype=np.float32), sample_rate=int(audio[1]))
        elif self.voice_library is not None:  # through its cache: a file is encoded once per codec
            return self.voice_library.load(found, self.codec, self.max_reference_seconds)
        return VoiceRef(self.encode_audio(audio), found.transcript)

    def encode_audio(self, source, max_seconds: float | None = None) -> torch.Tensor:
        """Audio (path, bytes, base64 string of a file, AudioContent) -> codes (K, T).

        A clip longer than ``max_seconds`` (default and ceiling: ``max_reference_seconds``) raises
        ``AudioTooLongError``, a ``ValueError``, before it is decoded where the file's header gives its length.
        """
        from higgs_audio.audio import read_audio, read_audio_base64

        limit = self.max_reference_seconds if max_seconds is None else min(max_seconds, self.max_reference_seconds)
        if isinstance(source, AudioContent):
            kind = source.source
            if kind is None:
                raise AudioInputError("an audio content has no audio: give codes, array, data, raw_audio or audio_url")
            if kind == "codes":
                return source.codes
            if kind == "array":
                wave = source.array.numpy() if isinstance(source.array, torch.Tensor) else source.array
                wave, rate = read_audio(np.asarray(wave, dtype=np.float32), source.sample_rate, mono=False,
                                        max_seconds=limit)
                return self.codec.encode(wave, rate)
            if kind == "raw_audio":
                wave, rate = read_audio_base64(source.raw_audio, max_seconds=limit)
                return self.codec.encode(wave, rate)
            source = source.data if kind == "data" else source.audio_url
        wave, rate = read_audio(source, max_seconds=limit)
        return self.codec.encode(wave, rate)

    def request(
        self,
        text: str | None = None,
        *,
        messages: ChatMLSample | Sequence[Message | dict] | None = None,
        voice=None,
        voice_text: str | None = None,
        scene: str | None = None,
        system: str | None = None,
        refs_in_system: bool = False,
        normalize: bool = True,
        force_audio: bool = True,
        **params,
    ) -> Request:
        """Build the engine request for ``generate``/``stream`` (same arguments)."""
        if (text is None) == (messages is None):
            raise ValueError("give either text or messages")
        if messages is None:
            tags = speaker_tags(text)  # before normalisation, as the reference: 【SPEAKER0】 is no tag
            if normalize:
                text = normalize_transcript(text)
            voices = self._voices(voice, voice_text)
            messages = build_messages(text, voices=voices, scene=scene, system=system, refs_in_system=refs_in_system,
                                      speaker_tags=tags)
            spoken = text
        else:
            messages = coerce_messages(messages)
            spoken = " ".join(_texts(messages[-1]))
        budget = self.max_reference_seconds  # for all the clips together: one prompt holds them all
        for m in messages:
            for c in m.contents():
                if isinstance(c, AudioContent) and c.codes is None:
                    c.codes = self.encode_audio(c, max_seconds=max(budget, 0.0))
                if isinstance(c, AudioContent):
                    budget -= c.codes.shape[1] / self.codec.frame_rate
        prompt = build_prompt(messages, self.tokenizer, add_generation_prompt=True, force_audio=force_audio)
        params.setdefault("max_audio_seconds", default_max_audio_seconds(spoken))
        return Request(prompt.ids, [a.codes for a in prompt.audio], SamplingParams(**params))

    def _voices(self, voice, voice_text):
        if voice is None:
            return None
        if isinstance(voice, dict):
            return {tag: self.voice(v) for tag, v in voice.items()}
        if isinstance(voice, (list, tuple)) and not (len(voice) == 2 and isinstance(voice[1], int)):
            return [None if v is None else self.voice(v) for v in voice]
        return self.voice(voice, voice_text)


def _texts(message: Message) -> list[str]:
    return [c.text for c in message.contents() if isinstance(c, TextContent)]
