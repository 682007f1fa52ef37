"""Server throughput and latency: continuous batching against one-request-at-a-time, same run, same requests.

Starts ``higgs-audio serve`` twice on 127.0.0.1, with ``--max-batch`` N (batched) and 1 (unbatched), and at
each concurrency (default 1, 4, 16 clients) every client sends ``--requests`` streamed PCM requests one after
another, each with its own fixed seed, so both servers generate exactly the same audio.

    python benchmarks/server.py --tiny                          # tiny random checkpoints, CPU
    python benchmarks/server.py --model DIR --codec DIR --device cuda --max-new-tokens 500

Reported per server and concurrency: requests/s, time to first audio (first body byte) p50/p95, and seconds
of audio generated per wall-clock second; then batched / unbatched ratios. ``--json FILE`` saves the numbers,
``--plot FILE`` draws them (default server.png).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TEXT = "The sun rises in the east and sets in the west, and the day begins again."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, max_batch: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable, "-m", "higgs_audio", "serve", "--model", args.model, "--codec", args.codec,
        "--device", args.device, "--dtype", args.dtype, "--host", "127.0.0.1", "--port", str(port),
        "--max-batch", str(max_batch), "--max-new-tokens", str(args.max_new_tokens),
        "--max-queue", "1000", "--max-len", str(args.max_len), "--log-level", "warning",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if process.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    process.kill()
    raise SystemExit(f"the server did not start:\n{log.read_text()}")


def one_request(client: httpx.Client, seed: int) -> tuple[float | None, float, int]:
    """(time to first audio byte, total time, bytes of 16-bit PCM)."""
    body = {"input": TEXT, "response_format": "pcm", "seed": seed, "stream": True}
    start = time.perf_counter()
    first, size = None, 0
    with client.stream("POST", "/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            if chunk and first is None:
                first = time.perf_counter() - start
            size += len(chunk)
    return first, time.perf_counter() - start, size


def run_load(url: str, clients: int, requests: int) -> dict:
    ttfa: list[float] = []
    pcm_bytes = [0]
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            for r in range(requests):
                first, _, size = one_request(client, seed=1000 * index + r)
                with lock:
                    if first is not None:
                        ttfa.append(first)
                    pcm_bytes[0] += size

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttfa.sort()
    return {
        "clients": clients,
        "requests": clients * requests,
        "requests_per_s": clients * requests / wall,
        "ttfa_p50_s": statistics.median(ttfa) if ttfa else None,
        "ttfa_p95_s": ttfa[min(len(ttfa) - 1, int(0.95 * len(ttfa)))] if ttfa else None,
        "audio_s_per_s": pcm_bytes[0] / 2 / 24000 / wall,
        "wall_s": wall,
    }


def tiny_checkpoints(folder: Path) -> tuple[str, str]:
    sys.path.insert(0, str(ROOT))
    from tests.helpers.tiny_codec import write_checkpoints
    from tests.helpers.tiny_model import original_config, random_weights, write_original

    (folder / "model").mkdir()
    (folder / "codec").mkdir()
    model = write_original(folder / "model", random_weights(original_config(), seed=0))
    codec, _ = write_checkpoints(folder / "codec")
    return str(model), str(codec)


def checkpoint_parser(description: str, dtype: str = "auto") -> argparse.ArgumentParser:
    """The options every server benchmark takes: the checkpoints (or ``--tiny``), device and dtype."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--codec")
    parser.add_argument("--tiny", action="store_true", help="use tiny random checkpoints (a smoke benchmark)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=dtype)
    return parser


def checkpoints(parser: argparse.ArgumentParser, args: argparse.Namespace, folder: Path) -> None:
    """With ``--tiny``, write tiny random checkpoints into ``folder`` and serve those."""
    if args.tiny:
        args.model, args.codec = tiny_checkpoints(folder)
    elif not (args.model and args.codec):
        parser.error("give --model and --codec, or --tiny")


def fmt(x: float | None, unit: str = "") -> str:
    return "-" if x is None else f"{x:.3f}{unit}"


def main() -> None:
    parser = checkpoint_parser(__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=2, help="requests per client")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--max-batch", type=int, default=16, help="the batched server's slots")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--plot", default="server.png", help="the picture of the results ('none': no picture)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoints(parser, args, tmp)
        results: dict[str, list[dict]] = {}
        for name, slots in (("batched", args.max_batch), ("unbatched", 1)):
            process, url = start(args, slots, tmp / f"{name}.log")
            try:
                with httpx.Client(base_url=url, timeout=600) as warm:
                    one_request(warm, seed=0)
                results[name] = [run_load(url, c, args.requests) for c in args.clients]
            finally:
                process.terminate()
                process.wait(timeout=30)
    print(f"{'server':<10} {'clients':>7} {'req/s':>8} {'TTFA p50':>9} {'TTFA p95':>9} {'audio s/s':>9}")
    for name, rows in results.items():
        for r in rows:
            print(f"{name:<10} {r['clients']:>7} {r['requests_per_s']:>8.2f} {fmt(r['ttfa_p50_s'], 's'):>9} "
                  f"{fmt(r['ttfa_p95_s'], 's'):>9} {r['audio_s_per_s']:>9.2f}")
    for b, u in zip(results["batched"], results["unbatched"]):
        speedup = b["requests_per_s"] / u["requests_per_s"]
        print(f"batched/unbatched at {b['clients']:>2} clients: throughput x{speedup:.2f}, "
              f"audio x{b['audio_s_per_s'] / max(u['audio_s_per_s'], 1e-9):.2f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=2))
    if args.plot != "none":
        import plots

        model = "tiny random model" if args.tiny else Path(args.model).name
        settings = f"{model}, {args.requests} requests per client, {args.max_new_tokens} steps each"
        print(f"picture: {plots.server(results, Path(args.plot), f'{plots.machine(args.device)} · {settings}')}")


if __name__ == "__main__":
    main()
