"""Audio codec speed: our AudioCodec against transformers' HiggsAudioV2TokenizerModel, same weights, same run.

Full-size random weights in the official shapes (HuBERT-base teacher, 64/1024-wide DAC, 8 x 1024 RVQ) are
written to a temporary directory; both implementations load them and encode / decode the same 10 s clip.

    python benchmarks/codec.py                    # CPU, torch's default thread count
    python benchmarks/codec.py --device cuda --seconds 30 --repeats 5

Reported: real-time factor (processing seconds per second of audio; below 1 is faster than real time) for
encode and decode, the best of ``--repeats`` runs after one warm-up, and port / ours ratios (above 1: we are
faster). Also one pass of our streaming decoder in 10-frame chunks.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from higgs_audio.codec import AudioCodec  # noqa: E402
from tests.helpers.tiny_codec import FULL, load_port, write_checkpoints  # noqa: E402


def best_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up: allocator, oneDNN primitives, CUDA kernels
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        original, transformers_dir = write_checkpoints(Path(tmp), FULL, seed=0)
        ours = AudioCodec.from_pretrained(original, device=device)
        port = load_port(transformers_dir).to(device)

    rate = ours.sample_rate
    n = int(args.seconds * rate)
    t = np.arange(n) / rate
    wave = (0.3 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 3 * t))
            + 0.02 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    duration = n / rate
    codes = ours.encode(wave, rate)
    port_input = torch.from_numpy(wave)[None, None].to(device)

    def port_encode() -> torch.Tensor:
        with torch.inference_mode():
            return port.encode(port_input, return_dict=False)

    def port_decode() -> torch.Tensor:
        with torch.inference_mode():
            return port.decode(codes[None].to(device), return_dict=False).cpu()

    def ours_stream() -> None:
        stream = ours.stream_decoder()
        for start in range(0, codes.shape[1], 10):
            stream.push(codes[:, start : start + 10])
        stream.flush()

    timings = {
        "encode": (best_time(lambda: ours.encode(wave, rate), args.repeats, device),
                   best_time(port_encode, args.repeats, device)),
        "decode": (best_time(lambda: ours.decode(codes), args.repeats, device),
                   best_time(port_decode, args.repeats, device)),
    }
    stream_time = best_time(ours_stream, 1, device)

    print(f"device {device}, torch threads {torch.get_num_threads()}, {duration:.1f} s of 24 kHz audio "
          f"({codes.shape[1]} frames), best of {args.repeats}")
    print(f"{'':8}{'ours RTF':>10}{'port RTF':>10}{'port/ours':>11}")
    for name, (ours_s, port_s) in timings.items():
        print(f"{name:8}{ours_s / duration:10.4f}{port_s / duration:10.4f}{port_s / ours_s:10.2f}x")
    print(f"streaming decode, 10-frame chunks (lookahead {ours.decoder_lookahead_frames} frames): "
          f"RTF {stream_time / duration:.4f}")


if __name__ == "__main__":
    main()
