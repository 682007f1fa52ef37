"""/v1/audio/speech and /v1/audio/generation through httpx and the official openai client."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
import soundfile as sf
from openai import OpenAI

from tests.server.audio_check import assert_audio, decode

FORMATS = ["wav", "pcm", "flac", "mp3", "opus", "aac"]
TEXT = "Hello there, this is a test."
HOP = 960  # samples per audio frame at 24 kHz


def openai_client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=server.api_key or "unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(server) -> np.ndarray:
    """The non-streamed PCM of TEXT with seed 7: every other format must hold these samples."""
    with server.client() as c:
        r = c.post("/v1/audio/speech", json={"input": TEXT, "response_format": "pcm", "seed": 7, "stream": False})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/pcm"
    wave, _ = decode(r.content, "pcm")
    assert len(wave) > 0 and len(wave) % HOP == 0, len(wave)
    return wave


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_whole_file(server, reference, fmt):
    response = openai_client(server).audio.speech.create(
        model="tts-1", voice="alloy", input=TEXT, response_format=fmt, extra_body={"seed": 7, "stream": False}
    )
    wave = assert_audio(response.content, fmt, len(reference))
    if fmt in ("wav", "flac", "pcm"):  # lossless: the same samples
        np.testing.assert_allclose(wave, reference, atol=1e-4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_streamed(server, reference, fmt):
    client = openai_client(server)
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format=fmt, extra_body={"seed": 7}
    ) as response:
        assert response.headers.get("content-length") is None  # really streamed (chunked)
        data = b"".join(response.iter_bytes())
    wave = assert_audio(data, fmt, len(reference))
    if fmt in ("wav", "flac", "pcm"):
        np.testing.assert_allclose(wave, reference, atol=1e-3)


def test_stream_sends_audio_before_the_end(server):
    """The first bytes leave once the first frames decode (after the 8-step delay pattern), long before
    the 40-step generation ends."""
    body = {"input": TEXT, "response_format": "pcm", "seed": 3, "stream": True}
    with server.client() as c, c.stream("POST", "/v1/audio/speech", json=body) as r:
        start = time.perf_counter()
        arrivals = []
        for chunk in r.iter_raw():
            arrivals.append((time.perf_counter() - start, len(chunk)))
    assert len(arrivals) >= 2, arrivals
    first, last = arrivals[0][0], arrivals[-1][0]
    assert first < 0.7 * last, arrivals


def test_streamed_equals_whole_float_wav(server):
    """Streamed and whole WAV of a longer utterance agree within 1e-3 (no clicks at chunk seams)."""
    body = {"input": "A somewhat longer sentence to cross several chunks.", "response_format": "wav", "seed": 11}
    with server.client() as c:
        whole = c.post("/v1/audio/speech", json={**body, "stream": False})
        streamed = c.post("/v1/audio/speech", json={**body, "stream": True})
    a, _ = decode(whole.content, "wav")
    b, _ = decode(streamed.content, "wav")
    assert len(a) == len(b) > 10 * HOP
    assert np.abs(a - b).max() <= 1e-3


def test_sse_stream(server, reference):
    body = {"input": TEXT, "response_format": "pcm", "seed": 7, "stream_format": "sse"}
    with server.client() as c:
        r = c.post("/v1/audio/speech", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in r.text.splitlines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) >= 2 and events[-1]["type"] == "speech.audio.done"
    usage = events[-1]["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    np.testing.assert_allclose(decode(pcm, "pcm")[0], reference, atol=1e-3)


def test_same_seed_same_audio_other_seed_other_audio(server, reference):
    with server.client() as c:
        same = c.post("/v1/audio/speech", json={"input": TEXT, "response_format": "pcm", "seed": 7, "stream": False})
        other = c.post("/v1/audio/speech", json={"input": TEXT, "response_format": "pcm", "seed": 8, "stream": False})
    np.testing.assert_array_equal(decode(same.content, "pcm")[0], reference)
    b = decode(other.content, "pcm")[0]
    assert len(b) != len(reference) or not np.allclose(b, reference, atol=1e-3)


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_speed_changes_duration(server, reference, speed):
    for stream in (False, True):
        body = {"input": TEXT, "response_format": "pcm", "seed": 7, "speed": speed, "stream": stream}
        with server.client() as c:
            r = c.post("/v1/audio/speech", json=body)
        n = len(decode(r.content, "pcm")[0])
        assert abs(n - len(reference) / speed) <= 0.05 * len(reference) / speed, (stream, n)


def test_generation_route_with_a_profile_description(server):
    with server.client() as c:
        r = c.post("/v1/audio/generation", json={"text": TEXT, "voice_profile": "urgent", "seed": 1})
        plain = c.post("/v1/audio/generation", json={"text": TEXT, "seed": 1})
        named = c.post("/v1/audio/generation", json={"text": TEXT, "voice_profile": "male_en", "seed": 1})
    for response in (r, plain, named):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "audio/wav"
    wave = assert_audio(r.content, "wav", len(decode(r.content, "wav")[0]))
    assert len(wave) > 0
    # The profile is part of the prompt: a different speaker description changes the audio.
    assert r.content != plain.content and named.content != plain.content


def _sine_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


def test_inline_reference_voice(server):
    clip = base64.b64encode(_sine_wav()).decode()
    body = {"input": TEXT, "response_format": "wav", "seed": 5, "stream": False,
            "reference_audio": clip, "reference_text": "A low hum."}
    with server.client() as c:
        cloned = c.post("/v1/audio/speech", json=body)
        data_uri = c.post("/v1/audio/speech", json={**body, "reference_audio": "data:audio/wav;base64," + clip})
        plain = c.post("/v1/audio/speech", json={**body, "reference_audio": None, "reference_text": None})
        missing_text = c.post("/v1/audio/speech", json={**body, "reference_text": None})
        garbage = c.post("/v1/audio/speech", json={**body, "reference_audio": base64.b64encode(b"nope").decode()})
        not_base64 = c.post("/v1/audio/speech", json={**body, "reference_audio": "\u00d6 not base64"})
    assert cloned.status_code == 200 and data_uri.content == cloned.content
    assert cloned.content != plain.content
    assert missing_text.status_code == 400 and missing_text.json()["error"]["param"] == "reference_text"
    assert garbage.status_code == 400 and "audio" in garbage.json()["error"]["message"]
    assert not_base64.status_code == 400 and not_base64.json()["error"]["param"] == "reference_audio"


def test_a_voice_per_speaker_and_a_system_prompt(server):
    dialogue = "[SPEAKER0] Did you hear that?\n[SPEAKER1] Hear what?"
    body = {"input": dialogue, "response_format": "pcm", "seed": 4, "stream": False}
    two = {"SPEAKER0": "profile:a bright young woman", "SPEAKER1": "profile:an old man, hoarse"}
    with server.client() as c:
        def speak(**extra):
            return c.post("/v1/audio/speech", json={**body, **extra})

        voiced, again = speak(speakers=two), speak(speakers=two)
        other = speak(speakers={**two, "SPEAKER1": "profile:a child, giggling"})
        plain, chosen = speak(), speak(speakers={"SPEAKER0": "alloy"})  # OpenAI names: the model chooses
        instructed = speak(system="You read dialogues as a radio play.")
        unknown = speak(speakers={**two, "SPEAKER1": "nobody"})
        both = speak(speakers=two, voice="profile:calm")
        untagged = speak(speakers={"NARRATOR": "profile:calm"})
    for response in (voiced, other, plain, chosen, instructed):
        assert response.status_code == 200, response.text
    # Each speaker's voice and the system prompt are part of the prompt: they change the audio, repeatably.
    assert voiced.content == again.content and voiced.content != other.content != plain.content
    assert chosen.content == plain.content and instructed.content != plain.content
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "speakers.SPEAKER1"
    assert both.status_code == 400 and both.json()["error"]["param"] == "speakers"
    assert untagged.status_code == 400 and "speakers" in untagged.json()["error"]["message"]


def test_chunk_chooses_how_a_text_is_split(server):
    def generations() -> float:
        return sum(v for k, v in server.metrics().items() if k.startswith("higgs_generations_total"))

    body = {"input": "[SPEAKER0] One thing.\n[SPEAKER1] Then another.", "response_format": "pcm", "seed": 2,
            "stream": False}
    counts = []
    with server.client() as c:
        for extra in ({}, {"chunk": "speaker"}):
            before = generations()
            assert c.post("/v1/audio/speech", json={**body, **extra}).status_code == 200
            counts.append(generations() - before)
        wrong = c.post("/v1/audio/speech", json={**body, "chunk": "chapter"})
    assert counts == [1, 2]  # a short text is one generation, unless asked to go turn by turn
    assert wrong.status_code == 400 and "chunk" in wrong.json()["error"]["message"]


def test_scenes_route(server):
    from higgs_audio.cli import SCENES

    with server.client() as c:
        scenes = c.get("/v1/scenes").json()["data"]
    assert {s["id"]: s["description"] for s in scenes} == SCENES


def test_a_voice_used_again_is_copied_from_the_prefix_cache(server):
    """The second request in a cloned voice prefills only what differs from the first one's prompt."""
    clip = base64.b64encode(_sine_wav(seconds=3.0)).decode()  # 75 frames
    body = {"response_format": "pcm", "seed": 5, "stream": False, "reference_audio": clip,
            "reference_text": "A low hum, recorded twice, in a quiet room."}

    def copied() -> float:
        return server.metrics()['higgs_prompt_positions_total{source="prefix_cache"}']

    with server.client() as c:
        assert c.post("/v1/audio/speech", json={**body, "input": "The first sentence."}).status_code == 200
        before = copied()
        assert c.post("/v1/audio/speech", json={**body, "input": "Another one."}).status_code == 200
    assert copied() - before >= 64  # the transcript's turn and most of the clip (about 100 positions)
    assert server.metrics()["higgs_prefix_cache_bytes"] > 0


