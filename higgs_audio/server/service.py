"""What every route shares: settings, the service bundle, voice lookup, limits, queueing, SSE framing."""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, field

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from higgs_audio.api import HiggsAudio
from higgs_audio.config import DEFAULT_MODEL
from higgs_audio.engine import Request as EngineRequest
from higgs_audio.sampling import SamplingParams
from higgs_audio.server.errors import APIError
from higgs_audio.server.metrics import Metrics
from higgs_audio.server.pipeline import CodecBatcher
from higgs_audio.server.scheduler import Job, QueueFull, Scheduler
from higgs_audio.server.schemas import SamplingOptions
from higgs_audio.voices import Clip, VoiceLibrary, resolve_voice

# OpenAI's built-in voice names: clients hard-code them, so when the library has no voice of that name
# they mean "no particular voice" (the model picks one) rather than an error.
OPENAI_VOICES = frozenset("alloy ash ballad cedar coral echo fable marin nova onyx sage shimmer verse".split())
# Other names a request's ``model`` may give for the served model: our default served name (the examples'
# and the web page's), OpenAI's speech models (clients hard-code them) and the official hub id of the
# generation model (what the reference's vLLM server serves it as).
MODEL_ALIASES = ("higgs-audio-v2", "tts-1", "tts-1-hd", "gpt-4o-mini-tts", DEFAULT_MODEL)


@dataclass
class Settings:
    served_model_name: str = "higgs-audio-v2"
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_queue: int = 64
    max_input_chars: int = 100_000
    max_upload_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 300.0
    max_new_tokens: int = SamplingParams.max_new_tokens  # default and ceiling of a request's generation length
    chunk_frames: int = 10  # streamed audio chunks after the first: 10 frames = 0.4 s
    chunk_words: int = 200  # /v1/audio/speech speaks longer inputs in chunks of about this many words


@dataclass
class Service:
    api: HiggsAudio
    voices: VoiceLibrary
    settings: Settings
    metrics: Metrics
    scheduler: Scheduler
    codec: CodecBatcher  # the streaming decode of every response


def check_model(model: str | None, settings: Settings) -> str:
    """The served model's name for a request's ``model`` (unset: the served one); 404 for any other."""
    if model is None or model == settings.served_model_name or model in MODEL_ALIASES:
        return settings.served_model_name
    raise APIError(404, f"the model {model!r} does not exist: this server serves {settings.served_model_name!r} "
                   f"(also accepted: {', '.join(MODEL_ALIASES)})", param="model", code="model_not_found")


def check_chars(text: str, settings: Settings, param: str) -> None:
    if len(text) > settings.max_input_chars:
        raise APIError(413, f"{param} has {len(text)} characters; this server accepts at most "
                       f"{settings.max_input_chars} per request (split the text)", param=param,
                       code="input_too_long")


def sampling(body: SamplingOptions, settings: Settings, max_tokens: int | None = None) -> dict:
    """The engine's SamplingParams fields that the request sets (the rest keep the engine defaults)."""
    params = {k: getattr(body, k) for k in SamplingOptions.model_fields if getattr(body, k) is not None}
    requested = max_tokens if max_tokens is not None else getattr(body, "max_new_tokens", None)
    params["max_new_tokens"] = min(requested or settings.max_new_tokens, settings.max_new_tokens)
    if getattr(body, "max_duration", None) is not None:
        params["max_audio_seconds"] = body.max_duration
    return params


def library_voice(service: Service, name: str):
    """(voice, preset system prompt) for a voice name as clients send it (``resolve_voice``'s lenient reading:
    a library clip or profile, ``profile:`` and a description), or None if it names none."""
    voice = resolve_voice(name, service.voices, files=False, strict=False)
    if isinstance(voice, Clip):
        api = service.api
        return service.voices.load(voice, api.codec, api.max_reference_seconds), voice.system_prompt
    return None if voice is None else (voice, None)


def named_voice(service: Service, name: str, param: str):
    """(voice, preset system prompt) of a voice name: the library's, a 'profile:' description, or (None, None)
    for OpenAI's built-in names, which mean 'let the model choose'."""
    found = library_voice(service, name)
    if found is not None:
        return found
    if name.lower() in OPENAI_VOICES:
        return None, None
    raise APIError(400, f"unknown voice {name!r}; GET /v1/voices lists the voices, or use "
                   "'profile:<description>'", param=param, code="voice_not_found")


def audio_bytes(data: str, settings: Settings, param: str) -> bytes:
    """The file bytes of base64 audio (bare or a ``data:`` URI), within the upload limit."""
    payload = data.partition(",")[2] if data.startswith("data:") else data
    size = len(payload) * 3 // 4
    if size > settings.max_upload_bytes:
        raise APIError(413, f"{param} is about {size} bytes; the limit is {settings.max_upload_bytes}",
                       param=param, code="upload_too_large")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{param} is not base64 of an audio file", param=param) from None


async def submit(service: Service, request_id: str, build, *, continuing: bool = False) -> Job:
    """Build the engine request off the event loop (tokenising, encoding reference audio) and queue it
    (``continuing``: first, see ``Scheduler.submit``)."""
    scheduler = service.scheduler
    if not continuing and scheduler.stats()["queued"] >= scheduler.max_queue:  # fail fast, before encoding
        raise APIError(429, "the server is busy: too many queued requests; retry later",
                       code="rate_limit_exceeded")
    engine_request: EngineRequest = await run_in_threadpool(build)
    try:
        job = scheduler.submit(engine_request, request_id, continuing=continuing)
    except QueueFull as e:
        raise APIError(429, f"the server is busy: {e}", code="rate_limit_exceeded") from None
    return job


def observe_first_audio(metrics: Metrics, request: Request) -> None:
    """Record the time to this request's first audio bytes (once)."""
    if not getattr(request.state, "first_audio_seen", False):
        request.state.first_audio_seen = True
        metrics.first_audio.observe(time.perf_counter() - request.state.started, route=request.url.path)


def sse_event(payload: dict | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
