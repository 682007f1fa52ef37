"""Peak memory of encoding one long clip with the full-size codec: whole against chunked, same run.

Full-size random weights in the official shapes are written to a temporary directory; each way runs in its own
subprocess; its peak resident size while encoding (``VmHWM`` after a reset through ``/proc/self/clear_refs``,
Linux only) above its size once loaded is reported with the time and whether the codes agree.

    python benchmarks/codec_memory.py --seconds 60
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(codec_dir: str, seconds: float, chunked: bool, out: str) -> None:
    import numpy as np
    import torch

    from higgs_audio.codec import AudioCodec

    codec = AudioCodec.from_pretrained(codec_dir)
    if not chunked:  # everything at once, as before chunking
        codec.chunk_seconds, codec.segment_seconds = None, float("inf")
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 24000)) / 24000
    wave = (0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.1 * np.sin(t))) + 0.02 * rng.standard_normal(t.size))
    Path("/proc/self/clear_refs").write_text("5")  # peak := now, so loading does not count
    loaded = kib("VmRSS")
    start = time.perf_counter()
    codes = codec.encode(wave.astype(np.float32), 24000)
    elapsed = time.perf_counter() - start
    torch.save(codes, out)
    print(json.dumps({"seconds": elapsed, "peak_mb": kib("VmHWM") / 1024, "loaded_mb": loaded / 1024}))


def kib(key: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key + ":"))
    return int(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        codec_dir, seconds, chunked, out = args.child
        return child(codec_dir, float(seconds), chunked == "1", out)
    import torch

    sys.path.insert(0, str(ROOT))
    from tests.helpers.tiny_codec import FULL, write_checkpoints

    with tempfile.TemporaryDirectory() as tmp:
        codec_dir, _ = write_checkpoints(Path(tmp) / "codec", FULL)
        codes = {}
        for name, chunked in (("whole", "0"), ("chunked", "1")):
            out = str(Path(tmp) / f"{name}.pt")
            result = subprocess.run([sys.executable, __file__, "--child", str(codec_dir), str(args.seconds), chunked,
                                     out], capture_output=True, text=True, check=True, cwd=ROOT)
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            codes[name] = torch.load(out, weights_only=True)
            print(f"{name:8s} {args.seconds:g} s clip: {figures['seconds']:.1f} s, peak RSS +"
                  f"{figures['peak_mb'] - figures['loaded_mb']:.0f} MB over {figures['loaded_mb']:.0f} MB once loaded")
        same = torch.equal(codes["whole"], codes["chunked"])
        agree = (codes["whole"] == codes["chunked"]).float().mean().item()
        print(f"codes identical: {same} (agreement {agree:.4f}, {codes['whole'].shape[1]} frames)")


if __name__ == "__main__":
    main()
