"""API key, 413 / 429 / 504 limits and cancellation of abandoned requests, on a one-slot server."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.server.test_speech import openai_client

LONG_TEXT = "This sentence is long enough that its audio guard allows more than a minute of speech. " * 3
ERROR_KEYS = {"message", "type", "param", "code"}


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS
    return body["error"]


def _wait_for(condition, timeout: float) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    start = time.perf_counter()
    while not condition():
        assert time.perf_counter() - start < timeout, "condition not reached in time"
        time.sleep(0.02)
    return time.perf_counter() - start


def test_api_key_is_required(strict_server):
    url = strict_server.url
    for path in ("/v1/models", "/metrics", "/v1/voices"):
        _error(httpx.get(url + path), 401)
    err = _error(httpx.post(url + "/v1/audio/speech", json={"input": "hi"},
                            headers={"Authorization": "Bearer wrong"}), 401)
    assert err["type"] == "authentication_error" and "test-secret-key" not in err["message"]
    assert httpx.get(url + "/health").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert openai_client(strict_server).models.list().data
    assert "test-secret-key" not in strict_server.log_text()


def test_too_large_requests_get_413(strict_server):
    with strict_server.client() as c:
        err = _error(c.post("/v1/audio/speech", json={"input": "x" * 5000}), 413)
        assert err["param"] == "input"
        big = {"input": "hi", "reference_audio": "A" * 100_000, "reference_text": "x"}
        _error(c.post("/v1/audio/speech", json=big), 413)

        def chunked():  # no Content-Length: the limit applies while reading
            for _ in range(100):
                yield b" " * 1000

        _error(c.post("/v1/audio/speech", content=chunked(), headers={"content-type": "application/json"}), 413)
        _error(c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "y" * 5000}]}), 413)


def test_full_queue_gets_429_and_a_disconnect_frees_the_slot(strict_server):
    body = {"input": LONG_TEXT, "response_format": "pcm", "seed": 0}  # seed 0: audio from the start
    before = strict_server.metrics()
    cancelled_before = before.get('higgs_generations_total{reason="cancelled"}', 0)
    queued_result: dict = {}

    def queued():
        with strict_server.client() as c:
            queued_result["response"] = c.post("/v1/audio/speech", json={
                "input": "Short.", "response_format": "pcm", "seed": 2, "stream": False, "max_new_tokens": 20})

    with strict_server.client() as c:
        with c.stream("POST", "/v1/audio/speech", json=body) as streaming:
            assert streaming.status_code == 200
            chunks = streaming.iter_raw()  # kept: a dropped iterator would close the response
            next(chunks)  # it is decoding in the only slot
            waiter = threading.Thread(target=queued)
            waiter.start()
            _wait_for(lambda: strict_server.metrics()["higgs_queue_depth"] == 1, 10)
            err = _error(c.post("/v1/audio/speech", json={"input": "One too many."}), 429)
            assert err["type"] == "rate_limit_error"
            closed_at = time.perf_counter()
        # The client went away: its generation stops within 1 s and the queued request takes the slot.
        key = 'higgs_generations_total{reason="cancelled"}'
        _wait_for(lambda: strict_server.metrics().get(key, 0) > cancelled_before, 5)
        assert time.perf_counter() - closed_at < 1.0
        waiter.join(30)
    assert queued_result["response"].status_code == 200
    steps = strict_server.metrics()["higgs_decode_steps_total"]
    time.sleep(0.3)
    assert strict_server.metrics()["higgs_decode_steps_total"] == steps  # nothing is decoding any more


def test_disconnect_while_waiting_for_a_whole_file_cancels(strict_server):
    key = 'higgs_generations_total{reason="cancelled"}'
    before = strict_server.metrics().get(key, 0)
    with strict_server.client() as c, pytest.raises(httpx.ReadTimeout):
        c.post("/v1/audio/speech", json={"input": LONG_TEXT, "stream": False}, timeout=1.0)
    given_up = time.perf_counter()
    _wait_for(lambda: strict_server.metrics().get(key, 0) > before, 5)
    assert time.perf_counter() - given_up < 1.0
    assert strict_server.metrics()["higgs_active_streams"] == 0


def test_request_timeout_gets_504(strict_server):
    with strict_server.client() as c:
        start = time.perf_counter()
        err = _error(c.post("/v1/audio/speech", json={"input": LONG_TEXT, "stream": False}), 504)
    assert err["code"] == "timeout" and time.perf_counter() - start < 10


def test_a_queued_client_that_leaves_is_dropped_from_the_queue(strict_server):
    key = 'higgs_generations_total{reason="cancelled"}'
    with strict_server.client() as c:
        with c.stream("POST", "/v1/audio/speech", json={"input": LONG_TEXT, "response_format": "pcm", "seed": 0}) as r:
            chunks = r.iter_raw()
            next(chunks)  # holds the only slot
            before = strict_server.metrics().get(key, 0)
            with pytest.raises(httpx.ReadTimeout):  # streamed, but still waiting in the queue for its first audio
                c.post("/v1/audio/speech", json={"input": "Queued.", "response_format": "pcm"}, timeout=0.5)
            given_up = time.perf_counter()
            _wait_for(lambda: strict_server.metrics().get(key, 0) > before, 5)
            assert time.perf_counter() - given_up < 1.0
            assert strict_server.metrics()["higgs_queue_depth"] == 0
