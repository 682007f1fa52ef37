"""The application on a two-node Ray cluster over the tiny checkpoints (see conftest.py).

In file order: the deployment starts with one engine replica and autoscales to two under load; every later
test runs on two replicas, one per node; the last one tears the cluster down.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import numpy as np
import soundfile as sf
from openai import OpenAI

from higgs_audio.cluster.router import home_replica
from tests.server.audio_check import decode
from tests.server.conftest import start_server, stop_server
from tests.server.test_limits import LONG_TEXT

REPLICA = "x-higgs-replica"
SHORT = {"response_format": "pcm", "max_new_tokens": 30}


def _speech(cluster, text: str, **fields) -> httpx.Response:
    with cluster.client() as c:
        r = c.post("/v1/audio/speech", json={"input": text, **SHORT, "stream": False, **fields})
    assert r.status_code == 200, r.text
    return r


class LongStreams:
    """``n`` streamed requests that keep generating (up to 2000 steps) until closed, each read in a thread;
    each starts once the one before sends audio."""

    def __init__(self, cluster, n: int, **fields):
        self.stop = threading.Event()
        self.threads = []
        for i in range(n):
            streaming = threading.Event()
            self.threads.append(threading.Thread(target=self._read, args=(cluster, i, fields, streaming)))
            self.threads[-1].start()
            assert streaming.wait(120), "a stream sent no audio"

    def _read(self, cluster, i: int, fields: dict, streaming: threading.Event) -> None:
        # seed 0: the random model speaks from the first step (other seeds may start with long text); a long
        # text: the audio guard would stop a short one's audio after a few seconds
        body = {"input": LONG_TEXT, "response_format": "pcm", "seed": 0, "max_new_tokens": 2000, **fields}
        with cluster.client() as c, c.stream("POST", "/v1/audio/speech", json=body) as r:
            assert r.status_code == 200
            chunks = r.iter_raw()  # kept: a dropped iterator would close the response
            next(chunks)
            streaming.set()
            self.stop.wait()  # generating on (text or audio) until the connection closes

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def test_autoscales_from_one_to_two_replicas_under_load(ray_cluster):
    assert len(ray_cluster.health()["replicas"]) == 1
    load = LongStreams(ray_cluster, 3)  # 3 ongoing requests for a target of 1 per replica, at most 2
    try:
        waited = ray_cluster.wait_for_replicas(2, 60)
    finally:
        load.close()
    print(f"autoscaled 1 -> 2 replicas {waited:.1f} s after the load began")
    nodes = {_node(r) for r in ray_cluster.health()["replicas"]}
    assert len(nodes) == 2, "the replicas share a node"


def test_openai_client_whole_and_streamed_speech_and_chat(ray_cluster):
    client = OpenAI(base_url=ray_cluster.url + "/v1", api_key="unused", max_retries=0)
    whole = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.", response_format="wav",
                                       extra_body={"stream": False, "max_new_tokens": 30, "seed": 3})
    wave, rate = sf.read(io.BytesIO(whole.content), dtype="float32")
    assert rate == 24000 and len(wave) > 0
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input="Hello there.", response_format="pcm",
            extra_body={"max_new_tokens": 30, "seed": 3}) as streamed:
        pcm = b"".join(streamed.iter_bytes())
    np.testing.assert_allclose(decode(pcm, "pcm")[0], wave, atol=1e-3)

    messages = [{"role": "user", "content": "Say something."}]
    answer = client.chat.completions.create(model="higgs-audio-v2", messages=messages, modalities=["text", "audio"],
                                            audio={"voice": "alloy", "format": "wav"}, max_completion_tokens=30,
                                            extra_body={"seed": 5})
    chat_wave, _ = sf.read(io.BytesIO(base64.b64decode(answer.choices[0].message.audio.data)), dtype="float32")
    assert len(chat_wave) > 0
    stream = client.chat.completions.create(model="higgs-audio-v2", messages=messages, modalities=["text", "audio"],
                                            audio={"voice": "alloy", "format": "pcm16"}, max_completion_tokens=30,
                                            extra_body={"seed": 5}, stream=True)
    deltas = [c.choices[0].delta for c in stream if c.choices]
    audio = [getattr(d, "audio", None) for d in deltas]  # the last audio update holds only its expiry
    pcm = b"".join(base64.b64decode(a.data) for a in audio if getattr(a, "data", None))
    np.testing.assert_allclose(decode(pcm, "pcm16")[0], chat_wave, atol=1e-3)


def test_seeded_requests_give_the_audio_of_the_plain_server(ray_cluster, tmp_path, tiny_original, tiny_codec):
    bodies = [{"input": f"Seeded request {i}.", "seed": 40 + i, "temperature": 1.0, **SHORT} for i in range(3)]
    server = start_server(tmp_path, tiny_original, tiny_codec, "--max-batch", "4", "--prefill-chunk", "16")
    try:
        with server.client() as c:
            plain = [c.post("/v1/audio/speech", json={**b, "stream": False}).content for b in bodies]
    finally:
        stop_server(server)
    for body, expected in zip(bodies, plain):
        with ray_cluster.client() as c:
            whole = c.post("/v1/audio/speech", json={**body, "stream": False})
            with c.stream("POST", "/v1/audio/speech", json=body) as r:
                streamed = b"".join(r.iter_raw())
        assert len(expected) > 0
        np.testing.assert_allclose(decode(whole.content, "pcm")[0], decode(expected, "pcm")[0], atol=1e-4)
        np.testing.assert_allclose(decode(streamed, "pcm")[0], decode(expected, "pcm")[0], atol=1e-3)


def _node(replica: str) -> str:
    """The node of a replica named host:pid@node#id."""
    return replica.partition("@")[2].partition("#")[0]


