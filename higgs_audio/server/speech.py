"""``/v1/audio/speech`` and ``/v1/audio/generation``: text in, audio out, whole or streamed."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from higgs_audio.messages import AudioContent
from higgs_audio.prompt import VoiceProfile, VoiceRef
from higgs_audio.server.encoding import MEDIA_TYPES, StreamEncoder, encode_file
from higgs_audio.server.errors import APIError
from higgs_audio.server.pipeline import JobAudio
from higgs_audio.server.schemas import AudioOptions, SpeechRequest
from higgs_audio.server.service import (
    OPENAI_VOICES,
    Service,
    audio_bytes,
    b64,
    library_voice,
    observe_first_audio,
    sse_event,
    submit,
)


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


def named_voice(service: Service, name: str, param: str):
    """(voice, preset system prompt) of a voice name: the library's, a 'profile:' description, or (None, None)
    for OpenAI's built-in names, which mean 'let the model choose'."""
    found = library_voice(service, name)
    if found is not None:
        return found
    if name.startswith("profile:"):
        return VoiceProfile(name[len("profile:"):].strip()), None
    if name.lower() in OPENAI_VOICES:
        return None, None
    raise APIError(400, f"unknown voice {name!r}; GET /v1/voices lists the voices, or use "
                   "'profile:<description>'", param=param, code="voice_not_found")


def profile_voice(service: Service, profile: str | None):
    """``voice_profile``: a library profile or voice name, else a free-text description of the speaker."""
    if not profile or not profile.strip():
        return None, None
    return library_voice(service, profile.strip()) or (VoiceProfile(profile.strip()), None)


async def audio_response(service: Service, request: Request, body: AudioOptions, build, follow=None) -> Response:
    """Speak the request ``build`` makes (and, with ``follow``, the chunks after it: see ``JobAudio``)."""
    job = await submit(service, request, build)
    audio = JobAudio(job, service.codec, speed=body.speed, chunk_frames=service.settings.chunk_frames,
                     follow=follow)
    rate, fmt, route = service.api.sample_rate, body.response_format, request.url.path
    if not body.stream and body.stream_format == "audio":
        wave = await audio.whole(request)
        observe_first_audio(service, request, route, audio)
        data = await run_in_threadpool(encode_file, wave, rate, fmt)
        return Response(data, media_type=MEDIA_TYPES[fmt])
    await audio.started(request)
    as_sse = body.stream_format == "sse"

    async def chunks():
        encoder = StreamEncoder(fmt, rate)
        async for wave, _ in audio.stream():
            data = encoder.write(wave) if len(wave) else b""
            if data:
                observe_first_audio(service, request, route, audio)
                yield sse_event({"type": "speech.audio.delta", "audio": b64(data)}) if as_sse else data
        tail = encoder.close()
        if tail:
            yield sse_event({"type": "speech.audio.delta", "audio": b64(tail)}) if as_sse else tail
        if as_sse:
            prompt_tokens, steps = audio.usage()
            yield sse_event({"type": "speech.audio.done", "usage": {
                "input_tokens": prompt_tokens, "output_tokens": steps, "total_tokens": prompt_tokens + steps}})

    return StreamingResponse(chunks(), media_type="text/event-stream" if as_sse else MEDIA_TYPES[fmt])
