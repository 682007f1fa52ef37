"""From a scheduler job to what a response sends: decoded audio chunks, text deltas, the final result.

Decoding runs in worker threads (the codec's ``stream_decoder``), so the scheduler thread only steps the
model; ``CodecBatcher`` decodes the chunks that streams hand in meanwhile in one batch. ``stream`` yields
the first chunk as soon as the first frames decode and then every ``chunk_frames`` frames (chunked by
``output.ChunkedAudio``); ``collect`` decodes the whole utterance in one call. The two agree sample for sample
up to float rounding, because the stream decoder waits for each frame's right context.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool

from higgs_audio.audio import Tempo
from higgs_audio.codec import AudioCodec, StreamDecoder
from higgs_audio.output import ChunkedAudio
from higgs_audio.results import make_result
from higgs_audio.server.errors import APIError
from higgs_audio.server.metrics import Metrics
from higgs_audio.server.scheduler import Job


def _failure(error: BaseException) -> APIError:
    if isinstance(error, ValueError):  # the engine refused the request (e.g. a prompt longer than the cache)
        return APIError(400, str(error))
    return APIError(500, "generation failed; see the server log", type="server_error")


class CodecBatcher:
    """Streaming decode for every stream of a server: chunks handed in while a decode runs wait for the next
    one, which takes them all together (``StreamDecoder.push_many``: one pass of the codec's layers for the
    streams whose states allow it, rather than one pass each; on a GPU each pass is launch-bound)."""

    def __init__(self, codec: AudioCodec, metrics: Metrics | None = None):
        self.codec, self.metrics = codec, metrics
        self._waiting: list[tuple[StreamDecoder, torch.Tensor, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None  # held: the loop keeps only a weak reference to a task

    async def push(self, decoder: StreamDecoder, codes: torch.Tensor) -> np.ndarray:
        """``decoder.push(codes)``, decoded together with the other streams' chunks."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((decoder, codes, done))
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                if self.metrics is not None:
                    self.metrics.codec_batch.observe(len(batch))
                try:
                    waves = await run_in_threadpool(StreamDecoder.push_many, [d for d, _, _ in batch],
                                                    [c for _, c, _ in batch])
                except Exception as e:  # noqa: BLE001 - handed to every waiting stream
                    for *_, done in batch:
                        if not done.done():
                            done.set_exception(e)
                    continue
                for (*_, done), wave in zip(batch, waves):
                    if not done.done():  # its client went away meanwhile
                        done.set_result(wave)
        finally:
            self._drainer = None