def _prefix_hits(cluster) -> dict[str, float]:
    """Prompt positions copied from the prefix cache, per replica."""
    out = {}
    for name, value in cluster.metrics().items():
        if name.startswith("higgs_prompt_positions_total") and 'source="prefix_cache"' in name:
            out[name.split('replica="')[1].split('"')[0]] = value
    return out


def test_a_voice_goes_back_to_the_replica_that_served_it(ray_cluster):
    voices = [f"profile:Speaker number {i}, a calm voice with a quiet room." for i in range(4)]
    first = {v: _speech(ray_cluster, "First words.", voice=v).headers[REPLICA] for v in voices}
    hits_before = _prefix_hits(ray_cluster)
    for v in voices:
        assert _speech(ray_cluster, "Second words.", voice=v).headers[REPLICA] == first[v], v
    hits_after = _prefix_hits(ray_cluster)
    for replica in set(first.values()):  # every second request found its voice's prompt in the cache
        assert hits_after[replica] > hits_before.get(replica, 0), (hits_before, hits_after)


def _clip() -> bytes:
    t = np.arange(16000) / 16000
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, format="WAV")
    return buffer.getvalue()


def test_a_voice_added_on_one_node_is_used_on_the_other(ray_cluster):
    health = ray_cluster.health()
    replicas, ingress = health["replicas"], _node(health["ingress"])  # the ingress writes the library
    ids = [SimpleNamespace(replica_id=SimpleNamespace(unique_id=r.partition("#")[2])) for r in replicas]
    # A name whose requests the voice router sends to the replica on the other node.
    name = next(f"voice{i}" for i in range(100)
                if _node(replicas[ids.index(home_replica(f"voice:voice{i}", ids))]) != ingress)
    with ray_cluster.client() as c:
        r = c.post("/v1/voices", data={"name": name, "transcript": "A low tone."},
                   files={"file": (f"{name}.wav", _clip(), "audio/wav")})
        assert r.status_code == 201, r.text
        assert (ray_cluster.voices / f"{name}.wav").is_file()
        used = c.post("/v1/audio/speech", json={"input": "Hello.", "voice": name, **SHORT, "stream": False})
        assert used.status_code == 200, used.text
        assert _node(used.headers[REPLICA]) != ingress
        assert c.delete(f"/v1/voices/{name}").status_code == 200
        gone = c.post("/v1/audio/speech", json={"input": "Gone.", "voice": name, **SHORT})
    assert gone.status_code == 400 and gone.json()["error"]["code"] == "voice_not_found"


def test_health_and_metrics_cover_every_replica(ray_cluster):
    health = ray_cluster.health()
    assert health["status"] == "ok" and len(health["replicas"]) == 2
    metrics = ray_cluster.metrics()
    for replica in health["replicas"]:
        assert f'higgs_decode_steps_total{{replica="{replica}"}}' in metrics
    assert any(name.startswith("higgs_requests_total{") and "replica" not in name for name in metrics)


def test_a_killed_replica_fails_its_stream_promptly_and_is_replaced(ray_cluster):
    body = {"input": LONG_TEXT, "response_format": "pcm", "seed": 0, "max_new_tokens": 2000}
    with ray_cluster.client() as c, c.stream("POST", "/v1/audio/speech", json=body) as r:
        assert r.status_code == 200
        chunks = r.iter_raw()
        next(chunks)
        victim = r.headers[REPLICA]
        os.kill(int(victim.partition(":")[2].partition("@")[0]), signal.SIGKILL)
        killed = time.monotonic()
        try:
            for _ in chunks:
                assert time.monotonic() - killed < 5, "the stream kept going after its replica died"
            raise AssertionError("the stream ended as if complete")
        except (httpx.RemoteProtocolError, httpx.ReadError):
            pass
        assert time.monotonic() - killed < 5
    with ThreadPoolExecutor(4) as pool:  # the next requests succeed, on the live replica
        served = list(pool.map(lambda i: _speech(ray_cluster, f"After {i}.").headers[REPLICA], range(4)))
    assert victim not in served
    ray_cluster.wait_for_replicas(2, 90)
    assert victim not in ray_cluster.health()["replicas"]


def test_teardown_leaves_no_process(ray_cluster):
    assert ray_cluster.processes, "no Ray process was seen"
    alive = ray_cluster.shutdown()
    assert not alive, [p.pid for p in alive]
