"""The cluster (Ray Serve) against the plain server, and voice-affinity routing against Ray's default router.

Starts Ray inside this process's network namespace, which must hold only loopback (Ray binds the machine's
external interface and probes outside addresses), so run it as root with:

    unshare -n sh -c 'ip link set lo up && exec python benchmarks/cluster.py --tiny'

1. Overhead: ``higgs-audio serve`` and the cluster with one engine replica, same checkpoints and flags, both
   up at once and sent the same ``--requests`` seeded SSE-streamed requests one at a time, in turn. Per
   request: time to the first audio event; per chunk: (time to the last event - time to the first) / (audio
   events - 1). The cluster's extra is its HTTP proxy, the ingress replica and the streaming handle call (two
   process hops per chunk).
2. Routing: two engine replicas, four library voices (reference clips, so a voice is a long prompt prefix),
   ``--rounds`` requests per voice in a shuffled order from ``--clients`` concurrent clients, first with the
   voice-affinity router, then with Ray's default power-of-two choice, on the same Ray instance. Reported:
   the share of prompt positions copied from the replicas' prefix caches, and time to first audio.

On a 2-core machine every replica, the proxy and the clients share the cores: this shows overhead, not scale.
"""

from __future__ import annotations

import io
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.server import checkpoint_parser, checkpoints, free_port, start  # noqa: E402

NAMESPACE_RUN = "unshare -n sh -c 'ip link set lo up && exec python benchmarks/cluster.py --tiny'"
TEXT = "The sun rises in the east and sets in the west, and the day begins again."


def loopback_only() -> bool:
    import socket

    return [name for _, name in socket.if_nameindex()] == ["lo"]


def streamed(client: httpx.Client, body: dict) -> tuple[float, float, int]:
    """(seconds to the first audio event, seconds from it to the last, audio events) of an SSE request."""
    start_at = time.perf_counter()
    times = []
    with client.stream("POST", "/v1/audio/speech", json={**body, "stream_format": "sse"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and '"speech.audio.delta"' in line:
                times.append(time.perf_counter() - start_at)
    return times[0], times[-1] - times[0], len(times)


def overhead(urls: dict[str, str], args) -> dict:
    """Per server: medians of time to first audio and of time per further chunk, the servers' requests
    interleaved (same seeds, same moment) so that load from elsewhere hits both alike."""
    firsts: dict[str, list[float]] = {name: [] for name in urls}
    per_chunk: dict[str, list[float]] = {name: [] for name in urls}
    clients = {name: httpx.Client(base_url=url, timeout=600) for name, url in urls.items()}
    try:
        for i in range(-1, args.requests):  # -1: a warm-up request each
            for name, client in clients.items():
                first, rest, events = streamed(client, {"input": TEXT, "response_format": "pcm", "seed": max(i, 0),
                                                        "max_new_tokens": args.max_new_tokens})
                if i >= 0:
                    firsts[name].append(first)
                    if events > 1:
                        per_chunk[name].append(rest / (events - 1))
    finally:
        for client in clients.values():
            client.close()
    return {name: {"first_audio_p50_s": statistics.median(firsts[name]),
                   "per_chunk_p50_s": statistics.median(per_chunk[name])} for name in urls}


def clip(frequency: float, seconds: float = 4.0) -> bytes:
    import soundfile as sf

    t = np.arange(int(16000 * seconds)) / 16000
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), 16000, format="WAV")
    return buffer.getvalue()


def prefix_positions(url: str) -> tuple[float, float]:
    """(positions copied from prefix caches, positions prefilled), summed over the replicas."""
    copied = prefilled = 0.0
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("higgs_prompt_positions_total{"):
            value = float(line.rpartition(" ")[2])
            if 'source="prefix_cache"' in line:
                copied += value
            else:
                prefilled += value
    return copied, prefilled


def routing(url: str, voices: list[str], args) -> dict:
    """``--rounds`` requests per voice in a fixed shuffled order, taken by ``--clients`` concurrent clients
    from one queue (so no client keeps to a voice, nor to a replica)."""
    before = prefix_positions(url)
    work = [(r, voice) for r in range(args.rounds) for voice in voices]
    random.Random(0).shuffle(work)
    firsts: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            while True:
                with lock:
                    if not work:
                        return
                    r, voice = work.pop()
                first, _, _ = streamed(c, {"input": f"Round {r}: {TEXT}", "voice": voice, "seed": r,
                                           "response_format": "pcm", "max_new_tokens": args.max_new_tokens})
                with lock:
                    firsts.append(first)

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = prefix_positions(url)
    copied, prefilled = after[0] - before[0], after[1] - before[1]
    firsts.sort()
    return {"prefix_hit_rate": copied / max(copied + prefilled, 1), "copied": copied, "prefilled": prefilled,
            "first_audio_p50_s": statistics.median(firsts),
            "first_audio_p95_s": firsts[min(len(firsts) - 1, int(0.95 * len(firsts)))]}