def test_voice_library_routes(server):
    with server.client() as c:
        added = c.post("/v1/voices", data={"name": "hum", "transcript": "A low hum."},
                       files={"file": ("hum.wav", _sine_wav(), "audio/wav")})
        assert added.status_code == 201, added.text
        assert added.json()["id"] == "hum"
        assert (server.voices / "hum.wav").is_file() and (server.voices / "hum.txt").read_text().strip()
        listed = {v["id"] for v in c.get("/v1/voices").json()["data"]}
        assert {"hum", "profile:male_en"} <= listed
        again = c.post("/v1/voices", data={"name": "hum", "transcript": "x"},
                       files={"file": ("hum.wav", _sine_wav(), "audio/wav")})
        assert again.status_code == 400 and "already exists" in again.json()["error"]["message"]
        bad_name = c.post("/v1/voices", data={"name": "../evil", "transcript": "x"},
                          files={"file": ("a.wav", _sine_wav(), "audio/wav")})
        assert bad_name.status_code == 400
        not_audio = c.post("/v1/voices", data={"name": "junk", "transcript": "x"},
                           files={"file": ("junk.wav", b"not audio at all", "audio/wav")})
        assert not_audio.status_code == 400 and not (server.voices / "junk.wav").exists()
        no_text = c.post("/v1/voices", data={"name": "mute"}, files={"file": ("m.wav", _sine_wav(), "audio/wav")})
        assert no_text.status_code == 400 and no_text.json()["error"]["param"] == "transcript"
        profile = c.post("/v1/voices", data={"name": "calm", "description": "A calm, low voice."})
        assert profile.status_code == 201 and profile.json()["id"] == "profile:calm"

        body = {"input": TEXT, "response_format": "pcm", "seed": 5, "stream": False}
        with_voice = c.post("/v1/audio/speech", json={**body, "voice": "hum"})
        with_profile = c.post("/v1/audio/speech", json={**body, "voice": "profile:calm"})
        without = c.post("/v1/audio/speech", json=body)
        assert with_voice.status_code == with_profile.status_code == 200
        assert with_voice.content != without.content and with_profile.content != without.content
        unknown = c.post("/v1/audio/speech", json={**body, "voice": "nobody"})
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "voice"

        assert c.delete("/v1/voices/hum").json()["deleted"] is True
        assert c.delete("/v1/voices/profile:calm").status_code == 200
        gone = c.delete("/v1/voices/hum")
        assert gone.status_code == 404 and gone.json()["error"]["type"] == "not_found_error"
        assert not (server.voices / "hum.wav").exists()


