"""Soak test: many clients for many minutes against a server on loopback, with disconnects and bad input.

Starts ``higgs-audio serve`` on 127.0.0.1 over the tiny random checkpoints (or ``--model``/``--codec``),
with its own empty voice library, then runs ``--clients`` threads for ``--minutes``. Each picks, at random,
a route and format: streamed, whole and SSE speech, a long text spoken in chunks, ``/v1/audio/generation``,
chat completions (whole and streamed, with a cloned voice), voice uploads, listings and deletions. A
``--disconnect`` share of streamed requests is dropped after the first audio; a ``--bad`` share of requests
are malformed (unknown model or voice, bad JSON, bad base64, out-of-range fields, unreadable audio).

Every minute it prints the requests finished so far, failures (a good request not answered 200 with a complete
body, a bad one not answered 4xx with an OpenAI error), 5xx answers, p50/p95 latency of the complete good
requests in that minute, the server's resident memory and what its prefix cache holds. At the end: the totals, and whether the run passed (0 failures,
0 5xx, the last 5 minutes' RSS within 10 %).

    python benchmarks/soak.py                           # 16 clients, 10 minutes, tiny checkpoints, CPU
    python benchmarks/soak.py --clients 4 --minutes 2
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server import start, tiny_checkpoints  # noqa: E402 - benchmarks/server.py

FORMATS = ["wav", "pcm", "flac", "mp3", "opus", "aac"]
TEXTS = ["Hello there, this is a soak test.", "The sun rises in the east and sets in the west.",
         "One, two, three. Four, five, six!"]
LONG = "\n\n".join(["The first paragraph is short and plain."] * 2 + ["Then a second thought, spoken in turn."] * 2)


def clip_b64(seconds: float = 1.0, rate: int = 16000) -> str:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


CLIP = clip_b64()


class Tally:
    """Counts and latencies, per minute and in total."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = self.failures = self.server_errors = self.disconnects = 0
        self.latencies: list[float] = []  # this minute's
        self.all_latencies: list[float] = []
        self.kinds: dict[str, int] = {}
        self.failed: list[str] = []

    def add(self, kind: str, ok: bool, status: int | None, latency: float | None, note: str = "") -> None:
        with self.lock:
            self.requests += 1
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            if status is not None and status >= 500:
                self.server_errors += 1
            if not ok:
                self.failures += 1
                if len(self.failed) < 20:
                    self.failed.append(f"{kind}: {status} {note[:200]}")
            if latency is not None:
                self.latencies.append(latency)
                self.all_latencies.append(latency)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def is_openai_error(response: httpx.Response) -> bool:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error.get("message"), str) and bool(error["message"])


def good_request(rng: random.Random, client_id: int) -> tuple[str, str, dict, bool]:
    """(kind, route, JSON body, streamed) of a well-formed generating request."""
    text, seed = rng.choice(TEXTS), rng.randrange(1 << 30)
    roll = rng.random()
    if roll < 0.35:
        return "speech-stream", "/v1/audio/speech", {"model": "tts-1", "input": text, "voice": "alloy", "seed": seed,
                                                     "response_format": rng.choice(FORMATS)}, True
    if roll < 0.5:
        return "speech-whole", "/v1/audio/speech", {"input": text, "seed": seed, "stream": False,
                                                    "response_format": rng.choice(FORMATS),
                                                    "voice": {"id": "profile:male_en"}}, False
    if roll < 0.58:
        return "speech-sse", "/v1/audio/speech", {"input": text, "seed": seed, "stream_format": "sse",
                                                  "response_format": "pcm", "speed": 1.25}, True
    if roll < 0.66:
        return "speech-long", "/v1/audio/speech", {"input": LONG, "seed": seed, "response_format": "pcm"}, True
    if roll < 0.74:
        return "generation", "/v1/audio/generation", {"text": text, "voice_profile": "female_en_story",
                                                      "seed": seed, "stream": False}, False
    messages = [{"role": "user", "content": "A clear tone."},
                {"role": "assistant", "content": [{"type": "input_audio",
                                                   "input_audio": {"data": CLIP, "format": "wav"}}]},
                {"role": "user", "content": text}]
    stream = roll >= 0.87
    body = {"model": "higgs-audio-v2", "messages": messages, "seed": seed, "max_tokens": 40, "stream": stream,
            "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16" if stream else "wav"}}
    return ("chat-stream" if stream else "chat"), "/v1/chat/completions", body, stream


