"""What the routes talk to: hand over a parsed request, get back an async stream of events.

The routes (app.py, speech.py, chat.py) parse and validate HTTP requests, turn each into a ``Work`` and
read the events of ``backend.generate(work)``: ``Chunk`` (audio and/or new words of the text answer), then
one ``Finish``. Errors are ``APIError`` raised from the stream; one raised before the first event becomes
the HTTP error. Events are plain data, so they cross processes.

Two backends implement it: ``LocalBackend`` (local.py), this process's engine (scheduler thread + codec
batcher), used by ``higgs-audio serve`` and by each engine replica of the cluster; and the cluster's ``RayBackend``
(``higgs_audio.cluster``), which reaches those replicas through a Ray Serve deployment handle.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from fastapi import Request

from higgs_audio.server.errors import APIError
from higgs_audio.server.metrics import Metrics
from higgs_audio.server.schemas import ChatRequest, GenerationRequest, SpeechRequest

DISCONNECT_POLL_S = 0.25
REPLICA_HEADER = "X-Higgs-Replica"


@dataclass
class Work:
    """A parsed, validated request. ``stream``: chunks as they are decoded, else one chunk with everything."""

    route: str  # "speech", "generation" or "chat"
    body: SpeechRequest | GenerationRequest | ChatRequest
    stream: bool
    request_id: str = "-"

    def voice_key(self) -> str | None:
        """Which voice the prompt starts with, for routing requests to the replica whose prefix cache holds
        it: a library name or profile text as given, or a hash of the reference clip's bytes."""
        body = self.body
        if isinstance(body, SpeechRequest):
            if body.reference_audio:
                return "clip:" + hashlib.sha256(body.reference_audio.encode()).hexdigest()[:32]
            return f"voice:{body.voice}" if body.voice else None
        if isinstance(body, GenerationRequest):
            return f"voice:{body.voice_profile.strip()}" if body.voice_profile else None
        clips = [part.input_audio.data for m in body.messages if isinstance(m.content, list)
                 for part in m.content if part.type == "input_audio"]
        if clips:
            return "clip:" + hashlib.sha256("".join(clips).encode()).hexdigest()[:32]
        return f"voice:{body.audio.voice}" if body.audio and body.audio.voice else None


@dataclass
class Chunk:
    audio: np.ndarray  # float32 mono at the backend's sample rate (may be empty)
    text: str = ""  # new characters of the text answer (chat)
    replica: str = ""  # on the first event: which engine serves the request (host:pid), for X-Higgs-Replica


@dataclass
class Finish:
    reason: str  # the engine's: stop, length, max_audio, timeout, ...
    prompt_tokens: int
    completion_tokens: int
    replica: str = ""


class Backend(Protocol):
    sample_rate: int
    max_reference_seconds: float  # the longest voice clip the engines' prompts hold
    metrics: Metrics  # what this process records (request counts, latencies)

    def generate(self, work: Work) -> AsyncIterator[Chunk | Finish]: ...

    async def health(self) -> tuple[bool, dict]: ...

    async def metrics_text(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def next_event(events: AsyncIterator, request: Request):
    """The stream's next event, cancelling it if the client disconnects meanwhile (polled every
    ``DISCONNECT_POLL_S``: neither a handler nor a streaming response is told on its own)."""
    task = asyncio.ensure_future(anext(events))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise APIError(499, "client closed the request")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await events.aclose()
