"""The HTTP face: OpenAI-compatible routes over a backend (backend.py): this process's engine for
``higgs-audio serve``, or the engine replicas of a Ray Serve cluster for ``higgs-audio cluster``.

Routes: ``POST /v1/audio/speech``, ``POST /v1/audio/generation``, ``POST /v1/chat/completions``,
``GET /v1/models``, ``GET|POST /v1/voices``, ``DELETE /v1/voices/{name}``, ``GET /v1/scenes``, ``GET /health``,
``GET /metrics`` and the web page (the playground) at ``/``.
"""

from __future__ import annotations

import hmac
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from higgs_audio.scenes import SCENES
from higgs_audio.server import errors
from higgs_audio.server.backend import Backend, Work
from higgs_audio.server.chat import chat_completion
from higgs_audio.server.errors import APIError
from higgs_audio.server.middleware import BodyLimit, RequestLog
from higgs_audio.server.schemas import AudioOptions, ChatRequest, GenerationRequest, SpeechRequest
from higgs_audio.server.service import Settings, check_chars, check_model
from higgs_audio.server.speech import audio_response
from higgs_audio.voices import AUDIO_SUFFIXES, PROFILE_PREFIX, VoiceLibrary

WEB_PAGE = Path(__file__).parent / "web" / "index.html"


def create_app(backend: Backend, voices: VoiceLibrary, settings: Settings) -> FastAPI:
    """The routes over ``backend`` (its ``start``/``stop`` run with the app); ``voices`` serves the voice
    routes (the backend's engines must read the same folders)."""
    metrics = backend.metrics
    app = FastAPI(
        title="higgs-audio",
        description="OpenAI-compatible speech server for Higgs Audio V2",
        version="0.1.0",
        lifespan=_lifespan(backend),
    )
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
    async def health() -> JSONResponse:
        healthy, stats = await backend.health()
        return JSONResponse({"status": "ok" if healthy else "unavailable", "model": settings.served_model_name,
                             **stats}, status_code=200 if healthy else 503)

    @app.get("/metrics", dependencies=secured, response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(await backend.metrics_text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=secured)
    async def models() -> dict:
        return {"object": "list", "data": [{"id": settings.served_model_name, "object": "model", "created": 0,
                                            "owned_by": "higgs-audio"}]}

    @app.post("/v1/audio/speech", dependencies=secured)
    async def speech(body: SpeechRequest, request: Request):
        check_model(body.model, settings)
        check_chars(body.input, settings, "input")
        return await audio_response(backend, request, _work("speech", body, request))

    @app.post("/v1/audio/generation", dependencies=secured)
    async def generation(body: GenerationRequest, request: Request):
        check_chars(body.text, settings, "text")
        return await audio_response(backend, request, _work("generation", body, request))

    @app.post("/v1/chat/completions", dependencies=secured)
    async def chat(body: ChatRequest, request: Request):
        body.model = check_model(body.model, settings)
        return await chat_completion(backend, request, body)

    @app.get("/v1/voices", dependencies=secured)
    async def list_voices() -> dict:
        clips, profiles = await run_in_threadpool(voices.entries)
        data = [{"id": v.name, "object": "voice", "kind": v.kind, "transcript": v.transcript}
                for v in clips.values()]
        data += [{"id": PROFILE_PREFIX + v.name, "object": "voice", "kind": v.kind, "description": v.description}
                 for v in profiles.values()]
        return {"object": "list", "data": data}

    @app.get("/v1/scenes", dependencies=secured)
    async def list_scenes() -> dict:
        data = [{"id": name, "object": "scene", "description": text} for name, text in SCENES.items()]
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
            if not (transcript or "").strip():
                raise APIError(400, "give the transcript: the words spoken in the clip", param="transcript")
            voice = await _add_clip(voices, name, transcript, file, force, backend.max_reference_seconds)
            return {"id": voice.name, "object": "voice", "kind": voice.kind, "transcript": voice.transcript}
        if file is None and description is not None:
            voice = await run_in_threadpool(lambda: voices.add_profile(name, description, force=force))
            return {"id": PROFILE_PREFIX + voice.name, "object": "voice", "kind": voice.kind,
                    "description": voice.description}
        raise APIError(400, "give either an audio file with its transcript, or a description for a profile",
                       param="file")

    @app.delete("/v1/voices/{name}", dependencies=secured)
    async def delete_voice(name: str) -> dict:
        voice = await run_in_threadpool(lambda: voices.find(name, missing_ok=True))
        if voice is None:
            raise APIError(404, f"no voice {name!r}; GET /v1/voices lists them", param="name")
        if voice.kind == "builtin":
            raise APIError(403, f"{name!r} is a built-in profile: built-in voices cannot be removed", param="name",
                           code="builtin_voice")
        await run_in_threadpool(voices.remove, name)
        return {"id": name, "object": "voice", "deleted": True}

    return app


def _lifespan(backend: Backend):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await backend.start()
        yield
        await backend.stop()

    return lifespan


def _work(route: str, body: AudioOptions, request: Request) -> Work:
    stream = body.stream or body.stream_format == "sse"
    return Work(route, body, stream, request.state.request_id)


async def _add_clip(voices: VoiceLibrary, name: str, transcript: str, file: UploadFile, force: bool,
                    max_seconds: float):
    suffix = Path(file.filename or "").suffix.lower()
    if suffix not in AUDIO_SUFFIXES:
        raise APIError(400, f"upload an audio file named *{', *'.join(AUDIO_SUFFIXES)}", param="file")
    data = await file.read()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        return await run_in_threadpool(lambda: voices.add(name, path, transcript, force=force,
                                                           max_seconds=max_seconds))
