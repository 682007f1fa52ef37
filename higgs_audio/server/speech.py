"""``/v1/audio/speech`` and ``/v1/audio/generation``: text in, audio out, whole or streamed."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from higgs_audio.formats import FORMATS, StreamEncoder, encode_audio
from higgs_audio.messages import AudioContent
from higgs_audio.server.backend import REPLICA_HEADER, Backend, Chunk, Work, next_event
from higgs_audio.server.errors import APIError
from higgs_audio.server.schemas import SpeechRequest
from higgs_audio.server.service import (
    Service,
    audio_bytes,
    b64,
    library_voice,
    named_voice,
    observe_first_audio,
    sse_event,
)
from higgs_audio.voices import VoiceProfile, VoiceRef


def speech_voice(service: Service, body: SpeechRequest):
    """(voice, system prompt) of a speech request: a reference clip, a voice per speaker, or one voice."""
    if body.speakers and (body.voice or body.reference_audio is not None):
        raise APIError(400, "give either speakers (a voice per [SPEAKERn] tag) or voice/reference_audio, "
                       "not both", param="speakers")
    if body.reference_audio is not None:
        if not body.reference_text:
            raise APIError(400, "reference_audio needs reference_text, the words spoken in it",
                           param="reference_text")
        data = audio_bytes(body.reference_audio, service.settings, "reference_audio")
        codes = service.api.encode_audio(AudioContent(data=data))
        return VoiceRef(codes, body.reference_text), body.system
    if body.speakers:
        voices = {tag: named_voice(service, name, f"speakers.{tag}")[0] for tag, name in body.speakers.items()}
        return {tag: v for tag, v in voices.items() if v is not None}, body.system
    if not body.voice:
        return None, body.system
    voice, preset = named_voice(service, body.voice, "voice")
    return voice, body.system or preset


def profile_voice(service: Service, profile: str | None):
    """``voice_profile``: a library profile or voice name, else a free-text description of the speaker."""
    if not profile or not profile.strip():
        return None, None
    return library_voice(service, profile.strip()) or (VoiceProfile(profile.strip()), None)


async def audio_response(backend: Backend, request: Request, work: Work) -> Response:
    """The route's response to ``work`` (a speech or generation request): the whole file, or its bytes (or
    SSE events) as they are encoded."""
    body, rate = work.body, backend.sample_rate
    fmt = body.response_format
    events = backend.generate(work)
    if not work.stream:
        chunk = await next_event(events, request)
        await next_event(events, request)  # the Finish
        observe_first_audio(backend.metrics, request)
        data = await run_in_threadpool(encode_audio, chunk.audio, rate, fmt)
        return Response(data, media_type=FORMATS[fmt].media_type, headers={REPLICA_HEADER: chunk.replica})
    first = await next_event(events, request)
    as_sse = body.stream_format == "sse"

    async def chunks():
        encoder = StreamEncoder(fmt, rate)
        event = first
        try:
            while isinstance(event, Chunk):
                data = encoder.write(event.audio) if len(event.audio) else b""
                if data:
                    observe_first_audio(backend.metrics, request)
                    yield sse_event({"type": "speech.audio.delta", "audio": b64(data)}) if as_sse else data
                event = await next_event(events, request)
        finally:
            await events.aclose()
        tail = encoder.close()
        if tail:
            yield sse_event({"type": "speech.audio.delta", "audio": b64(tail)}) if as_sse else tail
        if as_sse:
            yield sse_event({"type": "speech.audio.done", "usage": {
                "input_tokens": event.prompt_tokens, "output_tokens": event.completion_tokens,
                "total_tokens": event.prompt_tokens + event.completion_tokens}})

    return StreamingResponse(chunks(), media_type="text/event-stream" if as_sse else FORMATS[fmt].media_type,
                             headers={REPLICA_HEADER: first.replica})