def test_models_and_health(server):
    with server.client() as c:
        models = c.get("/v1/models").json()
        health = c.get("/health").json()
    assert models["data"][0]["id"] == "higgs-audio-v2"
    assert openai_client(server).models.list().data[0].id == "higgs-audio-v2"
    assert health["status"] == "ok" and health["max_batch"] == 8


def test_web_page_is_served(server):
    with server.client() as c:
        r = c.get("/")
    assert r.status_code == 200 and "/v1/audio/speech" in r.text


def test_metrics_are_prometheus_text(server, reference):
    with server.client() as c:
        c.post("/v1/audio/speech", json={"input": TEXT, "response_format": "pcm", "seed": 1})
        r = c.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    for name, kind in [("higgs_requests_total", "counter"), ("higgs_request_duration_seconds", "histogram"),
                       ("higgs_time_to_first_audio_seconds", "histogram"), ("higgs_audio_seconds_total", "counter"),
                       ("higgs_queue_depth", "gauge"), ("higgs_batch_size", "histogram")]:
        assert f"# TYPE {name} {kind}" in lines
    m = server.metrics()
    assert m['higgs_requests_total{route="/v1/audio/speech",status="200"}'] >= 2
    assert m['higgs_time_to_first_audio_seconds_count{route="/v1/audio/speech"}'] >= 2
    assert m['higgs_time_to_first_audio_seconds_bucket{route="/v1/audio/speech",le="+Inf"}'] >= 2
    assert m["higgs_audio_seconds_total"] >= len(reference) / 24000


def test_cors_preflight_for_an_allowed_origin_only(server):
    headers = {"Origin": "http://page.test", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "content-type"}
    with server.client() as c:
        allowed = c.options("/v1/audio/speech", headers=headers)
        other = c.options("/v1/audio/speech", headers={**headers, "Origin": "http://elsewhere.test"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://page.test"
    assert "access-control-allow-origin" not in other.headers


def test_request_ids_in_headers_and_log_without_payloads(server):
    secret_text = "Xyzzy plugh unique words."
    with server.client() as c:
        r = c.post("/v1/audio/speech", json={"input": secret_text, "response_format": "pcm", "seed": 1},
                   headers={"X-Request-Id": "req-abc-123"})
        generated = c.get("/health")
    assert r.headers["x-request-id"] == "req-abc-123"
    assert len(generated.headers["x-request-id"]) >= 8
    log = server.wait_for_log("req-abc-123 POST /v1/audio/speech 200")
    assert "req-abc-123 POST /v1/audio/speech 200" in log
    assert secret_text not in log
