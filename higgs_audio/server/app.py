"""The HTTP face: OpenAI-compatible routes over one ``HiggsAudio`` and its continuous-batching scheduler.

Routes: ``POST /v1/audio/speech``, ``POST /v1/audio/generation``, ``POST /v1/chat/completions``,
``GET /v1/models``, ``GET|POST /v1/voices``, ``DELETE /v1/voices/{name}``, ``GET /health``, ``GET /metrics``
and the web page at ``/``.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from higgs_audio.api import HiggsAudio
from higgs_audio.engine import Request as EngineRequest
from higgs_audio.messages import AudioContent, Message, TextContent
from higgs_audio.prompt import VoiceProfile, VoiceRef, build_context
from higgs_audio.server import errors
from higgs_audio.server.encoding import MEDIA_TYPES, StreamEncoder, encode_file, pcm16
from higgs_audio.server.errors import APIError
from higgs_audio.server.metrics import Metrics
from higgs_audio.server.middleware import BodyLimit, RequestLog
from higgs_audio.server.pipeline import JobAudio
from higgs_audio.server.scheduler import QueueFull, Scheduler
from higgs_audio.server.schemas import AudioOptions, ChatRequest, GenerationRequest, SamplingOptions, SpeechRequest
from higgs_audio.voices import AUDIO_SUFFIXES, VoiceLibrary

log = logging.getLogger(__name__)

WEB_PAGE = Path(__file__).parent / "web" / "index.html"
# OpenAI's built-in voice names: clients hard-code them, so when the library has no voice of that name
# they mean "no particular voice" (the model picks one) rather than an error.
OPENAI_VOICES = frozenset(
    "alloy ash ballad cedar coral echo fable marin nova onyx sage shimmer verse".split()
)
CHAT_FORMATS = {"pcm16": "pcm"}


@dataclass
class Settings:
    served_model_name: str = "higgs-audio-v2"
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_queue: int = 64
    max_input_chars: int = 4096
    max_upload_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 300.0
    max_new_tokens: int = 2048  # default and ceiling of a request's generation length
    chunk_frames: int = 10  # streamed audio chunks after the first: 10 frames = 0.4 s


@dataclass
class Service:
    api: HiggsAudio
    voices: VoiceLibrary
    settings: Settings
    metrics: Metrics
    scheduler: Scheduler


def create_app(api: HiggsAudio, voices: VoiceLibrary, settings: Settings) -> FastAPI:
    metrics = Metrics()
    scheduler = Scheduler(api, metrics, max_queue=settings.max_queue, timeout_s=settings.timeout_s)
    service = Service(api, voices, settings, metrics, scheduler)

    app = FastAPI(
        title="higgs-audio",
        description="OpenAI-compatible speech server for Higgs Audio V2",
        version="0.1.0",
        lifespan=_lifespan(scheduler),
    )
    app.state.service = service
    errors.install(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestLog, metrics=metrics)

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    secured = [Depends(authorize)]

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(WEB_PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": settings.served_model_name, **scheduler.stats()}

    @app.get("/metrics", dependencies=secured, response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=secured)
    async def models() -> dict:
        return {"object": "list", "data": [{"id": settings.served_model_name, "object": "model", "created": 0,
                                            "owned_by": "higgs-audio"}]}

    @app.post("/v1/audio/speech", dependencies=secured)
    async def speech(body: SpeechRequest, request: Request):
        _check_chars(body.input, settings, "input")
        voice, system = await run_in_threadpool(_speech_voice, service, body)
        scene = body.scene or body.instructions
        return await _audio_response(service, request, body, lambda: api.request(
            body.input, voice=voice, scene=scene, system=system, **_sampling(body, settings)))

    @app.post("/v1/audio/generation", dependencies=secured)
    async def generation(body: GenerationRequest, request: Request):
        _check_chars(body.text, settings, "text")
        voice, system = await run_in_threadpool(_profile_voice, service, body.voice_profile)
        return await _audio_response(service, request, body, lambda: api.request(
            body.text, voice=voice, scene=body.scene, system=system, **_sampling(body, settings)))

    @app.post("/v1/chat/completions", dependencies=secured)
    async def chat(body: ChatRequest, request: Request):
        return await _chat(service, request, body)

    @app.get("/v1/voices", dependencies=secured)
    async def list_voices() -> dict:
        clips, profiles = await run_in_threadpool(voices.entries)
        data = [{"id": v.name, "object": "voice", "kind": v.kind, "transcript": v.transcript}
                for v in clips.values()]
        data += [{"id": f"profile:{v.name}", "object": "voice", "kind": v.kind, "description": v.description}
                 for v in profiles.values()]
        return {"object": "list", "data": data}

    @app.post("/v1/voices", dependencies=secured, status_code=201)
    async def add_voice(
        name: str = Form(..., max_length=64),
        transcript: str | None = Form(None, max_length=10_000),
        description: str | None = Form(None, max_length=10_000),
        file: UploadFile | None = File(None),
        force: bool = Form(False),
    ) -> dict:
        if file is not None and description is None:
            voice = await _add_clip(voices, name, transcript or "", file, force)
            return {"id": voice.name, "object": "voice", "kind": voice.kind, "transcript": voice.transcript}
        if file is None and description is not None:
            voice = await run_in_threadpool(lambda: voices.add_profile(name, description, force=force))
            return {"id": f"profile:{voice.name}", "object": "voice", "kind": voice.kind,
                    "description": voice.description}
        raise APIError(400, "give either an audio file with its transcript, or a description for a profile",
                       param="file")

    @app.delete("/v1/voices/{name}", dependencies=secured)
    async def delete_voice(name: str) -> dict:
        clips, profiles = await run_in_threadpool(voices.entries)
        known = name in clips or (name.startswith("profile:") and name[len("profile:"):] in profiles)
        if not known:
            raise APIError(404, f"no voice {name!r}; GET /v1/voices lists them", param="name")
        await run_in_threadpool(voices.remove, name)
        return {"id": name, "object": "voice", "deleted": True}

    return app


# -- helpers --------------------------------------------------------------------------------------


def _lifespan(scheduler: Scheduler):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        yield
        scheduler.stop()

    return lifespan


def _check_chars(text: str, settings: Settings, param: str) -> None:
    if len(text) > settings.max_input_chars:
        raise APIError(413, f"{param} has {len(text)} characters; this server accepts at most "
                       f"{settings.max_input_chars} per request (split the text)", param=param,
                       code="input_too_long")


def _sampling(body: SamplingOptions, settings: Settings, max_tokens: int | None = None) -> dict:
    """The engine's SamplingParams fields that the request sets (the rest keep the engine defaults)."""
    params = {k: getattr(body, k) for k in ("temperature", "top_p", "top_k", "seed") if getattr(body, k) is not None}
    requested = max_tokens if max_tokens is not None else getattr(body, "max_new_tokens", None)
    params["max_new_tokens"] = min(requested or settings.max_new_tokens, settings.max_new_tokens)
    if getattr(body, "max_duration", None) is not None:
        params["max_audio_seconds"] = body.max_duration
    return params


