"""``LocalBackend``: the backend (backend.py) that runs requests on this process's engine."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import aclosing

from starlette.concurrency import run_in_threadpool

from higgs_audio.api import HiggsAudio
from higgs_audio.server.backend import Chunk, Finish, Work
from higgs_audio.server.chat import chat_request
from higgs_audio.server.longtext import long_text
from higgs_audio.server.metrics import Metrics
from higgs_audio.server.pipeline import CodecBatcher, JobAudio
from higgs_audio.server.scheduler import Scheduler
from higgs_audio.server.service import Service, Settings, sampling, submit
from higgs_audio.server.speech import profile_voice, speech_voice
from higgs_audio.voices import VoiceLibrary


class LocalBackend:
    """Runs requests on this process's engine: one scheduler thread batching them, one codec batcher."""

    def __init__(self, api: HiggsAudio, voices: VoiceLibrary, settings: Settings, metrics: Metrics | None = None):
        self.metrics = metrics or Metrics()
        scheduler = Scheduler(api, self.metrics, max_queue=settings.max_queue, timeout_s=settings.timeout_s)
        self.service = Service(api, voices, settings, self.metrics, scheduler, CodecBatcher(api.codec, self.metrics))
        self.sample_rate, self.max_reference_seconds = api.sample_rate, api.max_reference_seconds
        self.replica = f"{socket.gethostname()}:{os.getpid()}"

    async def start(self) -> None:
        self.service.scheduler.start()

    async def stop(self) -> None:
        await run_in_threadpool(self.service.scheduler.stop)

    async def health(self) -> tuple[bool, dict]:
        return self.service.scheduler.is_alive(), self.service.scheduler.stats()

    async def metrics_text(self) -> str:
        return self.metrics.render()

    async def generate(self, work: Work) -> AsyncIterator[Chunk | Finish]:
        replica = self.replica
        async with aclosing(self._events(work)) as events:
            async for event in events:
                event.replica, replica = replica, ""
                yield event

    async def _events(self, work: Work) -> AsyncIterator[Chunk | Finish]:
        service, body = self.service, work.body
        build, follow = await self._builder(work)
        job = await submit(service, work.request_id, build)
        audio = JobAudio(job, service.codec, speed=getattr(body, "speed", 1.0),
                         chunk_frames=service.settings.chunk_frames, follow=follow)
        try:
            if not work.stream and work.route == "chat":
                result = await audio.collect()
                yield Chunk(result.audio, result.text or "")
            elif not work.stream:
                yield Chunk(await audio.whole())
            else:
                await audio.started()
                async for wave, words in audio.stream():
                    yield Chunk(wave, words)
        finally:
            audio.job.cancel()  # no-op when it finished; frees the slot when the reader went away
        prompt_tokens, steps = audio.usage()
        yield Finish(audio.reason, prompt_tokens, steps)

    async def _builder(self, work: Work):
        """(a function building the engine request off the event loop, the ``follow`` of a text spoken in
        chunks or None); the voice is looked up here first, so an unknown one fails before queueing."""

        service, body, api = self.service, work.body, self.service.api
        if work.route == "chat":
            return (lambda: chat_request(service, body)), None
        params = sampling(body, service.settings)
        if work.route == "speech":
            voice, system = await run_in_threadpool(speech_voice, service, body)
            scene = body.scene or body.instructions
            chunks = await run_in_threadpool(lambda: long_text(service, body.input, voice=voice, scene=scene,
                                                               system=system, params=params,
                                                               max_words=service.settings.chunk_words,
                                                               method=body.chunk))
            if chunks is not None:
                return chunks.build, lambda job: chunks.follow(job, work.request_id)
            text = body.input
        else:
            voice, system = await run_in_threadpool(profile_voice, service, body.voice_profile)
            text, scene = body.text, body.scene
        return (lambda: api.request(text, voice=voice, scene=scene, system=system, **params)), None
