"""``/v1/chat/completions`` with ``modalities: ["text", "audio"]``, as the reference's vLLM server accepts it:
voices to clone as ``input_audio`` parts (assistant or user turns), whole answers as base64 WAV (or the asked
format), streamed answers as base64 PCM16 deltas, ``stream_options.include_usage``. Streamed chunks have the
shape of openai's ``ChatCompletionChunk``: ``delta.audio`` is an object with ``id``, ``data`` and
``transcript`` (the text also comes as ``delta.content``), and the last audio update holds ``expires_at``."""

from __future__ import annotations

import time
import uuid

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from higgs_audio.engine import Request as EngineRequest
from higgs_audio.messages import AudioContent, Message, TextContent
from higgs_audio.prompt import VoiceProfile, build_context
from higgs_audio.server.encoding import encode_file, pcm16
from higgs_audio.server.errors import APIError
from higgs_audio.server.pipeline import JobAudio
from higgs_audio.server.schemas import ChatRequest
from higgs_audio.server.service import (
    OPENAI_VOICES,
    Service,
    audio_bytes,
    b64,
    library_voice,
    observe_first_audio,
    sampling,
    sse_event,
    submit,
)

CHAT_FORMATS = {"pcm16": "pcm"}


def chat_messages(service: Service, body: ChatRequest) -> list[Message]:
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
                param = f"messages.{i}.content.{j}.input_audio.data"
                contents.append(AudioContent(data=audio_bytes(part.input_audio.data, service.settings, param)))
        role = "system" if m.role == "developer" else m.role
        messages.append(Message(role, contents or [TextContent("")]))
    if chars > service.settings.max_input_chars:
        raise APIError(413, f"the messages hold {chars} characters; this server accepts at most "
                       f"{service.settings.max_input_chars}", param="messages", code="input_too_long")
    return messages


def chat_voice(service: Service, body: ChatRequest, messages: list[Message]) -> list[Message]:
    """``audio.voice`` naming a library voice adds its reference turns (or its profile as the system
    prompt) unless the messages already carry a voice."""
    name = body.audio.voice if body.audio else None
    has_audio = any(isinstance(c, AudioContent) for m in messages for c in m.contents())
    if not name or has_audio:
        return messages
    found = library_voice(service, name)
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


async def chat_completion(service: Service, request: Request, body: ChatRequest):
    api, settings = service.api, service.settings
    want_audio = "audio" in body.modalities
    fmt = CHAT_FORMATS.get(body.audio.format, body.audio.format) if body.audio else "wav"
    stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    params = sampling(body, settings, body.max_completion_tokens or body.max_tokens)
    if stops:
        params["stop"] = stops

    def build() -> EngineRequest:
        messages = chat_voice(service, body, chat_messages(service, body))
        return api.request(messages=messages, force_audio=want_audio, **params)

    job = await submit(service, request, build)
    audio = JobAudio(job, service.codec, chunk_frames=settings.chunk_frames)
    created, ident = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
    audio_id = f"audio-{uuid.uuid4().hex}"
    route = request.url.path

    def usage() -> dict:
        run = job.run
        return {"prompt_tokens": run.prompt_tokens, "completion_tokens": run.steps,
                "total_tokens": run.prompt_tokens + run.steps}

    if not body.stream:
        result = await audio.collect(request)
        observe_first_audio(service, request, route, audio)
        message: dict = {"role": "assistant", "content": result.text or None}
        if want_audio:
            data = await run_in_threadpool(encode_file, result.audio, api.sample_rate, fmt)
            message["audio"] = {"id": audio_id, "data": b64(data), "expires_at": created + 3600,
                                "transcript": result.text}
        return {"id": ident, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish(result.finish_reason)}],
                "usage": usage()}

    await audio.started(request)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return sse_event({"id": ident, "object": "chat.completion.chunk", "created": created, "model": body.model,
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
            if want_audio and (len(wave) or "content" in delta):  # openai's ChoiceDeltaAudio
                delta["audio"] = {"id": audio_id}
                if len(wave):
                    observe_first_audio(service, request, route, audio)
                    delta["audio"]["data"] = b64(pcm16(wave))
                if "content" in delta:
                    delta["audio"]["transcript"] = delta["content"]
            if delta:
                yield chunk(delta)
        if want_audio:  # as OpenAI's last audio update: only its expiry
            yield chunk({"audio": {"id": audio_id, "expires_at": created + 3600}})
        yield chunk({}, finish(audio.outcome.reason))
        if include_usage:
            yield sse_event({"id": ident, "object": "chat.completion.chunk", "created": created, "model": body.model,
                        "choices": [], "usage": usage()})
        yield sse_event("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")


def finish(reason: str) -> str:
    return "length" if reason in ("length", "max_audio", "timeout") else "stop"
