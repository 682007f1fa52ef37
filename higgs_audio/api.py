"""The Python API: ``HiggsAudio.from_pretrained(...)`` then ``generate`` / ``stream`` / ``generate_batch``.

Loading and running live here; building requests (voices, reference audio, prompts) in ``inputs.py``, results
in ``results.py``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from higgs_audio import output
from higgs_audio.cache import fingerprint
from higgs_audio.checkpoint import load_model
from higgs_audio.config import DEFAULT_CODEC, DEFAULT_MODEL
from higgs_audio.engine import BatchDecoder, Request, Stream
from higgs_audio.inputs import RequestBuilder
from higgs_audio.results import GenerationResult, make_result
from higgs_audio.runner import Runner
from higgs_audio.text_tokenizer import TextTokenizer


class HiggsAudio(RequestBuilder):
    """Text (and optional reference voices, scene, system prompt) in, speech out."""

    def __init__(
        self, model, tokenizer: TextTokenizer, codec, *, max_batch: int = 1, max_len: int = 4096, compile: bool = False,
        prefill_chunk: int | None = None, prefix_cache_mb: float = 512, prefix_cache_dir: str | Path | None = None,
    ):
        self.model, self.tokenizer, self.codec = model, tokenizer, codec
        self.decoder = BatchDecoder(model, tokenizer, max_batch=max_batch, max_len=max_len, compile=compile,
                                    prefill_chunk=prefill_chunk, prefix_cache_mb=prefix_cache_mb,
                                    prefix_cache_dir=prefix_cache_dir, frame_rate=codec.frame_rate)
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
            options = (str(net.compute_dtype), str(next(net.parameters()).dtype), str(net.prefill_dtype), quantize,
                       device.type, adapter and fingerprint(Path(adapter).expanduser()))  # a retrained adapter too
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
                while any(s.t_end is None for s in streams):
                    while pending and self.runner.free_slots():
                        self.runner.admit(pending.pop(0))
                    for update in self.runner.step():
                        if update.stream.error is not None:
                            raise update.stream.error
            finally:
                for s in streams:
                    self.runner.end(s, "cancelled")  # after an error: free the other streams' slots
        return [make_result(s, self.codec, self.tokenizer, decode) for s in streams]

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
                        if update.stream.error is not None:
                            raise update.stream.error
                        chunk = audio.push(update.frames, update.ended) if update.stream is stream else []
                        if len(chunk):
                            yield chunk
            finally:
                self.runner.end(stream, "cancelled")
        tail = audio.flush()
        if len(tail):
            yield tail

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
