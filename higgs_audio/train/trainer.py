"""The training loop: LoRA on one device or many (torchrun + DistributedDataParallel), AdamW with warm-up and
cosine decay, batches packed by length into micro-batches, checkpoints and exact resuming.

A step takes ``batch_size`` clips (all processes together). Each process takes every world-th clip of the step's
batch and packs its share into micro-batches of at most ``max_tokens`` padded positions: those are the gradient
accumulation steps. The loss is normalised by the label counts of the whole step (summed over processes), so a
step's update is the one the whole batch would give at once, however it is split (see ``objective``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from higgs_audio.errors import HiggsAudioError
from higgs_audio.train.data import (
    Clip,
    DataError,
    check_clips,
    encode_clips,
    find_clips,
    summarize,
)

CHECKPOINTS = "checkpoints"
LOG_FILE = "train_log.jsonl"
STATE_FILE = "trainer_state.pt"
ARGS_FILE = "training_args.json"
REFERENCES = ("none", "same-speaker")


@dataclass
class TrainOptions:
    data: str
    output: str
    model: str
    codec: str
    preset: str = "voice"
    rank: int | None = None
    alpha: float | None = None
    dropout: float = 0.0
    train_on: str = "target"
    reference: str = "none"
    scene: str | None = None
    steps: int = 1000
    stop_after: int | None = None  # end this run early (the schedule still spans ``steps``); resume later
    batch_size: int = 8
    max_tokens: int = 16384
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    eval_fraction: float = 0.0
    eval_every: int = 0
    save_every: int = 0
    max_seconds: float = 30.0
    gradient_checkpointing: bool = False
    device: str = "auto"
    cache_dir: str | None = None
    resume: bool = False
    force: bool = False
    progress: bool = False
    log: list = field(default_factory=list, repr=False)  # (step, loss) of this run, for the caller


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` (step counts from 1)."""
    if step <= warmup:
        return step / max(warmup, 1)
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class _Dist:
    """This process's place in a torchrun job (or a lone process)."""

    def __init__(self, device_arg: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        from higgs_audio.device import pick_device

        device = pick_device(device_arg)
        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def prepare_data(opts: TrainOptions) -> tuple[list[Clip], list[float]]:
    clips, problems = find_clips(opts.data)
    return clips, check_clips(clips, problems, opts.max_seconds)


def check_output(opts: TrainOptions) -> Path:
    out = Path(opts.output).expanduser()
    if opts.resume:
        if not latest_checkpoint(out):
            raise HiggsAudioError(f"--resume: {out} holds no checkpoint to resume from ({out / CHECKPOINTS})")
    elif out.exists() and any(out.iterdir()):
        if not opts.force:
            raise HiggsAudioError(f"{out} is not empty: pass --resume to continue its run or --force to replace it")
    return out


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / CHECKPOINTS).glob("step-*")) if (out / CHECKPOINTS).is_dir() else []
    return found[-1] if found else None


def _samples(opts, clips, codes, tokenizer, cfg):
    from higgs_audio.train.samples import build_sample, sample_messages
    from higgs_audio.voices import VoiceRef

    by_speaker: dict[str | None, list[int]] = {}
    for i, c in enumerate(clips):
        by_speaker.setdefault(c.speaker, []).append(i)
    samples = []
    for i, clip in enumerate(clips):
        reference = None
        if opts.reference == "same-speaker":
            peers = by_speaker[clip.speaker]
            if len(peers) > 1:  # the next clip of the same speaker, so every clip has a fixed reference
                j = peers[(peers.index(i) + 1) % len(peers)]
                reference = VoiceRef(codes[j], clips[j].text)
        messages = sample_messages(clip.text, codes[i], reference=reference, scene=clip.scene or opts.scene)
        samples.append(build_sample(messages, tokenizer, cfg, opts.train_on))
    return samples