def _library_voice(service: Service, name: str):
    """(voice, preset system prompt) for a library clip or profile name, or None if there is none."""
    clips, profiles = service.voices.entries()
    if name in clips:
        return service.voices.get(name, service.api.codec), clips[name].system_prompt
    key = name[len("profile:"):] if name.startswith("profile:") else name
    if key in profiles:
        return VoiceProfile(profiles[key].description), None
    return None


def _speech_voice(service: Service, body: SpeechRequest):
    if body.reference_audio is not None:
        if not body.reference_text:
            raise APIError(400, "reference_audio needs reference_text, the words spoken in it",
                           param="reference_text")
        _check_upload(body.reference_audio, service.settings, "reference_audio")
        codes = service.api.encode_audio(AudioContent(raw_audio=_strip_data_uri(body.reference_audio)))
        return VoiceRef(codes, body.reference_text), None
    if not body.voice:
        return None, None
    found = _library_voice(service, body.voice)
    if found is not None:
        return found
    if body.voice.startswith("profile:"):
        return VoiceProfile(body.voice[len("profile:"):].strip()), None
    if body.voice.lower() in OPENAI_VOICES:
        return None, None
    raise APIError(400, f"unknown voice {body.voice!r}; GET /v1/voices lists the voices, or use "
                   "'profile:<description>'", param="voice", code="voice_not_found")


