"""What OpenAI clients send and expect: model names, voices as objects, typed stream chunks, error hygiene."""

from __future__ import annotations

import base64
import json
import tempfile

import numpy as np
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from higgs_audio.config import DEFAULT_MODEL
from tests.server.audio_check import decode
from tests.server.test_chat import SMART_VOICE, _clip_b64
from tests.server.test_speech import openai_client

SHORT = {"input": "Hello.", "response_format": "pcm", "stream": False, "seed": 3, "max_new_tokens": 12}


@pytest.fixture(scope="module")
def tone(server):
    """A library voice called "tone"."""
    with server.client() as c:
        r = c.post("/v1/voices", data={"name": "tone", "transcript": "A clear tone.", "force": "true"},
                   files={"file": ("tone.wav", base64.b64decode(_clip_b64()), "audio/wav")})
        assert r.status_code == 201, r.text
        yield "tone"
        c.delete("/v1/voices/tone")


@pytest.mark.parametrize("model", [None, "higgs-audio-v2", "tts-1", "tts-1-hd", "gpt-4o-mini-tts", DEFAULT_MODEL])
def test_served_name_and_aliases_are_accepted(server, model):
    with server.client() as c:
        r = c.post("/v1/audio/speech", json={**SHORT, **({"model": model} if model else {})})
    assert r.status_code == 200, r.text
    assert len(r.content) > 0


def test_unknown_model_is_404_model_not_found(server):
    with server.client() as c:
        speech = c.post("/v1/audio/speech", json={**SHORT, "model": "gpt-5"})
        chat = c.post("/v1/chat/completions", json={"model": "whisper-1", "messages": SMART_VOICE})
    for r in (speech, chat):
        assert r.status_code == 404
        error = r.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert "higgs-audio-v2" in error["message"]  # says what is served
    with pytest.raises(openai.NotFoundError):
        openai_client(server).audio.speech.create(model="gpt-5", voice="alloy", input="Hi.")


def test_voice_as_an_object_means_its_id(server, tone):
    client = openai_client(server)
    extra = {"seed": 5, "stream": False, "max_new_tokens": 12}
    by_object = client.audio.speech.create(model="tts-1", voice={"id": tone}, input="Hi there.",
                                           response_format="pcm", extra_body=extra).content
    by_name = client.audio.speech.create(model="tts-1", voice=tone, input="Hi there.", response_format="pcm",
                                         extra_body=extra).content
    plain = client.audio.speech.create(model="tts-1", voice="alloy", input="Hi there.", response_format="pcm",
                                       extra_body=extra).content
    assert by_object == by_name and by_object != plain
    body = {"messages": SMART_VOICE[1:], "seed": 4, "max_tokens": 12}
    usage = {}
    with server.client() as c:
        for key, voice in [("object", {"id": tone}), ("name", tone), ("none", "alloy")]:
            r = c.post("/v1/chat/completions", json={**body, "audio": {"voice": voice, "format": "wav"}})
            assert r.status_code == 200, r.text
            usage[key] = r.json()["usage"]["prompt_tokens"]
        unknown = c.post("/v1/audio/speech", json={**SHORT, "voice": {"id": "nobody"}})
    assert usage["object"] == usage["name"] > usage["none"]  # the voice's reference clip is in the prompt
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "voice_not_found"


def test_error_messages_show_no_server_paths(server, tone):
    with server.client() as c:
        broken = c.post("/v1/voices", data={"name": "broken", "transcript": "Words."},
                        files={"file": ("clip.wav", b"RIFF not really audio", "audio/wav")})
        taken = c.post("/v1/voices", data={"name": tone, "transcript": "Words."},
                       files={"file": ("tone.wav", base64.b64decode(_clip_b64()), "audio/wav")})
    assert broken.status_code == taken.status_code == 400
    for r in (broken, taken):
        message = r.json()["error"]["message"]
        for secret in (tempfile.gettempdir(), str(server.voices), "/home/", "/root"):
            assert secret not in message, message
    assert "upload.wav" in broken.json()["error"]["message"]  # still names what failed
    assert "--force" in taken.json()["error"]["message"]


def test_built_in_profiles_cannot_be_deleted(server):
    with server.client() as c:
        r = c.delete("/v1/voices/profile:male_en")
        listed = [v["id"] for v in c.get("/v1/voices").json()["data"]]
    assert r.status_code == 403, r.text
    assert "built-in" in r.json()["error"]["message"] and r.json()["error"]["code"] == "builtin_voice"
    assert "profile:male_en" in listed


def test_streamed_chat_chunks_are_openai_chunk_objects(server):
    """Every SSE chunk validates as the installed openai package's ChatCompletionChunk, with delta.audio an
    object (openai >= 2), and the openai client reads the audio and its transcript from it."""
    body = {"messages": SMART_VOICE, "seed": 2, "max_tokens": 30, "stream": True,
            "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"}}
    with server.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(line), strict=False) for line in lines[:-1]]
    audio = [ch.choices[0].delta.audio for ch in chunks if ch.choices and ch.choices[0].delta.audio]
    assert audio and all(type(a).__name__ == "ChoiceDeltaAudio" and not a.model_extra for a in audio)
    assert len({a.id for a in audio}) == 1
    assert audio[-1].expires_at and audio[-1].data is None  # the last audio update: its expiry only
    pcm = b"".join(base64.b64decode(a.data) for a in audio if a.data)
    assert len(pcm) > 0

    stream = openai_client(server).chat.completions.create(
        model="tts-1", messages=SMART_VOICE, stream=True, modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"}, max_tokens=30, extra_body={"seed": 2})
    through_client = b""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.audio and chunk.choices[0].delta.audio.data:
            through_client += base64.b64decode(chunk.choices[0].delta.audio.data)
    ours, theirs = decode(pcm, "pcm16")[0], decode(through_client, "pcm16")[0]
    assert len(ours) == len(theirs) and np.abs(ours - theirs).max() <= 1e-3  # same seed: the same audio


def test_redact_paths_keeps_routes_and_cuts_server_paths():
    from pathlib import Path

    from higgs_audio.server.errors import redact_paths

    home = str(Path.home())
    assert redact_paths(f"voice 'a' already exists in {home}/.local/share/higgs-audio/voices; pass --force") == (
        "voice 'a' already exists in voices; pass --force")
    assert redact_paths(f"{tempfile.gettempdir()}/tmpab12/upload.flac is not a readable audio file") == (
        "upload.flac is not a readable audio file")
    assert redact_paths("~/voices/x.wav does not exist") == "x.wav does not exist"
    kept = "unknown voice 'x'; GET /v1/voices lists them, 1/2 of data: URIs"
    assert redact_paths(kept) == kept
