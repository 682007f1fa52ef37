"""``/v1/chat/completions`` with ``modalities: ["text", "audio"]``, as the reference's vLLM server accepts it:
voices to clone as ``input_audio`` parts (assistant or user turns), whole answers as base64 WAV (or the asked
format), streamed answers as base64 PCM16 deltas, ``stream_options.include_usage``. Streamed chunks have the
shape of openai's ``ChatCompletionChunk``: ``delta.audio`` is an object with ``id``, ``data`` and
``transcript`` (the text also comes as ``delta.content``), and the last audio update holds ``expires_at``."""

from __future__ import annotations

import time
import uuid

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from higgs_audio.engine import Request as EngineRequest
from higgs_audio.formats import encode_audio, pcm16
from higgs_audio.messages import AudioContent, Message, TextContent
from higgs_audio.prompt import build_context
from higgs_audio.server.backend import REPLICA_HEADER, Backend, Chunk, Finish, Work, next_event
from higgs_audio.server.errors import APIError
from higgs_audio.server.schemas import CHAT_PCM, ChatRequest
from higgs_audio.server.service import (
    Service,
    audio_bytes,
    b64,
    named_voice,
    observe_first_audio,
    sampling,
    sse_event,
)
from higgs_audio.voices import VoiceProfile


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
    voice, _ = named_voice(service, name, "audio.voice")
    if voice is None:
        return messages
    leading = next((i for i, m in enumerate(messages) if m.role != "system"), len(messages))
    if isinstance(voice, VoiceProfile) and leading:
        raise APIError(400, "a profile voice becomes the system prompt, but the messages have one: put the "
                       "speaker description in your system message instead", param="audio.voice")
    context = build_context(voices=voice)
    return messages[:leading] + context + messages[leading:]


def chat_request(service: Service, body: ChatRequest) -> EngineRequest:
    """The engine request of a chat completion (run off the event loop: it encodes the audio parts)."""
    stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    params = sampling(body, service.settings, body.max_completion_tokens or body.max_tokens)
    if stops:
        params["stop"] = stops
    messages = chat_voice(service, body, chat_messages(service, body))
    return service.api.request(messages=messages, force_audio="audio" in body.modalities, **params)


async def chat_completion(backend: Backend, request: Request, body: ChatRequest):
    want_audio = "audio" in body.modalities
    fmt = ("pcm" if body.audio.format == CHAT_PCM else body.audio.format) if body.audio else "wav"
    events = backend.generate(Work("chat", body, body.stream, request.state.request_id))
    created, ident = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
    audio_id = f"audio-{uuid.uuid4().hex}"

    def usage(end: Finish) -> dict:
        return {"prompt_tokens": end.prompt_tokens, "completion_tokens": end.completion_tokens,
                "total_tokens": end.prompt_tokens + end.completion_tokens}

    if not body.stream:
        whole = await next_event(events, request)
        end = await next_event(events, request)
        observe_first_audio(backend.metrics, request)
        message: dict = {"role": "assistant", "content": whole.text or None}
        if want_audio:
            data = await run_in_threadpool(encode_audio, whole.audio, backend.sample_rate, fmt)
            message["audio"] = {"id": audio_id, "data": b64(data), "expires_at": created + 3600,
                                "transcript": whole.text}
        answer = {"id": ident, "object": "chat.completion", "created": created, "model": body.model,
                  "choices": [{"index": 0, "message": message, "finish_reason": finish(end.reason)}],
                  "usage": usage(end)}
        return JSONResponse(answer, headers={REPLICA_HEADER: whole.replica})

    first = await next_event(events, request)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return sse_event({"id": ident, "object": "chat.completion.chunk", "created": created, "model": body.model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    async def deltas():
        yield chunk({"role": "assistant", "content": ""})
        event = first
        try:
            while isinstance(event, Chunk):
                delta: dict = {"content": event.text} if event.text else {}
                if want_audio and (len(event.audio) or event.text):  # openai's ChoiceDeltaAudio
                    delta["audio"] = {"id": audio_id}
                    if len(event.audio):
                        observe_first_audio(backend.metrics, request)
                        delta["audio"]["data"] = b64(pcm16(event.audio))
                    if event.text:
                        delta["audio"]["transcript"] = event.text
                if delta:
                    yield chunk(delta)
                event = await next_event(events, request)
        finally:
            await events.aclose()
        if want_audio:  # as OpenAI's last audio update: only its expiry
            yield chunk({"audio": {"id": audio_id, "expires_at": created + 3600}})
        yield chunk({}, finish(event.reason))
        if include_usage:
            yield sse_event({"id": ident, "object": "chat.completion.chunk", "created": created, "model": body.model,
                        "choices": [], "usage": usage(event)})
        yield sse_event("[DONE]")

    return StreamingResponse(deltas(), media_type="text/event-stream", headers={REPLICA_HEADER: first.replica})


def finish(reason: str) -> str:
    return "length" if reason in ("length", "max_audio", "timeout") else "stop"
