"""Continuous batching: concurrent requests decode together and each keeps its own random stream."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tests.server.audio_check import decode

HOP = 960


def _speak(server, i: int, temperature: float) -> np.ndarray:
    body = {"input": f"Request number {i} says hello.", "response_format": "pcm", "seed": 100 + i,
            "temperature": temperature, "stream": False}
    with server.client() as c:
        r = c.post("/v1/audio/speech", json=body)
    assert r.status_code == 200, r.text
    return decode(r.content, "pcm")[0]


def _batched_steps(metrics: dict[str, float]) -> float:
    """Decode steps that advanced more than one stream."""
    return metrics["higgs_batch_size_count"] - metrics['higgs_batch_size_bucket{le="1"}']


def _equal_frames(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(frames equal within 1e-3, frames) of two decoded utterances."""
    n = max(len(a), len(b)) // HOP
    equal = sum(
        1 for f in range(n)
        if len(a[f * HOP:(f + 1) * HOP]) == len(b[f * HOP:(f + 1) * HOP]) == HOP
        and np.abs(a[f * HOP:(f + 1) * HOP] - b[f * HOP:(f + 1) * HOP]).max() <= 1e-3
    )
    return equal, n


def test_eight_concurrent_requests_return_what_they_return_alone(server):
    before = _batched_steps(server.metrics())
    for temperature in (0.0, 1.0):
        alone = [_speak(server, i, temperature) for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda i: _speak(server, i, temperature), range(8)))
        counts = [_equal_frames(a, b) for a, b in zip(alone, together)]
        equal, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
        if temperature == 0:
            assert equal == total, counts
        else:  # batched matmuls may differ in the last float bit, which can flip a rare near-tie draw
            assert equal >= 0.99 * total, counts
        assert all(len(w) > 0 for w in together)
        if temperature > 0:  # every request drew its own random numbers
            distinct = {w.tobytes() for w in together}
            assert len(distinct) == 8
    assert _batched_steps(server.metrics()) > before, "no decode step ran more than one request"


def test_a_new_request_joins_a_running_batch(server):
    """A request that arrives while another decodes shares its steps: the batch-size histogram records
    steps of size 2 while neither request waited for the other to finish."""
    before = server.metrics()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_speak, server, 20, 1.0)
        second = pool.submit(_speak, server, 21, 1.0)
        first.result(), second.result()
    after = server.metrics()
    assert _batched_steps(after) > _batched_steps(before)
    # Two 40-step requests that overlap take fewer than 80 steps in all.
    assert after["higgs_decode_steps_total"] - before["higgs_decode_steps_total"] < 80


def test_concurrent_streams_share_codec_decodes(server):
    """Four streamed responses at once: their audio chunks are decoded in shared codec calls, and each equals
    the same request's whole-file response."""
    def streamed(i: int) -> np.ndarray:
        body = {"input": f"Streamed request {i}.", "response_format": "pcm", "seed": 40 + i, "temperature": 0.0}
        with server.client() as c:
            r = c.post("/v1/audio/speech", json=body)
            whole = c.post("/v1/audio/speech", json={**body, "stream": False})
        assert r.status_code == whole.status_code == 200
        return decode(r.content, "pcm")[0], decode(whole.content, "pcm")[0]

    def shared(metrics: dict[str, float]) -> float:
        return metrics["higgs_codec_batch_size_count"] - metrics['higgs_codec_batch_size_bucket{le="1"}']

    before = shared(server.metrics())
    with ThreadPoolExecutor(4) as pool:
        pairs = list(pool.map(streamed, range(4)))
    assert shared(server.metrics()) > before, "no codec call decoded more than one stream's chunk"
    for stream, whole in pairs:
        equal, total = _equal_frames(stream, whole)
        assert total > 0 and equal == total