def _split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = 0 if fraction <= 0 else max(1, round(fraction * n))
    if n_eval >= n:
        raise DataError(f"--eval-fraction {fraction} leaves no clip to train on ({n} clips)")
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """The clips of optimizer step ``step`` (from 1): a fresh shuffle every epoch, the last partial batch dropped."""
    per_epoch = n // batch_size
    epoch, j = divmod(step - 1, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    return order[j * batch_size : (j + 1) * batch_size]


def train(opts: TrainOptions, say=lambda msg: None) -> Path:
    """Run (or resume) a fine-tuning run; returns the output folder holding the final adapter."""
    from higgs_audio.checkpoint import load_model
    from higgs_audio.codec.codec import AudioCodec
    from higgs_audio.codec.weights import frame_rate
    from higgs_audio.text_tokenizer import TextTokenizer
    from higgs_audio.train import adapter as lora
    from higgs_audio.train.objective import (
        Objective,
        checkpoint_layers,
        label_counts,
        loss,
    )
    from higgs_audio.train.samples import collate, pack

    place = _Dist(opts.device)
    clips, durations = prepare_data(opts)
    out = check_output(opts)
    device = place.device
    say(f"data: {summarize(clips, durations, frame_rate(opts.codec))}")

    # Frozen base weights in bf16 on GPUs (computed under bf16 autocast), fp32 on CPUs; adapters in fp32. The
    # projections stay separate: LoRA adapts each one, under the names the port's peft loads them by.
    model, cfg, directory = load_model(opts.model, device=device,
                                       dtype="bfloat16" if device.type == "cuda" else "float32", fuse=False)
    codec = AudioCodec.from_pretrained(opts.codec, device=device)
    if not place.main:
        place.barrier()  # the main process encodes first; the others then read its cache
    codes = encode_clips(clips, codec, opts.cache_dir, progress=opts.progress and place.main)
    if place.main:
        place.barrier()
    del codec
    samples = _samples(opts, clips, codes, TextTokenizer(directory), cfg)
    train_ids, eval_ids = _split(len(samples), opts.eval_fraction, opts.seed)
    if len(train_ids) < opts.batch_size:
        raise DataError(f"--batch-size {opts.batch_size} is larger than the {len(train_ids)} training clips")
    if opts.batch_size < place.world:
        raise HiggsAudioError(f"--batch-size {opts.batch_size} gives no clip to some of the {place.world} processes")

    torch.manual_seed(opts.seed)  # the adapters' initial values
    config = lora.inject(model, opts.preset, opts.rank, opts.alpha, opts.dropout)
    if opts.gradient_checkpointing:
        checkpoint_layers(model)
    objective = Objective(model)
    module = objective
    if place.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        module = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)

    start = 0
    resumed = latest_checkpoint(out) if opts.resume else None
    if resumed is not None:
        from safetensors.torch import load_file

        lora.load_trainable_state(model, load_file(str(resumed / lora.WEIGHTS_FILE)))
        state = torch.load(resumed / STATE_FILE, map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        say(f"resuming {out} after step {start}")
    if place.main:
        if opts.force and not opts.resume:
            _remove_run(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_args(out, opts)
        _trim_log(out / LOG_FILE, start)

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    bar = _bar(opts.steps, start, opts.progress and place.main)
    last = min(opts.steps, opts.stop_after or opts.steps)
    for step in range(start + 1, last + 1):
        began = time.perf_counter()
        picked = [train_ids[i] for i in batch_indices(step, len(train_ids), opts.batch_size, opts.seed)]
        mine = picked[place.rank :: place.world]
        groups = [collate([samples[mine[i]] for i in g]) for g in pack([len(samples[i]) for i in mine],
                                                                        opts.max_tokens)]
        counts = place.sum(sum(label_counts(b) for b in groups).to(device))
        for group in optimizer.param_groups:
            group["lr"] = opts.lr * lr_factor(step, opts.warmup, opts.steps)
        total = torch.zeros_like(counts)
        for n, batch in enumerate(groups):
            sync = n == len(groups) - 1 or place.world == 1
            with (contextlib.nullcontext() if sync else module.no_sync()), autocast:
                sums = module(batch.to(device)).float()
                # DDP averages gradients over processes: scale so that they add up to the whole step's.
                (loss(sums, counts) * place.world).backward()
            total += sums.detach()
        if opts.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss(place.sum(total), counts))
        frames = float(place.sum(torch.tensor(float(sum(int(b.audio.sum()) for b in groups)))))
        rate = frames / (time.perf_counter() - began)
        record = {"step": step, "loss": value, "lr": optimizer.param_groups[0]["lr"], "frames_per_s": round(rate, 1)}
        if eval_ids and opts.eval_every and (step % opts.eval_every == 0 or step == opts.steps):
            record["eval_loss"] = evaluate(objective, [samples[i] for i in eval_ids], opts.max_tokens, device,
                                           autocast)
        opts.log.append(record)
        if place.main:
            with open(out / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{value:.4f}", frames_s=f"{rate:.0f}")
            bar.update(1)
            if (opts.save_every and step % opts.save_every == 0 or step == last) and step < opts.steps:
                _save_checkpoint(out, step, model, config, optimizer, opts.model)
    bar.close()
    if place.main:
        _save_final(out, model, config, opts.model)
    place.barrier()
    return out


def evaluate(objective, samples, max_tokens: int, device, autocast=contextlib.nullcontext()) -> float:
    """The loss over a whole set of samples (as one batch)."""
    from higgs_audio.train.objective import label_counts, loss
    from higgs_audio.train.samples import collate, pack

    batches = [collate([samples[i] for i in g]) for g in pack([len(s) for s in samples], max_tokens)]
    with torch.no_grad(), autocast:
        sums = sum(objective(b.to(device)).float() for b in batches)
    return float(loss(sums, sum(label_counts(b) for b in batches).to(device)))


def _bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="training", disable=not enabled,
                dynamic_ncols=True, file=sys.stderr)


def _remove_run(out: Path) -> None:
    """What a run writes into its folder (--force replaces a run, and only that: other files stay)."""
    from higgs_audio.lora import CONFIG_FILE, WEIGHTS_FILE

    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE, LOG_FILE, ARGS_FILE):
        (out / name).unlink(missing_ok=True)


def _write_args(out: Path, opts: TrainOptions) -> None:
    args = {k: v for k, v in asdict(opts).items() if k not in ("log", "progress", "force", "resume")}
    (out / ARGS_FILE).write_text(json.dumps(args, indent=2))


def _trim_log(path: Path, last_step: int) -> None:
    """Keep the log lines of steps up to ``last_step`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if json.loads(ln)["step"] <= last_step]
    path.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")


def _save_checkpoint(out: Path, step: int, model, config, optimizer, base: str) -> None:
    from higgs_audio.train import adapter as lora

    final = out / CHECKPOINTS / f"step-{step:07d}"
    staging = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    lora.save_adapter(model, config, staging, base)
    torch.save({"optimizer": optimizer.state_dict(), "step": step}, staging / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)


def _save_final(out: Path, model, config, base: str) -> None:
    """The adapter at the top of the output folder, its two files each replaced atomically."""
    from higgs_audio.train import adapter as lora

    staging = out / ".final.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    lora.save_adapter(model, config, staging, base)
    for name in (lora.CONFIG_FILE, lora.WEIGHTS_FILE):
        os.replace(staging / name, out / name)
    staging.rmdir()
