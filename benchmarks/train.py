"""One LoRA training step on ~10 s clips: step time, audio frames per second and peak memory.

Full size: the random full-size weights of generate.py (bf16, ~11.5 GB, written once into the cache dir).
``--layers N`` instead builds a full-width model with N layers (fp32 random weights in a temporary folder), for
machines where the full model does not fit; the per-layer cost scales linearly.

    python benchmarks/train.py --device cuda --clips 8 --gradient-checkpointing          # the 24 GB question
    python benchmarks/train.py --device cpu --dtype bfloat16 --clips 2                   # full size on a CPU
    python benchmarks/train.py --device cpu --layers 2 --clips 2                          # a slice of it

The step is the trainer's: LoRA (``--preset``) injected with peft, the port's loss on the clips packed into one
micro-batch, backward, AdamW. The first step (allocations, kernel choice) is untimed; the best of ``--steps``
is reported. Peak memory: the process's VmHWM on a CPU, peak allocated on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs back home along the river bank."


def _weights(args) -> Path:
    if args.layers is None:
        from generate import write_weights

        return write_weights(args.cache_dir, "cuda" if args.device.startswith("cuda") else "cpu")
    from tests.helpers.tiny_model import FULL, original_config, random_weights, write_original

    cfg = original_config(dict(FULL, num_hidden_layers=args.layers))
    return write_original(Path(tempfile.mkdtemp(prefix="higgs-train-bench-")), random_weights(cfg), cfg, shards=1)


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("HIGGS_BENCH_CACHE", "~/.cache/higgs-audio-bench")).expanduser())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="base weights (default: bfloat16 on a GPU, "
                        "computed under autocast; float32 on a CPU)")
    parser.add_argument("--layers", type=int, help="build a full-width model with this many layers instead")
    parser.add_argument("--clips", type=int, default=8, help="clips in the step (one micro-batch)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each clip")
    parser.add_argument("--preset", default="voice", choices=("voice", "style", "full-audio-adapter"))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--steps", type=int, default=2, help="timed steps (best kept)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from higgs_audio.checkpoint import load_model
    from higgs_audio.text_tokenizer import TextTokenizer
    from higgs_audio.train import adapter as lora
    from higgs_audio.train.objective import Objective, checkpoint_layers, label_counts, loss
    from higgs_audio.train.samples import build_sample, collate, sample_messages

    device = torch.device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    directory = _weights(args)
    start = time.perf_counter()
    model, cfg, _ = load_model(directory, device=device, dtype=dtype, fuse=False)  # LoRA adapts each projection
    loaded = time.perf_counter() - start
    tok = TextTokenizer(directory)
    frames = int(args.seconds * 25)
    g = torch.Generator().manual_seed(0)
    samples = [build_sample(sample_messages(SENTENCE, torch.randint(0, 1024, (8, frames), generator=g)), tok, cfg)
               for _ in range(args.clips)]
    batch = collate(samples).to(device)
    lora.inject(model, args.preset)
    if args.gradient_checkpointing:
        checkpoint_layers(model)
    objective = Objective(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else (
        torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext())
    counts = label_counts(batch)
    times = []
    for _ in range(args.steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with autocast:
            value = loss(objective(batch).float(), counts)
        value.backward()
        value = value.item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    step = min(times[1:])
    audio = int(batch.audio.sum())
    trainable = sum(p.numel() for p in params)
    print(f"device {args.device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"{torch.get_num_threads()} threads), weights "
          f"{dtype}, {cfg.num_layers} layers, preset {args.preset} ({trainable / 1e6:.1f} M trainable), "
          f"checkpointing {'on' if args.gradient_checkpointing else 'off'}")
    print(f"{args.clips} clips x {args.seconds:g} s: {batch.ids.shape[1]} positions each, {audio} audio frames")
    print(f"load {loaded:.1f} s | step {step:.2f} s | {audio / step:.0f} audio frames/s | "
          f"peak memory {_peak_gib(device):.2f} GiB | loss {value:.3f}")


if __name__ == "__main__":
    main()