def _profile_voice(service: Service, profile: str | None):
    """``voice_profile``: a library profile or voice name, else a free-text description of the speaker."""
    if not profile or not profile.strip():
        return None, None
    return _library_voice(service, profile.strip()) or (VoiceProfile(profile.strip()), None)


def _strip_data_uri(data: str) -> str:
    return data.partition(",")[2] if data.startswith("data:") else data


def _check_upload(data: str, settings: Settings, param: str) -> None:
    size = len(data) * 3 // 4
    if size > settings.max_upload_bytes:
        raise APIError(413, f"{param} is about {size} bytes; the limit is {settings.max_upload_bytes}",
                       param=param, code="upload_too_large")


async def _submit(service: Service, request: Request, build) -> JobAudio:
    """Build the engine request off the event loop, queue it, and wait for its first output."""
    scheduler = service.scheduler
    if scheduler.stats()["queued"] >= scheduler.max_queue:  # fail fast, before encoding anything
        raise APIError(429, "the server is busy: too many queued requests; retry later",
                       code="rate_limit_exceeded")
    engine_request: EngineRequest = await run_in_threadpool(build)
    try:
        job = scheduler.submit(engine_request, request.state.request_id)
    except QueueFull as e:
        raise APIError(429, f"the server is busy: {e}", code="rate_limit_exceeded") from None
    return job


async def _audio_response(service: Service, request: Request, body: AudioOptions, build) -> Response:
    job = await _submit(service, request, build)
    audio = JobAudio(job, service.api.codec, speed=body.speed, chunk_frames=service.settings.chunk_frames)
    rate, fmt, route = service.api.sample_rate, body.response_format, request.url.path
    if not body.stream and body.stream_format == "audio":
        result = await audio.collect(request)
        _observe_first_audio(service, request, route, audio)
        data = await run_in_threadpool(encode_file, result.audio, rate, fmt)
        return Response(data, media_type=MEDIA_TYPES[fmt])
    await audio.started(request)
    sse = body.stream_format == "sse"

    async def chunks():
        encoder = StreamEncoder(fmt, rate)
        async for wave, _ in audio.stream():
            data = encoder.write(wave) if len(wave) else b""
            if data:
                _observe_first_audio(service, request, route, audio)
                yield _sse({"type": "speech.audio.delta", "audio": _b64(data)}) if sse else data
        tail = encoder.close()
        if tail:
            yield _sse({"type": "speech.audio.delta", "audio": _b64(tail)}) if sse else tail
        if sse:
            run = job.run
            yield _sse({"type": "speech.audio.done", "usage": {
                "input_tokens": run.prompt_tokens, "output_tokens": run.steps,
                "total_tokens": run.prompt_tokens + run.steps}})

    return StreamingResponse(chunks(), media_type="text/event-stream" if sse else MEDIA_TYPES[fmt])


def _observe_first_audio(service: Service, request: Request, route: str, audio: JobAudio) -> None:
    if not getattr(request.state, "first_audio_seen", False) and audio.outcome.first_audio_at is not None:
        request.state.first_audio_seen = True
        service.metrics.first_audio.observe(audio.outcome.first_audio_at - request.state.started, route=route)


