"""Cost of a long reference clip sent to the server: time to the answer and growth of the server's peak memory.

The clip is 15 minutes of silence as FLAC at 44.1 kHz (about 66 KB), sent to each route that takes one
(chat ``input_audio``, speech ``reference_audio``, ``POST /v1/voices``). The server runs on 127.0.0.1 from
``--root`` (default: this checkout; give another checkout to measure it the same way).

    python benchmarks/upload.py --tiny
    python benchmarks/upload.py --tiny --root /path/to/older/checkout --minutes 15

Peak memory is the server's peak resident size (``VmHWM``), reset through ``/proc/PID/clear_refs`` before each
request (Linux only), minus its resident size then.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server import checkpoint_parser, checkpoints, free_port  # noqa: E402

RATE = 44100


def silence_flac(minutes: float) -> bytes:
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", RATE, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(minutes * 60)):
            f.write(np.zeros(RATE, dtype=np.int16))
    return buffer.getvalue()


def kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def requests(data: bytes) -> dict:
    clip = base64.b64encode(data).decode()
    chat = {"modalities": ["text", "audio"], "messages": [
        {"role": "assistant", "content": [{"type": "input_audio", "input_audio": {"data": clip, "format": "flac"}}]},
        {"role": "user", "content": "Hello."}]}
    speech = {"input": "Hello.", "reference_audio": clip, "reference_text": "Silence."}
    return {
        "chat": lambda c: c.post("/v1/chat/completions", json=chat),
        "speech": lambda c: c.post("/v1/audio/speech", json=speech),
        "voices": lambda c: c.post("/v1/voices", data={"name": "long", "transcript": "Silence.", "force": "true"},
                                   files={"file": ("long.flac", data, "audio/flac")}),
    }


def main() -> None:
    parser = checkpoint_parser(__doc__, dtype="float32")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="checkout to serve from")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--max-len", type=int, default=4096)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoints(parser, args, tmp)
        data = silence_flac(args.minutes)
        port = free_port()
        (tmp / "voices").mkdir()
        command = [sys.executable, "-m", "higgs_audio", "serve", "--model", args.model, "--codec", args.codec,
                   "--device", args.device, "--dtype", args.dtype, "--host", "127.0.0.1", "--port", str(port),
                   "--voices-dir", str(tmp / "voices"), "--max-len", str(args.max_len), "--log-level", "warning"]
        env = dict(os.environ, PYTHONPATH=args.root, HIGGS_AUDIO_CACHE=str(tmp / "cache"))
        log = tmp / "server.log"
        process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=args.root)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            print(f"{args.minutes:g} min of silence as FLAC: {len(data)} bytes; server from {args.root}")
            with httpx.Client(base_url=url, timeout=600) as client:
                for route, send in requests(data).items():
                    Path(f"/proc/{process.pid}/clear_refs").write_text("5")
                    before = kib(process.pid, "VmRSS")
                    start = time.perf_counter()
                    response = send(client)
                    seconds = time.perf_counter() - start
                    growth = (kib(process.pid, "VmHWM") - before) / 1024
                    message = response.json().get("error", {}).get("message", "") if response.status_code >= 400 else ""
                    print(f"{route:7s} HTTP {response.status_code}  {seconds:6.2f} s  RSS {before / 1024:6.0f} MB  "
                          f"peak +{growth:6.0f} MB  {message[:110]}")
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
