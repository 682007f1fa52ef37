"""The Python API: ``HiggsAudio.from_pretrained(...)`` then ``generate`` / ``stream`` / ``generate_batch``."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from higgs_audio import output
from higgs_audio.cache import fingerprint
from higgs_audio.checkpoint import load_model
from higgs_audio.config import DEFAULT_CODEC, DEFAULT_MODEL
from higgs_audio.engine import FRAME_RATE, BatchDecoder, Request, Stream
from higgs_audio.errors import AudioInputError
from higgs_audio.messages import AudioContent, ChatMLSample, Message, coerce_messages
from higgs_audio.prompt import build_messages, build_prompt
from higgs_audio.runner import Runner
from higgs_audio.sampling import SamplingParams
from higgs_audio.text import normalize_transcript, speaker_tags
from higgs_audio.text_tokenizer import TextTokenizer
from higgs_audio.voices import Clip, VoiceProfile, VoiceRef, resolve_voice


def default_max_audio_seconds(text: str) -> float:
    """Runaway guard for one audio segment: generous for normal speech (~15 characters/s), 4x slower plus 10 s."""
    return 10.0 + len(text) / 4.0


@dataclass
class GenerationResult:
    audio: np.ndarray  # float32 mono
    sample_rate: int
    codes: torch.Tensor  # (K, T) audio codes of every generated segment, joined
    text: str  # text the model generated besides audio (special tokens removed)
    text_ids: list[int]  # the generated text tokens, special ones included
    finish_reason: str  # stop | length | max_audio | no_text_head
    usage: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


class HiggsAudio:
    """Text (and optional reference voices, scene, system prompt) in, speech out."""

    def __init__(
        self, model, tokenizer: TextTokenizer, codec, *, max_batch: int = 1, max_len: int = 4096, compile: bool = False,
        prefill_chunk: int | None = None, prefix_cache_mb: float = 512, prefix_cache_dir: str | Path | None = None,
    ):
        self.model, self.tokenizer, self.codec = model, tokenizer, codec
        self.decoder = BatchDecoder(model, tokenizer, max_batch=max_batch, max_len=max_len, compile=compile,
                                    prefill_chunk=prefill_chunk, prefix_cache_mb=prefix_cache_mb,
                                    prefix_cache_dir=prefix_cache_dir)
        self.runner = Runner(self.decoder)  # the server's scheduler drives it too, from its thread
        self.voice_library = None  # set to a voices.VoiceLibrary to resolve voices by name
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = DEFAULT_MODEL,
        codec: str | Path = DEFAULT_CODEC,
        *,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        quantize: str | None = None,
        max_batch: int = 1,
        max_len: int = 4096,
        compile: bool = False,
        prefill_chunk: int | None = None,
        prefix_cache_mb: float = 512,
        prefix_cache_dir: str | Path | None = None,
        progress: bool = False,
        adapter: str | Path | None = None,
    ) -> HiggsAudio:
        """Load the generation model and the audio codec (hub ids or local directories).

        ``dtype`` is the compute dtype (``auto``: bf16 on GPUs; on CPUs bf16 weights with fp32 compute);
        ``quantize="int8"`` (CPU and CUDA) or ``"int4"`` stores the linear weights quantized;
        ``compile=True`` replays the decode step from CUDA graphs (CUDA only; elsewhere it is ignored);
        ``prefill_chunk=N`` prefills a request joining a running batch N positions per step, so the streams
        already decoding pause for one chunk at a time rather than for its whole prompt;
        ``prefix_cache_mb`` keeps the keys and values of past prompts, so that a request starting the same
        way (the same voice and reference clip) prefills only what differs (0: off); ``prefix_cache_dir``
        also keeps them on disk there (in a subfolder per checkpoint and settings), so that a later process
        starts a known voice without prefilling it; ``progress`` shows a bar on standard error while
        quantizing at load; ``adapter`` names a LoRA adapter folder (``higgs-audio finetune``) merged into the
        weights as they load.
        """
        from higgs_audio.codec.codec import AudioCodec

        net, _, directory = load_model(model, device=device, dtype=dtype, quantize=quantize, progress=progress,
                                       adapter=adapter)
        device = next(net.parameters()).device
        if prefix_cache_dir is not None:  # keys and values depend on the weights, dtypes, device and kernels
            options = (str(net.compute_dtype), str(next(net.parameters()).dtype), quantize, device.type,
                       adapter and fingerprint(Path(adapter).expanduser()))  # a retrained adapter changes it
            if device.type == "cpu":
                from higgs_audio.model import cpu_kernels

                options += (cpu_kernels.version(),)
            prefix_cache_dir = Path(prefix_cache_dir).expanduser() / fingerprint(directory, *options)
        return cls(
            net,
            TextTokenizer(directory),
            AudioCodec.from_pretrained(codec, device=device),
            max_batch=max_batch,
            max_len=max_len,
            compile=compile,
            prefill_chunk=prefill_chunk,
            prefix_cache_mb=prefix_cache_mb,
            prefix_cache_dir=prefix_cache_dir,
        )

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def max_reference_seconds(self) -> float:
        """The longest reference audio a prompt can hold: a clip of T frames takes T + K + 1 positions of the
        cache (or of the model's positions, if fewer), and at least one position is left to generate."""
        positions = min(self.decoder.max_len, self.model.cfg.max_position_embeddings)
        return (positions - self.model.cfg.num_codebooks - 2) / self.codec.frame_rate

    # -- building requests ----------------------------------------------------------------------

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

    # -- running --------------------------------------------------------------------------------

    def generate(self, text: str | None = None, **kwargs) -> GenerationResult:
        """Speak ``text`` (or continue ``messages=``); see ``request`` for the options and
        ``SamplingParams`` for temperature, top_k, top_p, seed, max_new_tokens, ras_window, ..."""
        return self.generate_batch([self.request(text, **kwargs)])[0]

    def generate_batch(self, requests: Sequence[Request | dict], *, decode: bool = True) -> list[GenerationResult]:
        """Generate several requests, decoding up to ``max_batch`` of them together. With ``decode=False``
        the codes are not turned into audio (``audio`` is empty), for callers that decode them together."""
        streams = [Stream(r if isinstance(r, Request) else self.request(**r)) for r in requests]
        with self._lock:
            pending = list(streams)
            try:
                while pending or self.runner.live:
                    while pending and self.runner.free_slots():
                        self.runner.admit(pending.pop(0))
                    self.runner.step()
            finally:
                for s in streams:
                    self.runner.end(s, "cancelled")  # after an error: free the slots of the others
        failed = next((s.error for s in streams if s.error is not None), None)
        if failed is not None:
            raise failed
        return [self.result(s, decode) for s in streams]

    def stream(self, text: str | None = None, *, chunk_frames: int = 10, **kwargs) -> Iterator[np.ndarray]:
        """Yield float32 audio chunks as soon as they can be decoded; the first one once the first frames
        clear the delay pattern and the codec's look-ahead, later ones every ``chunk_frames`` frames."""
        stream = Stream(self.request(text, **kwargs))
        audio = output.ChunkedAudio(self.codec, chunk_frames)
        with self._lock:
            self.runner.admit(stream)
            try:
                while stream.t_end is None:
                    for update in self.runner.step():
                        chunk = audio.push(update.frames, update.ended) if update.stream is stream else []
                        if len(chunk):
                            yield chunk
            finally:
                self.runner.end(stream, "cancelled")
        if stream.error is not None:
            raise stream.error
        tail = audio.flush()
        if len(tail):
            yield tail

    def result(self, stream: Stream, decode: bool = True) -> GenerationResult:
        """The result of a stream that ended (``decode=False``: without audio)."""
        codes = output.stack_frames(stream.frames, self.model.cfg.num_codebooks)
        notes = []
        if codes.shape[1]:
            audio = output.decode(self.codec, codes) if decode else np.zeros(0, np.float32)
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
            sample_rate=self.sample_rate,
            codes=codes,
            text=self.tokenizer.decode(stream.text_ids, skip_special_tokens=True),
            text_ids=list(stream.text_ids),
            finish_reason=stream.reason,
            usage={
                "prompt_tokens": stream.prompt_len,
                "completion_tokens": stream.steps,
                "audio_frames": codes.shape[1],
                "audio_seconds": codes.shape[1] / FRAME_RATE,
            },
            timings={
                "prefill_s": stream.t_prefill - stream.t0,
                "first_audio_s": None if stream.t_first is None else stream.t_first - stream.t0,
                "total_s": end - stream.t0,
            },
            warnings=notes,
        )

    async def astream(self, text: str | None = None, **kwargs) -> AsyncIterator[np.ndarray]:
        """``stream`` as an async iterator (generation runs in a worker thread)."""
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        end = object()

        def work():
            try:
                for chunk in self.stream(text, **kwargs):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except BaseException as e:  # re-raised in the consumer
                loop.call_soon_threadsafe(queue.put_nowait, e)
            loop.call_soon_threadsafe(queue.put_nowait, end)

        threading.Thread(target=work, daemon=True).start()
        while (item := await queue.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item


def _texts(message: Message) -> list[str]:
    from higgs_audio.messages import TextContent

    return [c.text for c in message.contents() if isinstance(c, TextContent)]
