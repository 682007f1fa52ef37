"""Where a decode step's device time goes: the kernels of a few full-size decode steps, by total time.

Uses the full-size random weights that ``generate.py`` writes (run it first with the same ``--cache-dir``).
The steps run eagerly so that every kernel is seen with its own time (a CUDA graph replays the same kernels).
``--count-ops`` instead counts the operators that one all-audio step of the CUDA-graph path dispatches
(views excluded), on any device: on a GPU each is a kernel launch or more, which is what bounds the step.

    python benchmarks/profile_step.py --device cuda --cache-dir /tmp/bench
    python benchmarks/profile_step.py --device cpu --dtype bfloat16 --count-ops
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.generate import REF_FRAMES, _prompt  # noqa: E402
from higgs_audio.checkpoint import load_model  # noqa: E402
from higgs_audio.engine import BatchDecoder, Request  # noqa: E402
from higgs_audio.sampling import SamplingParams  # noqa: E402
from higgs_audio.text_tokenizer import TextTokenizer  # noqa: E402
from tests.helpers.eager_steps import use_eager_steps  # noqa: E402


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched while active, except those that only make views."""

    VIEWS = {"view", "_unsafe_view", "t", "transpose", "expand", "unsqueeze", "squeeze", "slice", "select", "alias",
             "detach", "as_strided", "unflatten", "split", "chunk", "permute", "_reshape_alias", "unbind", "reshape"}

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.removeprefix("aten::")
        if name not in self.VIEWS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))

    def total(self) -> int:
        return sum(self.counts.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/higgs-audio-bench").expanduser())
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="auto", help="compute dtype (bfloat16 on a CPU counts a GPU's operators)")
    parser.add_argument("--quantize", choices=("int8", "int4"))
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--count-ops", action="store_true", help="count one graph-path step's dispatched operators")
    args = parser.parse_args()

    weights = args.cache_dir / "generation-full-bf16"
    model, _, _ = load_model(weights, device=args.device, dtype=args.dtype, quantize=args.quantize)
    tok = TextTokenizer(weights)
    ids, ref = _prompt(tok)
    decoder = BatchDecoder(model, tok, max_batch=args.streams, max_len=len(ids) + REF_FRAMES + 64 + args.steps)
    params = SamplingParams(temperature=0.7, seed=0, max_new_tokens=10**6)
    if args.count_ops:
        use_eager_steps(decoder)  # the steps the CUDA path captures, run without capture
    for _ in range(args.streams):
        decoder.add(Request(ids, [ref], params))
    for _ in range(3):  # warm-up
        decoder.step()
    if args.count_ops:
        with torch.inference_mode(), OpCounter() as counter:
            decoder.step()
        layers = model.cfg.num_layers
        print(f"one all-audio decode step, {args.streams} streams, {layers} layers: {counter.total()} operators")
        for name, n in counter.counts.most_common(args.top):
            print(f"  {n:6d} {name}")
        return
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