BAD = [
    ("/v1/audio/speech", {"model": "gpt-5", "input": "Hi."}),
    ("/v1/audio/speech", {"input": "Hi.", "voice": "nobody-by-this-name"}),
    ("/v1/audio/speech", {"input": ""}),
    ("/v1/audio/speech", {"input": "Hi.", "response_format": "midi"}),
    ("/v1/audio/speech", {"input": "Hi.", "speed": 100}),
    ("/v1/audio/speech", {"input": "Hi.", "reference_audio": "not base64!", "reference_text": "x"}),
    ("/v1/audio/speech", {"input": "Hi.", "reference_audio": base64.b64encode(b"RIFF junk").decode(),
                          "reference_text": "x"}),
    ("/v1/audio/speech", {"input": "Hi.", "seed": -1}),
    ("/v1/audio/speech", "{not json"),
    ("/v1/chat/completions", {"messages": []}),
    ("/v1/chat/completions", {"model": "whisper-1", "messages": [{"role": "user", "content": "Hi."}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv"}}]}]}),
    ("/v1/audio/generation", {"text": "Hi.", "temperature": -3}),
]


def client_loop(url: str, client_id: int, until: float, args, tally: Tally) -> None:
    rng = random.Random(args.seed * 1000 + client_id)
    voice = f"soak{client_id}"
    with httpx.Client(base_url=url, timeout=args.request_timeout) as client:
        while time.monotonic() < until:
            roll = rng.random()
            start = time.perf_counter()
            try:
                if roll < args.bad:
                    route, body = rng.choice(BAD)
                    if isinstance(body, str):
                        r = client.post(route, content=body, headers={"content-type": "application/json"})
                    else:
                        r = client.post(route, json=body)
                    tally.add("bad", 400 <= r.status_code < 500 and is_openai_error(r), r.status_code, None, r.text)
                elif roll < args.bad + 0.05:
                    voice_round(client, voice, rng, tally)
                else:
                    kind, route, body, streamed = good_request(rng, client_id)
                    if streamed:
                        streamed_request(client, kind, route, body, rng.random() < args.disconnect, start, tally)
                    else:
                        r = client.post(route, json=body)
                        ok = r.status_code == 200 and len(r.content) > 0
                        tally.add(kind, ok, r.status_code, time.perf_counter() - start if ok else None, r.text)
            except httpx.HTTPError as e:
                tally.add("transport", False, None, None, repr(e))


def streamed_request(client, kind, route, body, disconnect, start, tally) -> None:
    with client.stream("POST", route, json=body) as r:
        if r.status_code != 200:
            r.read()
            tally.add(kind, False, r.status_code, None, r.text)
            return
        size, tail = 0, b""
        for chunk in r.iter_bytes():
            size, tail = size + len(chunk), (tail + chunk)[-200:]
            if disconnect and size:
                break  # leaving the block closes the connection mid-stream
    if disconnect:
        with tally.lock:
            tally.disconnects += 1
        tally.add(kind + "-dropped", True, 200, None)
        return
    end = {"chat-stream": b"data: [DONE]", "speech-sse": b"speech.audio.done"}.get(kind, b"")
    # an event stream must reach its last event; raw PCM of an utterance without audio is empty
    complete = end in tail and (size > 0 or body.get("response_format") == "pcm")
    tally.add(kind, complete, 200, time.perf_counter() - start if complete else None,
              f"incomplete: {tail!r} {body if kind.startswith('speech') else ''}")


def voice_round(client, name, rng, tally) -> None:
    """Upload a clip as a voice, list, use it once, delete it (or try to delete a built-in)."""
    r = client.post("/v1/voices", data={"name": name, "transcript": "A clear tone.", "force": "true"},
                    files={"file": ("clip.wav", base64.b64decode(CLIP), "audio/wav")})
    tally.add("voice-add", r.status_code == 201, r.status_code, None, r.text)
    r = client.get("/v1/voices")
    tally.add("voice-list", r.status_code == 200 and any(v["id"] == name for v in r.json()["data"]),
              r.status_code, None, r.text)
    r = client.delete("/v1/voices/profile:male_en")
    tally.add("voice-builtin-delete", r.status_code == 403 and is_openai_error(r), r.status_code, None, r.text)
    r = client.delete(f"/v1/voices/{name}")
    tally.add("voice-delete", r.status_code == 200, r.status_code, None, r.text)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prefix_cache_mb(url: str) -> float:
    """What the server's prefix cache holds (it grows with new prompts up to --prefix-cache-mb, by design)."""
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("higgs_prefix_cache_bytes "):
            return float(line.split()[1]) / 2**20
    return float("nan")


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--disconnect", type=float, default=0.2, help="share of streamed requests dropped early")
    parser.add_argument("--bad", type=float, default=0.15, help="share of malformed requests")
    parser.add_argument("--model", help="generation checkpoint (default: tiny random weights)")
    parser.add_argument("--codec", help="audio tokenizer checkpoint (default: tiny random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.model is None or args.codec is None:
            args.model, args.codec = tiny_checkpoints(folder)
        os.environ["HIGGS_AUDIO_VOICES"] = str(folder / "voices")
        os.environ["HIGGS_AUDIO_CACHE"] = str(folder / "cache")
        log = folder / "server.log"
        process, url = start(args, args.max_batch, log)
        try:
            return soak(args, process, url, log)
        finally:
            process.terminate()
            process.wait(timeout=30)


def soak(args, process, url: str, log: Path) -> int:
    tally = Tally()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    print(f"soak: {args.clients} clients, {args.minutes:g} min, {os.cpu_count()} cores of {cpu}; server pid "
          f"{process.pid}, RSS {rss_mb(process.pid):.0f} MB at start", flush=True)
    print("minute  requests  failures  5xx  disconnects  p50_s  p95_s  rss_mb  prefix_cache_mb", flush=True)
    start = time.monotonic()
    until = start + args.minutes * 60
    threads = [threading.Thread(target=client_loop, args=(url, i, until, args, tally), daemon=True)
               for i in range(args.clients)]
    for t in threads:
        t.start()
    rss: list[float] = []
    minute = 0
    while any(t.is_alive() for t in threads):
        next_mark = start + (minute + 1) * 60
        while time.monotonic() < next_mark and any(t.is_alive() for t in threads):
            time.sleep(0.5)
        if process.poll() is not None:
            print(f"the server died:\n{log.read_text()[-4000:]}", flush=True)
            return 1
        minute += 1
        with tally.lock:
            window, tally.latencies = tally.latencies, []
            row = (tally.requests, tally.failures, tally.server_errors, tally.disconnects)
        memory = rss_mb(process.pid)
        if time.monotonic() <= until + 1:  # a whole minute (the last row: requests still in flight at the end)
            rss.append(memory)
        label = f"{minute:6d}" if time.monotonic() <= until + 1 else "   end"
        print(f"{label}  {row[0]:8d}  {row[1]:8d}  {row[2]:3d}  {row[3]:11d}  {fmt(percentile(window, 0.5)):>5}  "
              f"{fmt(percentile(window, 0.95)):>5}  {memory:6.0f}  {prefix_cache_mb(url):15.1f}", flush=True)
    for t in threads:
        t.join()
    last = rss[-5:]
    flat = len(last) >= 2 and (max(last) - min(last)) / min(last) <= 0.10
    print(json.dumps({"requests": tally.requests, "failures": tally.failures, "5xx": tally.server_errors,
                      "disconnects": tally.disconnects, "by_kind": dict(sorted(tally.kinds.items())),
                      "p50_s": percentile(tally.all_latencies, 0.5), "p95_s": percentile(tally.all_latencies, 0.95),
                      "rss_mb": [round(x) for x in rss], "rss_last5_spread": (max(last) - min(last)) / min(last)},
                     indent=1), flush=True)
    for line in tally.failed:
        print("failed:", line, flush=True)
    passed = tally.failures == 0 and tally.server_errors == 0 and flat
    print("PASS" if passed else "FAIL", "(wanted: 0 failures, 0 5xx, last 5 minutes' RSS within 10 %)", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
