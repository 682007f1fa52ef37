"""/v1/chat/completions with audio, as the reference's vLLM server is called (spec §9)."""

from __future__ import annotations

import base64
import io

import numpy as np
import soundfile as sf

from tests.server.audio_check import assert_audio, decode
from tests.server.test_speech import openai_client


def _clip_b64() -> str:
    t = np.arange(16000) / 16000
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 16000, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


VOICE_CLONE = [
    {"role": "user", "content": "A clear tone."},
    {"role": "assistant", "content": [{"type": "input_audio", "input_audio": {"data": _clip_b64(), "format": "wav"}}]},
    {"role": "user", "content": "The sun rises in the east and sets in the west."},
]
SMART_VOICE = [
    {"role": "system", "content": "Generate audio following instruction.\n\n<|scene_desc_start|>\n"
                                  "Audio is recorded from a quiet room.\n<|scene_desc_end|>"},
    {"role": "user", "content": "The sun rises in the east and sets in the west."},
]
MULTI_SPEAKER = [
    {"role": "system", "content": "You are an AI assistant designed to convert text into speech.\n\n"
                                  "<|scene_desc_start|>\nSPEAKER0: feminine\nSPEAKER1: masculine\n<|scene_desc_end|>"},
    {"role": "user", "content": "[SPEAKER0] Hello. [SPEAKER1] Hi there."},
]


def _create(server, messages, **kwargs):
    return openai_client(server).chat.completions.create(
        model="higgs-audio-v2", messages=messages, modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"}, temperature=1.0, top_p=0.95,
        extra_body={"top_k": 50, "seed": 4}, max_completion_tokens=40, **kwargs,
    )


def test_tasks_of_the_reference_client_return_wav(server):
    waves = []
    for messages in (VOICE_CLONE, SMART_VOICE, MULTI_SPEAKER):
        completion = _create(server, messages)
        choice = completion.choices[0]
        assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
        data = base64.b64decode(choice.message.audio.data)
        wave, _ = decode(data, "wav")
        assert_audio(data, "wav", len(wave))
        assert len(wave) > 0
        usage = completion.usage
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        waves.append(wave)
    # The reference voice is part of the prompt: cloning gives other audio than the smart voice.
    assert len(waves[0]) != len(waves[1]) or not np.allclose(waves[0], waves[1])


def test_audio_in_a_user_turn_is_accepted(server):
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Say this in the voice of the clip."},
        {"type": "input_audio", "input_audio": {"data": _clip_b64(), "format": "wav"}},
    ]}]
    assert _create(server, messages).choices[0].message.audio.data


def test_streamed_deltas_are_pcm16_equal_to_the_whole_wav(server):
    whole = _create(server, VOICE_CLONE)
    expected, _ = decode(base64.b64decode(whole.choices[0].message.audio.data), "wav")
    stream = _create(server, VOICE_CLONE, stream=True, stream_options={"include_usage": True})
    pcm, finish, usage, roles = b"", None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        roles.append(delta.role)
        if delta.audio is not None and delta.audio.data:
            pcm += base64.b64decode(delta.audio.data)
        finish = chunk.choices[0].finish_reason or finish
    assert roles[0] == "assistant" and finish in ("stop", "length")
    assert usage is not None and usage.total_tokens == whole.usage.total_tokens
    got, _ = decode(pcm, "pcm16")
    assert len(got) == len(expected) > 0
    assert np.abs(got - expected).max() <= 1e-3


def test_library_voice_by_audio_voice(server):
    with server.client() as c:
        c.post("/v1/voices", data={"name": "tone", "transcript": "A clear tone."},
               files={"file": ("tone.wav", base64.b64decode(_clip_b64()), "audio/wav")})
        try:
            body = {"messages": SMART_VOICE[1:], "seed": 4, "max_tokens": 40, "audio": {"voice": "tone"}}
            named = c.post("/v1/chat/completions", json=body)
            plain = c.post("/v1/chat/completions", json={**body, "audio": {"voice": "alloy"}})
            unknown = c.post("/v1/chat/completions", json={**body, "audio": {"voice": "nobody"}})
        finally:
            c.delete("/v1/voices/tone")
    assert named.status_code == plain.status_code == 200
    assert named.json()["usage"]["prompt_tokens"] > plain.json()["usage"]["prompt_tokens"]
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "audio.voice"


def test_text_only_modality_returns_no_audio(server):
    completion = openai_client(server).chat.completions.create(
        model="higgs-audio-v2", messages=SMART_VOICE, modalities=["text"], max_tokens=5, extra_body={"seed": 1}
    )
    assert completion.choices[0].message.audio is None
    assert completion.usage.completion_tokens == 5


def test_bad_chat_requests_are_openai_errors(server):
    with server.client() as c:
        cases = [
            {"messages": []},
            {"messages": [{"role": "robot", "content": "hi"}]},
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            {"messages": [{"role": "user", "content": [{"type": "input_audio",
                                                        "input_audio": {"data": "bm90IGF1ZGlv"}}]}]},
            {"messages": SMART_VOICE, "n": 2},
        ]
        for body in cases:
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code == 400, (body, r.text)
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_a_prompt_longer_than_the_cache_is_a_400(server):
    """45 s of reference audio is 1125 frames: more than the test server's 1024 positions per request hold
    (40.6 s of audio once the delay pattern's 9 columns and a position to generate are counted)."""
    t = np.arange(45 * 8000) / 8000
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 8000, format="WAV")
    clip = base64.b64encode(buffer.getvalue()).decode()
    messages = [{"role": "user", "content": "Hum."},
                {"role": "assistant", "content": [{"type": "input_audio", "input_audio": {"data": clip}}]},
                {"role": "user", "content": "Again."}]
    with server.client() as c:
        r = c.post("/v1/chat/completions", json={"messages": messages})
        health = c.get("/health").json()
    assert r.status_code == 400 and "at most 40.6 s" in r.json()["error"]["message"], r.text
    assert health["active"] == 0 and health["queued"] == 0


def test_streamed_text_deltas_add_up_to_the_whole_answer(server):
    """A text answer (no forced audio) streams as content deltas that join to the non-streamed content."""
    client = openai_client(server)
    kwargs = dict(model="higgs-audio-v2", messages=SMART_VOICE[1:], modalities=["text"], temperature=1.0,
                  extra_body={"seed": 5}, max_completion_tokens=24)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        stream=True, **kwargs) if chunk.choices)
    assert whole and streamed == whole
