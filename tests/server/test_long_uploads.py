"""A reference clip longer than a prompt can hold is refused from its header, before anything is decoded.

The clip is an hour of silence as FLAC: a few hundred KB that would decode to hundreds of MB. Each route
that takes a clip must answer 400 naming the limit within a second, and the server's peak memory must not
grow by 50 MB (Linux: the peak resident size is reset through ``/proc/PID/clear_refs`` before each request).
"""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

RATE = 8000
HOUR = 3600
# The test server holds 1024 positions: (1024 - 8 codebooks - 2) / 25 frames per second.
LIMIT = "at most 40.6 s"


@pytest.fixture(scope="module")
def hour_of_silence() -> bytes:
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", RATE, 1, format="FLAC", subtype="PCM_16") as f:
        minute = np.zeros(60 * RATE, dtype=np.int16)
        for _ in range(HOUR // 60):
            f.write(minute)
    data = buffer.getvalue()
    assert sf.info(io.BytesIO(data)).duration == HOUR
    return data


def _kib(status: Path, key: str) -> int:
    line = next(line for line in status.read_text().splitlines() if line.startswith(key + ":"))
    return int(line.split()[1])


def _measured(server, send):
    """(response, seconds, growth of the server's peak resident memory in MB) of one request."""
    proc = Path(f"/proc/{server.process.pid}")
    (proc / "clear_refs").write_text("5")  # peak RSS := current RSS
    before = _kib(proc / "status", "VmRSS")
    with server.client() as c:
        start = time.perf_counter()
        response = send(c)
        seconds = time.perf_counter() - start
    return response, seconds, (_kib(proc / "status", "VmHWM") - before) / 1024


def _chat(data: bytes):
    clip = base64.b64encode(data).decode()
    messages = [{"role": "assistant", "content": [{"type": "input_audio",
                                                   "input_audio": {"data": clip, "format": "flac"}}]},
                {"role": "user", "content": "Hello."}]
    return lambda c: c.post("/v1/chat/completions", json={"messages": messages, "modalities": ["text", "audio"]})


def _speech(data: bytes):
    body = {"input": "Hello.", "reference_audio": base64.b64encode(data).decode(), "reference_text": "Silence."}
    return lambda c: c.post("/v1/audio/speech", json=body)


def _voices(data: bytes):
    return lambda c: c.post("/v1/voices", data={"name": "hour", "transcript": "Silence."},
                            files={"file": ("hour.flac", data, "audio/flac")})


@pytest.mark.parametrize("route", [_chat, _speech, _voices], ids=["chat", "speech", "voices"])
def test_an_hour_long_clip_is_refused_at_once(server, hour_of_silence, route):
    send = route(hour_of_silence)
    send_warm = route(hour_of_silence[:1])  # warms the route (a 400 for a broken file) so imports do not count
    with server.client() as c:
        assert send_warm(c).status_code == 400
    response, seconds, growth_mb = _measured(server, send)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "3600.0 s" in message and LIMIT in message, message
    assert seconds < 1.0, f"{seconds:.2f} s"
    assert growth_mb < 50, f"peak memory grew by {growth_mb:.0f} MB"
    with server.client() as c:
        assert "hour" not in {v["id"] for v in c.get("/v1/voices").json()["data"]}