class JobAudio:
    """Consumes one job. Create it, then either iterate ``stream()`` or await ``collect()``, once.

    ``follow``: for a text spoken in chunks, an async callable that takes a job that ended and returns the
    next chunk's job (None after the last). ``stream`` then goes on through every chunk's job, decoding all
    their frames as one stream, so the joins are as smooth as any frame boundary.
    """

    def __init__(self, job: Job, batcher: CodecBatcher, *, speed: float = 1.0, chunk_frames: int = 10,
                 follow: Callable[[Job], Awaitable[Job | None]] | None = None):
        self.job, self.batcher, self.speed, self.chunk_frames = job, batcher, speed, chunk_frames
        self.follow = follow
        self._earlier = (0, 0)  # usage of the chunks before this job
        self._seen, self._said = 0, ""  # the job's text ids delivered so far, and their text sent
        self._first = None  # an item read ahead by ``started``

    @property
    def reason(self) -> str:
        """How the job (the last chunk's, with ``follow``) ended."""
        return self.job.stream.reason

    def usage(self) -> tuple[int, int]:
        """(prompt tokens, generation steps) of every chunk so far."""
        stream = self.job.stream
        return self._earlier[0] + stream.prompt_len, self._earlier[1] + stream.steps

    async def started(self) -> None:
        """Wait for the job's first output, so that a failure before any audio can still become an HTTP
        error instead of a truncated stream."""
        self._first = await self.job.next()
        if self._first[0] == "error":
            raise _failure(self._first[1])
        if self._first == ("done", "timeout"):
            raise APIError(504, "the request timed out before any audio was generated", code="timeout")

    async def _items(self) -> AsyncIterator[list[tuple[str, object]]]:
        while True:
            first, self._first = self._first, None
            batch = [first or await self.job.next(), *self.job.drain()]
            ended = next((payload for kind, payload in batch if kind == "done"), None)
            if self.follow is not None and ended not in (None, "cancelled", "timeout"):
                yield [item for item in batch if item[0] != "done"]
                following = await self.follow(self.job)
                if following is not None:
                    self._earlier, self.job = self.usage(), following
                    self._seen, self._said = 0, ""
                    continue
                batch = [("done", ended)]
            yield batch
            if any(kind in ("done", "error") for kind, _ in batch):
                return

    def _take(self, batch) -> tuple[list[torch.Tensor], str]:
        """The new frames of ``batch`` and the words of the text answer its text ids complete (the ids so far
        are decoded whole each time, as a token may end inside a character)."""
        frames, seen = [], self._seen
        for kind, payload in batch:
            if kind == "frames":
                frames.extend(payload)
            elif kind == "text":
                self._seen += payload
            elif kind == "error":
                raise _failure(payload)
        if self._seen == seen:
            return frames, ""
        text = self.job.scheduler.api.tokenizer.decode(self.job.stream.text_ids[:self._seen], skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self._said) or text == self._said:
            return frames, ""
        delta, self._said = text[len(self._said):], text
        return frames, delta

    async def stream(self) -> AsyncIterator[tuple[np.ndarray, str]]:
        """Yield (audio chunk, new words of the text answer) as they become available; cancels the job if
        abandoned."""
        audio = ChunkedAudio(self.batcher.codec, self.chunk_frames)
        tempo = Tempo(self.speed, self.batcher.codec.sample_rate) if self.speed != 1.0 else None
        try:
            async for batch in self._items():
                frames, words = self._take(batch)
                end = any(kind == "done" for kind, _ in batch)
                codes = audio.take(frames, end)
                wave = np.zeros(0, dtype=np.float32) if codes is None else await self.batcher.push(audio.decoder, codes)
                if end:
                    wave = np.concatenate([wave, await run_in_threadpool(audio.flush)])
                if tempo is not None:
                    wave = np.concatenate([tempo.process(wave), tempo.flush() if end else wave[:0]])
                audio.heard(wave)
                if len(wave) or words:
                    yield wave, words
        finally:
            self.job.cancel()  # no-op when it finished; frees the slot when the client went away

    async def collect(self):
        """Wait for the job to end, then decode it whole.
        Returns the engine's ``GenerationResult`` (audio already at ``speed``)."""
        try:
            kind = None
            while kind != "done":  # the job's stream record keeps its frames and text: wait for its end
                (kind, payload), self._first = self._first or await self.job.next(), None
                if kind == "error":
                    raise _failure(payload)
        finally:
            self.job.cancel()
        if self.reason == "timeout":
            raise APIError(504, "the request timed out", code="timeout")
        api = self.job.scheduler.api
        result = await run_in_threadpool(make_result, self.job.stream, api.codec, api.tokenizer)
        if self.speed != 1.0:
            tempo = Tempo(self.speed, result.sample_rate)
            result.audio = np.concatenate([tempo.process(result.audio), tempo.flush()])
        return result

    async def whole(self) -> np.ndarray:
        """All the audio, at ``speed``: one job's decoded in one call, chunks' decoded as they come (so a
        long text never holds more than a chunk's codes)."""
        if self.follow is None:
            return (await self.collect()).audio
        waves = [wave async for wave, _ in self.stream()]
        if self.reason == "timeout":
            raise APIError(504, "the request timed out", code="timeout")
        return np.concatenate(waves) if waves else np.zeros(0, dtype=np.float32)