def main() -> None:
    parser = checkpoint_parser(__doc__, dtype="float32")
    parser.add_argument("--requests", type=int, default=10, help="overhead: sequential requests per server")
    parser.add_argument("--rounds", type=int, default=8, help="routing: requests per voice")
    parser.add_argument("--clients", type=int, default=4, help="routing: concurrent clients")
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not loopback_only():
        raise SystemExit(f"run this inside a loopback-only network namespace, as root: {NAMESPACE_RUN}")
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_USAGE_STATS_REPORT_URL="http://127.0.0.1:9/",
                      PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    import ray
    from ray import serve

    from higgs_audio.cluster import app
    from higgs_audio.cluster.deployments import APP_NAME

    with tempfile.TemporaryDirectory(prefix="rt", dir="/tmp") as tmp:
        tmp = Path(tmp)
        os.environ.update(RAY_TMPDIR=str(tmp / "ray"), HIGGS_AUDIO_CACHE=str(tmp / "cache"))
        checkpoints(parser, args, tmp)
        args.max_batch = 8
        results: dict = {}
        process, plain_url = start(args, args.max_batch, tmp / "plain.log")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024**2)
        try:
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            url = f"http://127.0.0.1:{port}"
            voices_dir = tmp / "voices"
            flags = {"model": args.model, "codec": args.codec, "device": args.device, "dtype": args.dtype,
                     "max_len": args.max_len, "max_batch": args.max_batch, "max_new_tokens": args.max_new_tokens,
                     "max_queue": 1000, "voices_dir": [str(voices_dir)], "log_level": "warning"}
            serve.run(app({**flags, "replicas": 1}), name=APP_NAME, route_prefix="/")
            results.update(overhead({"plain": plain_url, "cluster": url}, args))
            process.terminate()
            serve.delete(APP_NAME)

            voices = [f"voice{i}" for i in range(4)]
            for i, name in enumerate(voices):
                voices_dir.mkdir(exist_ok=True)
                (voices_dir / f"{name}.wav").write_bytes(clip(180 + 70 * i))
                (voices_dir / f"{name}.txt").write_text(f"Reference clip number {i} of a steady tone.\n")
            serve.run(app({**flags, "replicas": 1}), name=APP_NAME, route_prefix="/")
            for name in voices:  # encodes each clip once (the codes cache is shared), like a warm library
                httpx.post(url + "/v1/audio/speech", timeout=600, json={
                    "input": "Warm.", "voice": name, "max_new_tokens": 2, "response_format": "pcm"})
            serve.delete(APP_NAME)
            for router in ("voice", "default"):  # fresh replicas each: empty prefix caches
                serve.run(app({**flags, "replicas": 2, "router": router}), name=APP_NAME, route_prefix="/")
                results[f"router_{router}"] = routing(url, voices, args)
                serve.delete(APP_NAME)
        finally:
            if process.poll() is None:
                process.terminate()
            process.wait(timeout=30)
            serve.shutdown()
            ray.shutdown()

    plain, cluster = results["plain"], results["cluster"]
    print(f"{'':<8} {'first audio p50':>16} {'per chunk p50':>14}")
    for name in ("plain", "cluster"):
        r = results[name]
        print(f"{name:<8} {r['first_audio_p50_s'] * 1000:>14.1f}ms {r['per_chunk_p50_s'] * 1000:>12.1f}ms")
    print(f"cluster overhead: {(cluster['first_audio_p50_s'] - plain['first_audio_p50_s']) * 1000:+.1f} ms per "
          f"request (first audio), {(cluster['per_chunk_p50_s'] - plain['per_chunk_p50_s']) * 1000:+.1f} ms per chunk")
    print(f"\n{'router':<8} {'prefix-cache hits':>18} {'first audio p50':>16} {'p95':>8}")
    for router in ("voice", "default"):
        r = results[f"router_{router}"]
        print(f"{router:<8} {r['prefix_hit_rate']:>17.1%} {r['first_audio_p50_s'] * 1000:>14.1f}ms "
              f"{r['first_audio_p95_s'] * 1000:>6.0f}ms")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=2))


if __name__ == "__main__":
    main()
