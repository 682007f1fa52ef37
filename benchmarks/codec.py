"""Audio codec speed: our AudioCodec against transformers' HiggsAudioV2TokenizerModel, same weights, same run.

Full-size random weights in the official shapes (HuBERT-base teacher, 64/1024-wide DAC, 8 x 1024 RVQ) are
written to a temporary directory; both implementations load them and encode / decode the same 10 s clip.

    python benchmarks/codec.py                    # CPU, torch's default thread count
    python benchmarks/codec.py --device cuda --seconds 30 --repeats 5

Reported: real-time factor (processing seconds per second of audio; below 1 is faster than real time) for
encode and decode, the best of ``--repeats`` runs after one warm-up, and port / ours ratios (above 1: we are
faster). Also our streaming decoder fed 10-frame chunks, and ``--streams`` streams decoded chunk by chunk
one by one or together (``StreamDecoder.push_many``, as the server does). Runs are interleaved. The same
numbers are drawn as a picture (``--plot``, default codec.png).
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

from higgs_audio.codec import AudioCodec, StreamDecoder  # noqa: E402
from tests.helpers.tiny_codec import FULL, load_port, write_checkpoints  # noqa: E402


def best_times(fns: list[Callable[[], object]], repeats: int, device: torch.device) -> list[float]:
    """Best wall time of each function; runs are interleaved so that load from other processes hits all alike."""
    for fn in fns:
        fn()  # warm-up: allocator, oneDNN primitives, CUDA kernels
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--streams", type=int, default=8, help="streams for the batched streaming decode")
    parser.add_argument("--plot", default="codec.png", help="the picture of the results ('none': no picture)")
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

    def many_streams(together: bool) -> None:
        """``--streams`` streams of the clip's codes in 10-frame chunks: the server's streaming decode, with
        each chunk step decoded in one ``push_many`` call (``together``) or one ``push`` per stream."""
        streams = [ours.stream_decoder() for _ in range(args.streams)]
        for start in range(0, codes.shape[1], 10):
            chunk = codes[:, start : start + 10]
            if together:
                StreamDecoder.push_many(streams, [chunk] * len(streams))
            else:
                for stream in streams:
                    stream.push(chunk)
        for stream in streams:
            stream.flush()

    ours_enc, port_enc, ours_dec, port_dec, stream, apart, together = best_times(
        [lambda: ours.encode(wave, rate), port_encode, lambda: ours.decode(codes), port_decode, ours_stream,
         lambda: many_streams(False), lambda: many_streams(True)],
        args.repeats, device,
    )
    timings = {"encode": (ours_enc, port_enc), "decode": (ours_dec, port_dec)}

    print(f"device {device}, torch threads {torch.get_num_threads()}, {duration:.1f} s of 24 kHz audio "
          f"({codes.shape[1]} frames), best of {args.repeats}")
    print(f"{'':8}{'ours RTF':>10}{'port RTF':>10}{'port/ours':>11}")
    for name, (ours_s, port_s) in timings.items():
        print(f"{name:8}{ours_s / duration:10.4f}{port_s / duration:10.4f}{port_s / ours_s:10.2f}x")
    print(f"streaming decode, 10-frame chunks (lookahead {ours.decoder_lookahead_frames} frames): "
          f"RTF {stream / duration:.4f}")
    print(f"{args.streams} streams, 10-frame chunks: RTF per stream {apart / duration / args.streams:.4f} one by one, "
          f"{together / duration / args.streams:.4f} together (x{apart / together:.2f})")
    if args.plot != "none":
        import plots

        rtf = {name: (ours_s / duration, port_s / duration) for name, (ours_s, port_s) in timings.items()}
        streaming = {"one stream": stream / duration, f"{args.streams} streams, one by one": apart / duration / args.streams,
                     f"{args.streams} streams together": together / duration / args.streams}
        settings = f"{duration:.0f} s clip, best of {args.repeats}"
        print(f"picture: {plots.codec(rtf, streaming, Path(args.plot), f'{plots.machine(args.device)} · {settings}')}")


if __name__ == "__main__":
    main()
