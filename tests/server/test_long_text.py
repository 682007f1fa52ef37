"""/v1/audio/speech with texts longer than one chunk: spoken chunk after chunk, streamed as they come."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.server.audio_check import decode
from tests.server.conftest import start_server, stop_server

WORDS = 9  # --chunk-words: each paragraph of text() is one chunk
PARAGRAPH = "The quick brown fox jumps over the dog."


def text(paragraphs: int) -> str:
    return "\n\n".join(f"{PARAGRAPH[:-1]} {i}." if i else PARAGRAPH for i in range(paragraphs))


@pytest.fixture(scope="module")
def long_server(tmp_path_factory, tiny_original, tiny_codec):
    s = start_server(tmp_path_factory.mktemp("long"), tiny_original, tiny_codec, "--max-batch", "2",
                     "--max-new-tokens", "16", "--chunk-words", str(WORDS), "--prefill-chunk", "64")
    yield s
    stop_server(s)


def generations(server) -> float:
    return sum(v for k, v in server.metrics().items() if k.startswith("higgs_generations_total"))


def settle(server) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with server.client() as c:
            stats = c.get("/health").json()
        if stats["active"] == 0 and stats["queued"] == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"the server is still busy: {stats}")


def test_audio_grows_with_the_text(long_server):
    lengths = []
    with long_server.client() as c:
        for n in (1, 3, 6):
            before = generations(long_server)
            r = c.post("/v1/audio/speech", json={"input": text(n), "response_format": "pcm", "stream": False,
                                                  "seed": 9})
            assert r.status_code == 200, r.text
            assert generations(long_server) - before == n  # one generation per chunk
            lengths.append(len(decode(r.content, "pcm")[0]))
    assert 0 < lengths[0] < lengths[1] < lengths[2]
    assert lengths[2] > 1.5 * lengths[1]


def test_streamed_whole_equals_whole(long_server):
    """The chunks are decoded as one stream: streamed and whole agree, so the joins are like any frame."""
    body = {"input": text(3), "response_format": "pcm", "seed": 4}
    with long_server.client() as c:
        whole = c.post("/v1/audio/speech", json={**body, "stream": False}).content
        streamed = c.post("/v1/audio/speech", json=body).content
    a, b = decode(whole, "pcm")[0], decode(streamed, "pcm")[0]
    assert len(a) == len(b) > 0 and abs(a - b).max() <= 1e-3


def test_first_audio_comes_before_the_last_chunk_is_generated(long_server):
    settle(long_server)
    chunks = 8
    before = generations(long_server)
    with long_server.client() as c, c.stream("POST", "/v1/audio/speech",
                                             json={"input": text(chunks), "response_format": "pcm"}) as r:
        stream = r.iter_bytes()
        assert next(stream)
        at_first_audio = generations(long_server) - before
        received = sum(len(b) for b in stream)
    assert at_first_audio < chunks - 1
    assert received > 0 and generations(long_server) - before == chunks


def test_disconnect_cancels_the_remaining_chunks(long_server):
    settle(long_server)
    chunks = 12
    before = long_server.metrics()
    with httpx.Client(base_url=long_server.url, timeout=60) as c:
        with c.stream("POST", "/v1/audio/speech", json={"input": text(chunks), "response_format": "pcm"}) as r:
            assert next(r.iter_bytes())
    settle(long_server)
    time.sleep(0.5)
    after = long_server.metrics()
    ran = sum(v - before.get(k, 0) for k, v in after.items() if k.startswith("higgs_generations_total"))
    cancelled = after.get('higgs_generations_total{reason="cancelled"}', 0) - before.get(
        'higgs_generations_total{reason="cancelled"}', 0)
    assert cancelled == 1 and ran < chunks / 2


def test_max_input_chars_is_a_chapter_by_default():
    from higgs_audio.server.service import Settings

    assert Settings().max_input_chars >= 100_000


def test_a_continuing_chunk_goes_first_and_is_never_refused(tiny_api):
    """The next chunk of a streaming answer jumps the queue (its listener is waiting) and is not refused by
    a full queue (that would cut the answer short)."""
    from higgs_audio.server.metrics import Metrics
    from higgs_audio.server.scheduler import QueueFull, Scheduler

    async def queue() -> None:
        scheduler = Scheduler(tiny_api, Metrics(), max_queue=1, timeout_s=60)
        request = tiny_api.request("Hi.", max_new_tokens=4)
        waiting = scheduler.submit(request, "new")
        with pytest.raises(QueueFull):
            scheduler.submit(request, "another new")
        chunk = scheduler.submit(request, "chunk", continuing=True)
        assert scheduler.stats()["queued"] == 2
        scheduler.start()
        try:
            order = [await asyncio.wait_for(job.items.get(), 60) for job in (chunk, waiting)]
        finally:
            scheduler.stop()
        assert [kind for kind, _ in order] != ["error", "error"]
        assert chunk.stream.t0 <= waiting.stream.t0  # admitted first

    asyncio.run(queue())
