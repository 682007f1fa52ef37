"""``higgs-audio finetune DATA -o OUT`` (train a LoRA adapter) and ``higgs-audio finetune merge`` (adapter + base ->
full checkpoint). Exit codes: 0 done, 1 error, 2 bad options, 3 bad training data (every bad file listed)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from higgs_audio.config import DEFAULT_CODEC
from higgs_audio.errors import UsageError
from higgs_audio.options import add_checkpoint_argument, at_least
from higgs_audio.scenes import scene_text

DATA_ERROR_EXIT = 3


def add_finetune_arguments(f: argparse.ArgumentParser) -> None:
    f.add_argument("data", metavar="DATA", help="a folder of clips with .txt transcripts, a folder with an LJSpeech "
                   "metadata.csv, or a .jsonl manifest; or 'merge' to merge --adapter into a full checkpoint")
    f.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="folder for the adapter, checkpoints and log (merge: the merged checkpoint)")
    add_checkpoint_argument(f)
    f.add_argument("--codec", default=DEFAULT_CODEC, help=f"audio tokenizer hub id or folder (default {DEFAULT_CODEC})")
    f.add_argument("--adapter", metavar="DIR", help="merge: the adapter folder to merge")
    f.add_argument("--dry-run", action="store_true", help="check the data and print its summary, then stop")
    f.add_argument("--force", action="store_true", help="replace the run (or merged checkpoint) in OUT")
    f.add_argument("--resume", action="store_true", help="continue OUT's run from its last checkpoint")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    g = f.add_argument_group("what to learn")
    g.add_argument("--preset", choices=("voice", "style", "full-audio-adapter"), default="voice",
                   help="modules to adapt: voice (audio MLPs + audio head, rank 16), style (attention + audio "
                        "MLPs, rank 16), full-audio-adapter (all of these, rank 64). Default voice")
    g.add_argument("--rank", type=at_least(1), help="LoRA rank (default: the preset's)")
    g.add_argument("--alpha", type=float, help="LoRA alpha (default: the preset's)")
    g.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (default 0)")
    g.add_argument("--train-on", choices=("target", "all"), default="target",
                   help="target: only the target clip's audio (and assistant text); all: the transformers port "
                        "processor's labels (all text and every clip, references included). Default target")
    g.add_argument("--reference", choices=("none", "same-speaker"), default="none",
                   help="put another clip of the same speaker in each sample's context, as cloning does")
    g.add_argument("--scene", help="scene of clips that give none (a scene name, a file or words)")
    g.add_argument("--max-seconds", type=float, default=30.0, help="longest clip accepted (default 30)")
    g = f.add_argument_group("optimisation")
    g.add_argument("--steps", type=at_least(1), default=1000, help="optimizer steps (default 1000)")
    g.add_argument("--stop-after", type=at_least(1), metavar="N",
                   help="end this run after step N, with a checkpoint to --resume from (the learning-rate "
                        "schedule still spans --steps)")
    g.add_argument("--batch-size", type=at_least(1), default=8, help="clips per step, all GPUs together "
                   "(default 8)")
    g.add_argument("--max-tokens", type=at_least(16), default=16384, metavar="N",
                   help="padded positions per micro-batch; a step's clips are packed by length into micro-batches "
                        "(gradient accumulation) within this (default 16384)")
    g.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup", type=at_least(0), default=50, help="linear warm-up steps before cosine decay")
    g.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (0 = off; default 1)")
    g.add_argument("--seed", type=at_least(0), default=0)
    g.add_argument("--eval-fraction", type=float, default=0.0, help="share of clips held out for the eval loss")
    g.add_argument("--eval-every", type=at_least(0), default=0, metavar="N", help="eval loss every N steps")
    g.add_argument("--save-every", type=at_least(0), default=0, metavar="N", help="checkpoint every N steps")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (less memory)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--gpus", type=at_least(1), default=1, help="launch N processes with torchrun (one per GPU)")
    g.add_argument("--cache-dir", help="where encoded clips are cached (default: the voice library's code cache)")


def cmd_finetune(args, library) -> int:
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    if args.data == "merge":
        return _merge(args, say)
    if args.adapter:
        raise UsageError("--adapter is for 'finetune merge'; to continue a run, pass --resume")
    if args.gpus > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args.gpus)
    from higgs_audio.train.data import DataError

    try:
        return _train(args, say)
    except DataError as e:
        print(f"higgs-audio: error: {e}", file=sys.stderr)
        return DATA_ERROR_EXIT


def _train(args, say) -> int:
    from higgs_audio.codec.weights import frame_rate
    from higgs_audio.train.trainer import TrainOptions, prepare_data, summarize, train

    opts = TrainOptions(
        data=args.data, output=args.output, model=args.model, codec=args.codec, preset=args.preset, rank=args.rank,
        alpha=args.alpha, dropout=args.dropout, train_on=args.train_on, reference=args.reference,
        scene=scene_text(args.scene) if args.scene else None, steps=args.steps, stop_after=args.stop_after,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
        grad_clip=args.grad_clip, seed=args.seed, eval_fraction=args.eval_fraction, eval_every=args.eval_every,
        save_every=args.save_every, max_seconds=args.max_seconds, gradient_checkpointing=args.gradient_checkpointing,
        device=args.device, cache_dir=args.cache_dir, resume=args.resume, force=args.force,
        progress=sys.stderr.isatty() and not args.quiet,
    )
    if args.dry_run:
        clips, durations = prepare_data(opts)
        print(f"{args.data}: {summarize(clips, durations, frame_rate(opts.codec))}")
        return 0
    out = train(opts, say)
    if opts.log:
        first, last = opts.log[0]["loss"], opts.log[-1]["loss"]
        say(f"wrote the adapter to {out} (loss {first:.4f} -> {last:.4f}); use it with --adapter {out}")
    return 0


def _merge(args, say) -> int:
    from higgs_audio.train.merge import merge

    if not args.adapter:
        raise UsageError("finetune merge needs --adapter DIR")
    out = merge(args.model, args.adapter, args.output, force=args.force)
    say(f"wrote {out}: {args.model} with {args.adapter} merged; use it with --model {out}")
    return 0


def _launch(gpus: int) -> int:
    """Run this command again under torchrun, one process per GPU."""
    argv = sys.argv[sys.argv.index("finetune") + 1 :]
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--gpus":
            skip = True
        elif not a.startswith("--gpus="):
            kept.append(a)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
               "-m", "higgs_audio.train", *kept]
    return subprocess.call(command)