def _sse(payload: dict | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def _add_clip(voices: VoiceLibrary, name: str, transcript: str, file: UploadFile, force: bool):
    suffix = Path(file.filename or "").suffix.lower()
    if suffix not in AUDIO_SUFFIXES:
        raise APIError(400, f"upload an audio file named *{', *'.join(AUDIO_SUFFIXES)}", param="file")
    data = await file.read()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        return await run_in_threadpool(lambda: voices.add(name, path, transcript, force=force))


# -- chat completions -----------------------------------------------------------------------------


def _chat_messages(service: Service, body: ChatRequest) -> list[Message]:
    """OpenAI messages -> ours: text parts stay text, input_audio parts become audio clips (assistant turns:
    a voice to clone, as the reference's vLLM server reads them)."""
    messages, chars = [], 0
    for i, m in enumerate(body.messages):
        parts = [m.content] if isinstance(m.content, str) else (m.content or [])
        contents: list[TextContent | AudioContent] = []
        for j, part in enumerate(parts):
            if isinstance(part, str):
                contents.append(TextContent(part))
                chars += len(part)
            elif part.type == "text":
                contents.append(TextContent(part.text))
                chars += len(part.text)
            else:
                _check_upload(part.input_audio.data, service.settings, f"messages.{i}.content.{j}.input_audio")
                contents.append(AudioContent(raw_audio=_strip_data_uri(part.input_audio.data)))
        role = "system" if m.role == "developer" else m.role
        messages.append(Message(role, contents or [TextContent("")]))
    if chars > service.settings.max_input_chars:
        raise APIError(413, f"the messages hold {chars} characters; this server accepts at most "
                       f"{service.settings.max_input_chars}", param="messages", code="input_too_long")
    return messages


def _chat_voice(service: Service, body: ChatRequest, messages: list[Message]) -> list[Message]:
    """``audio.voice`` naming a library voice adds its reference turns (or its profile as the system
    prompt) unless the messages already carry a voice."""
    name = body.audio.voice if body.audio else None
    has_audio = any(isinstance(c, AudioContent) for m in messages for c in m.contents())
    if not name or has_audio:
        return messages
    found = _library_voice(service, name)
    if found is None:
        if name.lower() in OPENAI_VOICES:
            return messages
        raise APIError(400, f"unknown voice {name!r}; GET /v1/voices lists them", param="audio.voice")
    voice, _ = found
    leading = next((i for i, m in enumerate(messages) if m.role != "system"), len(messages))
    if isinstance(voice, VoiceProfile) and leading:
        raise APIError(400, "a profile voice becomes the system prompt, but the messages have one: put the "
                       "speaker description in your system message instead", param="audio.voice")
    context = build_context(voices=voice)
    return messages[:leading] + context + messages[leading:]


async def _chat(service: Service, request: Request, body: ChatRequest):
    api, settings = service.api, service.settings
    want_audio = "audio" in body.modalities
    fmt = CHAT_FORMATS.get(body.audio.format, body.audio.format) if body.audio else "wav"
    stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    params = _sampling(body, settings, body.max_completion_tokens or body.max_tokens)
    if stops:
        params["stop"] = stops

    def build() -> EngineRequest:
        messages = _chat_voice(service, body, _chat_messages(service, body))
        return api.request(messages=messages, force_audio=want_audio, **params)

    job = await _submit(service, request, build)
    audio = JobAudio(job, api.codec, chunk_frames=settings.chunk_frames)
    created, ident = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
    audio_id = f"audio-{uuid.uuid4().hex}"
    route = request.url.path

    def usage() -> dict:
        run = job.run
        return {"prompt_tokens": run.prompt_tokens, "completion_tokens": run.steps,
                "total_tokens": run.prompt_tokens + run.steps}

    if not body.stream:
        result = await audio.collect(request)
        _observe_first_audio(service, request, route, audio)
        message: dict = {"role": "assistant", "content": result.text or None}
        if want_audio:
            data = await run_in_threadpool(encode_file, result.audio, api.sample_rate, fmt)
            message["audio"] = {"id": audio_id, "data": _b64(data), "expires_at": created + 3600,
                                "transcript": result.text}
        return {"id": ident, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "message": message, "finish_reason": _finish(result.finish_reason)}],
                "usage": usage()}

    await audio.started(request)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return _sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": body.model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    async def events():
        yield chunk({"role": "assistant", "content": ""})
        text_ids: list[int] = []
        said = ""
        async for wave, new_ids in audio.stream():
            delta: dict = {}
            if new_ids:
                text_ids += new_ids
                text = api.tokenizer.decode(text_ids, skip_special_tokens=True)
                if not text.endswith("\ufffd") and text.startswith(said) and text != said:
                    delta["content"], said = text[len(said):], text
            if want_audio and len(wave):
                _observe_first_audio(service, request, route, audio)
                delta["audio"] = {"id": audio_id, "data": _b64(pcm16(wave))}
            if delta:
                yield chunk(delta)
        yield chunk({}, _finish(audio.outcome.reason))
        if include_usage:
            yield _sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": body.model,
                        "choices": [], "usage": usage()})
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")


def _finish(reason: str) -> str:
    return "length" if reason in ("length", "max_audio", "timeout") else "stop"
