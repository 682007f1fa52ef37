"""Where a decode step's device time goes: the kernels of a few full-size decode steps, by total time.

Uses the full-size random weights that ``generate.py`` writes (run it first with the same ``--cache-dir``).
The steps run eagerly so that every kernel is seen with its own time (a CUDA graph replays the same kernels).

    python benchmarks/profile_step.py --device cuda --cache-dir /tmp/bench
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.generate import REF_FRAMES, _prompt  # noqa: E402
from higgs_audio.checkpoint import load_model  # noqa: E402
from higgs_audio.engine import BatchDecoder, Request, SamplingParams  # noqa: E402
from higgs_audio.text_tokenizer import TextTokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/higgs-audio-bench").expanduser())
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quantize", choices=("int8", "int4"))
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    weights = args.cache_dir / "generation-full-bf16"
    model, _, _ = load_model(weights, device=args.device, quantize=args.quantize)
    tok = TextTokenizer(weights)
    ids, ref = _prompt(tok)
    decoder = BatchDecoder(model, tok, max_batch=args.streams, max_len=len(ids) + REF_FRAMES + 64 + args.steps)
    params = SamplingParams(temperature=0.7, seed=0, max_new_tokens=10**6)
    for _ in range(args.streams):
        decoder.add(Request(ids, [ref], params))
    for _ in range(3):  # warm-up
        decoder.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            decoder.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    print(f"{args.steps} decode steps, {args.streams} streams, {args.quantize or 'bf16'}, {args.device}")
    print(prof.key_averages().table(sort_by=key, row_limit=args.top, max_name_column_width=70))


if __name__ == "__main__":
    main()
