"""Generation speed and memory: our engine against transformers' HiggsAudioV2 port, same weights, same run.

Full-size random weights in the official shapes (bf16, ~11.5 GB) are written once into a cache dir.
Each engine configuration runs in its own subprocess so peak memory is measured per configuration.

    python benchmarks/generate.py                       # CPU: ours (auto, int8) vs the port
    python benchmarks/generate.py --device cuda --compile --configs bf16,bf16-fused,int4 --streams 1,16
    python benchmarks/generate.py --configs int8-saved --cpu-isa avx2 --rounds 2   # best of two turns each
    git worktree add /tmp/before main~3 && python benchmarks/generate.py --configs int8-saved --baseline /tmp/before

It prints a table and writes the same numbers as a picture (``--plot``, default generate.png).

Reported per configuration: prefill seconds for a ~300-token voice-clone prompt, single-stream decode
frames/s, aggregate frames/s at each batch size, time to first decodable audio frame, peak RSS / GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REF_FRAMES = 250  # a 10 s reference clip
AUDIO_EOS = 1025
TEXT = "And now the text to speak, a sentence of ordinary length."
OTHER_TEXT = "Then another sentence in the same voice, a little longer than the first one was."
BASELINE = "@baseline"  # suffix of a configuration run from --baseline's checkout
WEIGHTS_VERSION = "2"  # of the cached random weights' recipe: 2 added the zero eos row
PROMPT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nGenerate audio following instruction.\n\n"
    "<|scene_desc_start|>\nAudio is recorded from a quiet room.\n<|scene_desc_end|><|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nThe reference speaker reads one calm sentence aloud.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|><|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n" + TEXT + "<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>"
)


def write_weights(cache: Path, device: str) -> Path:
    """Full-size random weights, native format, sharded per layer group; written once (drawn on ``device``:
    a GPU draws 3 B numbers in a blink, a CPU in a minute)."""
    from safetensors.torch import save_file

    from tests.helpers.text_tokenizer import write_text_tokenizer
    from tests.helpers.tiny_model import FULL, native_config, original_config, original_shapes, to_native_keys

    target, done = cache / "generation-full-bf16", cache / "generation-full-bf16" / "done"
    if done.exists() and done.read_text() == WEIGHTS_VERSION:
        return target
    if target.exists():  # an older draw (e.g. without the zero eos row): it and the copies made from it go
        print(f"  replacing the outdated weights in {cache}", file=sys.stderr)
        for stale in [target, *cache.glob("generation-full-*-saved")]:
            shutil.rmtree(stale)
    target.mkdir(parents=True)
    shapes = original_shapes(original_config(FULL))
    groups: dict[str, dict] = {}
    for name, shape in shapes.items():
        group = name.split(".")[1] if name.startswith("layers.") else "rest"
        groups.setdefault(group, {})[name] = shape
    weight_map, total, g = {}, 0, torch.Generator(device).manual_seed(0)
    for i, (group, members) in enumerate(sorted(groups.items())):
        tensors = {}
        for name, shape in members.items():
            scale = 1.0 if len(shape) == 1 or "embed" in name else shape[1] ** -0.5
            base = 1.0 if len(shape) == 1 else 0.0
            tensors[name] = (base + scale * torch.randn(shape, generator=g, device=device)).to(torch.bfloat16).cpu()
            if name == "audio_decoder_proj.audio_lm_head.weight":
                # A zero eos row: its logit (0) stays below the top-k cut, so streams keep speaking as a trained
                # model does for the length of its text, and every step measures audio decoding.
                tensors[name].view(8, -1, shape[1])[:, AUDIO_EOS] = 0
        tensors = to_native_keys(tensors)
        fname = f"model-{i:05d}.safetensors"
        save_file(tensors, str(target / fname))
        weight_map.update({k: fname for k in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        print(f"  wrote shard {fname}", file=sys.stderr)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (target / "model.safetensors.index.json").write_text(json.dumps(index))
    (target / "config.json").write_text(json.dumps(native_config(FULL)))
    write_text_tokenizer(target)
    done.write_text(WEIGHTS_VERSION)
    return target


def _prompt(tok):
    ids = tok.encode(PROMPT)
    ref = torch.randint(0, 1024, (8, REF_FRAMES), generator=torch.Generator().manual_seed(1))
    return ids, ref


def _peak_memory(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    status = Path("/proc/self/status")
    if status.exists():  # this process's own peak: ru_maxrss would also count the parent's, kept across exec
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _best(runs: list[dict]) -> dict:
    """One configuration's runs merged figure by figure: the shortest time, the highest rate, the largest
    memory peak. Runs that failed count only when all did."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    merged = {}
    for key, value in ok[0].items():
        values = [r[key] for r in ok if key in r]
        if isinstance(value, dict):
            merged[key] = _best(values)
        elif not isinstance(value, (int, float)):
            merged[key] = value
        elif "per_s" in key or key == "peak_memory_gib":
            merged[key] = max(values)
        else:  # seconds and milliseconds
            merged[key] = min(values)
    return merged


def run_ours(weights: Path, device: str, config: str, streams: list[int], frames: int, compile: bool) -> dict:
    from higgs_audio.checkpoint import load_model
    from higgs_audio.engine import BatchDecoder, Request
    from higgs_audio.sampling import SamplingParams
    from higgs_audio.text_tokenizer import TextTokenizer

    if config.endswith("-eager"):  # on CUDA, the same configuration without CUDA graphs: their gain
        config, compile = config.removesuffix("-eager"), False
    fuse = config.endswith("-fused")  # with --compile: the step compiled by torch.compile, then captured
    config = config.removesuffix("-fused")
    config = config.removesuffix("-torch")  # run with our CPU kernels switched off (main() sets the switch)
    if config.endswith("-saved"):  # the copy written by save_quantized: loads without quantizing
        weights, config = weights.parent / f"generation-full-{config}", "auto"
    dtype, quantize = {"auto": ("auto", None), "bf16": ("bfloat16", None), "int8": ("auto", "int8"),
                       "int4": ("auto", "int4")}[config]
    t = time.perf_counter()
    model, _, _ = load_model(weights, device=device, dtype=dtype, quantize=quantize)
    load_s = time.perf_counter() - t
    tok = TextTokenizer(weights)
    ids, ref = _prompt(tok)
    params = SamplingParams(temperature=0.7, top_k=50, top_p=0.95, seed=0, max_new_tokens=10**6)
    out = {"load_s": load_s}
    max_len = len(ids) + REF_FRAMES + 9 + frames + 16
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    warm = BatchDecoder(model, tok, max_batch=1, max_len=max_len)
    warm.release(warm.add(Request(ids, [ref], params)))  # first-call kernel set-up is not prefill time
    del warm
    for n in sorted(set(streams)):
        t = time.perf_counter()
        decoder = BatchDecoder(model, tok, max_batch=n, max_len=max_len, compile=compile, fuse=fuse)
        setup = time.perf_counter() - t  # with --compile: capturing the steps (and compiling them, -fused)
        forward = _time_device_work(decoder) if device.startswith("cuda") else None
        sync()
        t = time.perf_counter()
        for _ in range(n):
            decoder.add(Request(ids, [ref], params))
        sync()
        prefill = (time.perf_counter() - t) / n
        first = None
        produced, steps = 0, 0
        for _ in range(3 if compile else 1):  # warm-up (and capture) steps, not timed
            decoder.step()
        sync()
        t = time.perf_counter()
        while steps < frames:
            events = decoder.step()
            steps += 1
            produced += sum(e.kind == "audio" for e in events)
            for e in events:  # keep the batch full of audio: a stream whose audio ended is replaced at once
                if e.kind == "done" or e.last:
                    decoder.release(e.slot)
                    decoder.add(Request(ids, [ref], params))
            if first is None and steps >= 8:
                sync()
                first = time.perf_counter() - t
        sync()
        elapsed = time.perf_counter() - t
        out[f"streams_{n}"] = {"frames_per_s": produced / elapsed, "prefill_s": prefill, "step_ms": 1e3 * elapsed / steps,
                               "setup_s": setup}
        if forward:  # GPU time per step of the CUDA graph (whole step) or, eager, of the forward pass alone
            device_ms = sorted(s.elapsed_time(e) for s, e in forward[-frames:])
            out[f"streams_{n}"]["device_ms"] = device_ms[len(device_ms) // 2]
        if n == 1:
            out["prefill_s"] = prefill
            out["decode_frames_per_s"] = produced / elapsed
            out["first_frame_s"] = prefill + first + elapsed / steps  # prefill + 8 decode steps
            out.update(_first_frame_in_same_voice(decoder, tok, ref, params, sync))
    out["peak_memory_gib"] = _peak_memory(device)
    return out


def _first_frame_in_same_voice(decoder, tok, ref, params, sync) -> dict:
    """Seconds to the first decodable frame (prefill + 8 decode steps) of a request in the voice ``decoder``
    has just used: the same system prompt and reference clip, another sentence. The prefix it shares with
    the earlier prompt comes from the prefix cache; the rest is prefilled."""
    from higgs_audio.engine import Request

    for slot in list(decoder.streams):
        decoder.release(slot)
    ids = tok.encode(PROMPT.replace(TEXT, OTHER_TEXT))
    sync()
    t = time.perf_counter()
    slot = decoder.add(Request(ids, [ref], params))
    for _ in range(8):
        decoder.step()
    sync()
    s = decoder.streams[slot]
    return {"cached_voice_first_frame_s": time.perf_counter() - t, "cached_voice_reused": [s.reused, s.prompt_len]}


def _time_device_work(decoder) -> list:
    """Record CUDA events around each replay of the decoder's CUDA graph (the whole step's device work) or, without
    graphs, each call of its forward pass; returns the list of (start, end) events."""
    owner, name = (decoder._graphs, "replay") if decoder._graphs is not None else (decoder, "_forward")
    events, fn = [], getattr(owner, name)

    def timed(*args, **kwargs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn(*args, **kwargs)
        end.record()
        events.append((start, end))
        return out

    setattr(owner, name, timed)
    return events


def run_port(weights: Path, device: str, frames: int) -> dict:
    from transformers import HiggsAudioV2Config, HiggsAudioV2ForConditionalGeneration

    from higgs_audio.delay import add_delay_pattern
    from higgs_audio.text_tokenizer import TextTokenizer

    raw = json.loads((weights / "config.json").read_text())
    t = time.perf_counter()
    config = HiggsAudioV2Config(**{k: v for k, v in raw.items() if k != "model_type"})
    model = HiggsAudioV2ForConditionalGeneration.from_pretrained(weights, config=config, dtype=torch.bfloat16)
    model = model.to(device).eval()
    for p in model.parameters():  # weights are mapped lazily: touch them before timing
        p.data = p.data.clone()
    load_s = time.perf_counter() - t
    tok = TextTokenizer(weights)
    ids, ref = _prompt(tok)
    block = add_delay_pattern(ref, 1024, 1025)
    at = ids.index(tok.token_id("<|AUDIO_OUT|>"))
    ids = ids[:at] + [ids[at]] * block.shape[1] + ids[at + 1 :]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    inputs = dict(
        input_ids=torch.tensor([ids], device=device),
        audio_input_ids=block.t()[None].to(device),
        audio_input_ids_mask=torch.ones(1, block.shape[1], dtype=torch.bool, device=device),
        use_cache=True,
    )
    with torch.inference_mode():
        model.model(**inputs)  # first-call kernel set-up, as for ours
        sync()
        t = time.perf_counter()
        out = model.model(**inputs)
        logits = model.audio_lm_head(out.last_hidden_state[:, -1:])
        sync()
        prefill = time.perf_counter() - t
        cache = out.past_key_values
        column = torch.full((1, 1, 8), 1024, device=device)
        times = []
        for step in range(frames + 1):
            t = time.perf_counter()
            out = model.model(audio_input_ids=column, past_key_values=cache, use_cache=True)
            logits = model.audio_lm_head(out.last_hidden_state).view(1, 1, 8, -1)
            column = logits.argmax(-1).clamp(max=1023)
            cache = out.past_key_values
            sync()
            if step:  # the first step warms up
                times.append(time.perf_counter() - t)
    decode = len(times) / sum(times)
    return {"load_s": load_s, "prefill_s": prefill, "decode_frames_per_s": decode,
            "first_frame_s": prefill + 8 / decode, "peak_memory_gib": _peak_memory(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("HIGGS_BENCH_CACHE", "~/.cache/higgs-audio-bench")).expanduser())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", default="auto,int8",
                        help="ours: auto, bf16, int8, int4, int8-saved, int4-saved (comma-separated; -saved loads a "
                             "copy written once by save_quantized), each optionally + -eager (CUDA graphs off), "
                             "-fused (with --compile: the step compiled by torch.compile before capture) or -torch "
                             "(our CPU kernels off)")
    parser.add_argument("--streams", default="1,4,16")
    parser.add_argument("--frames", type=int, default=30, help="decode steps timed per batch size")
    parser.add_argument("--compile", action="store_true",
                        help="replay the decode step from CUDA graphs (CUDA only; a config ending in -eager opts "
                             "out, to measure the gain)")
    parser.add_argument("--skip-port", action="store_true")
    parser.add_argument("--cpu-isa", help="cap oneDNN and ATen to this instruction set (e.g. avx2) in both engines, "
                        "to measure as on a CPU without native bf16")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every configuration this many times, in turn, and report each one's best: on a "
                             "machine shared with others, a slow stretch then does not fall on one engine alone")
    parser.add_argument("--baseline", type=Path,
                        help="another checkout of this repository (e.g. a git worktree of the previous main): its "
                             "engine runs each of --configs too, in turn with ours, for a same-run comparison")
    parser.add_argument("--plot", default="generate.png", help="the picture of the results ('none': no picture)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    streams = [int(s) for s in args.streams.split(",")]

    if args.worker:  # inside a subprocess: run one configuration, print JSON
        weights = args.cache_dir / "generation-full-bf16"
        if args.worker.startswith("save-"):
            from higgs_audio.quantized_checkpoint import save_quantized

            config = args.worker.removeprefix("save-")
            save_quantized(weights, args.cache_dir / f"generation-full-{config}", config.removesuffix("-saved"))
            return
        if args.worker == "port":
            result = run_port(weights, args.device, args.frames)
        else:
            result = run_ours(weights, args.device, args.worker, streams, args.frames, args.compile)
        print(json.dumps(result))
        return

    write_weights(args.cache_dir, args.device)
    ours = args.configs.split(",")
    configs = ours + [f"{c}{BASELINE}" for c in ours if args.baseline] + ([] if args.skip_port else ["port"])
    for config in {c.removesuffix(BASELINE).removesuffix("-torch") for c in configs}:
        if config.endswith("-saved") and not (args.cache_dir / f"generation-full-{config}").exists():
            print(f"writing the {config} copy ...", file=sys.stderr)
            subprocess.run([sys.executable, __file__, "--worker", f"save-{config}", "--cache-dir", str(args.cache_dir)],
                           check=True)
    runs: dict[str, list] = {config: [] for config in configs}
    for round_ in range(args.rounds):
        for config in configs:
            print(f"running {config} (round {round_ + 1} of {args.rounds}) ...", file=sys.stderr)
            script, worker = Path(__file__), config.removesuffix(BASELINE)
            env = dict(os.environ)
            if config.endswith(BASELINE):  # the baseline's own benchmark and package
                script = args.baseline.resolve() / "benchmarks" / "generate.py"
                env["PYTHONPATH"] = os.pathsep.join([str(args.baseline.resolve()), env.get("PYTHONPATH", "")])
            cmd = [sys.executable, str(script), "--worker", worker, "--device", args.device, "--streams", args.streams,
                   "--frames", str(args.frames), "--cache-dir", str(args.cache_dir)] + (["--compile"] if args.compile else [])
            if args.cpu_isa:
                env.update(ONEDNN_MAX_CPU_ISA=args.cpu_isa.upper(), ATEN_CPU_CAPABILITY=args.cpu_isa.lower())
            if worker.endswith("-torch"):
                env["HIGGS_AUDIO_CPU_KERNELS"] = "0"
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                runs[config].append({"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"})
                continue
            runs[config].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[config][-1]), file=sys.stderr)
    results = {config: _best(r) for config, r in runs.items()}

    isa = f", CPU kernels capped to {args.cpu_isa}" if args.cpu_isa else ""
    print(f"\ndevice {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}{isa}")
    port = results.get("port", {})
    header = (f"{'config':16} {'load s':>7} {'prefill s':>10} {'decode f/s':>11} {'first frame s':>14} "
              f"{'same voice s':>13} {'peak GiB':>9}")
    print(header + "".join(f" {f'{n} streams f/s':>15}" for n in streams))
    for name, r in results.items():
        if "error" in r:
            print(f"{name:16} error: {r['error']}")
            continue
        same_voice = f"{r['cached_voice_first_frame_s']:13.2f}" if "cached_voice_first_frame_s" in r else f"{'-':>13}"
        row = (f"{name:16} {r['load_s']:7.1f} {r['prefill_s']:10.2f} {r['decode_frames_per_s']:11.2f} "
               f"{r['first_frame_s']:14.2f} {same_voice} {r['peak_memory_gib']:9.2f}")
        row += "".join(f" {r[f'streams_{n}']['frames_per_s']:15.2f}" if f"streams_{n}" in r else f" {'-':>15}" for n in streams)
        print(row)
    timed = [(name, n, r[f"streams_{n}"]) for name, r in results.items() for n in streams
             if "device_ms" in r.get(f"streams_{n}", {})]
    if timed:
        print("\nper decode step, ms: wall time / GPU time of the CUDA graph (sampling included) or, eager, of the "
              "forward pass")
        for name, n, r in timed:
            print(f"  {name} {n} streams: {r['step_ms']:.2f} / {r['device_ms']:.2f}")
    if port and "error" not in port:
        best = "; each figure the best of its rounds" if args.rounds > 1 else ""
        print(f"\nratios against the port (same run{best}):")
        for name, r in results.items():
            if name == "port" or "error" in r:
                continue
            batch = "".join(
                f", {n} streams x{r[f'streams_{n}']['frames_per_s'] / r['streams_1']['frames_per_s']:.2f} of 1 stream"
                for n in streams if n != 1 and f"streams_{n}" in r and "streams_1" in r
            )
            same_voice = (f", first frame in a voice used before x{port['first_frame_s'] / r['cached_voice_first_frame_s']:.1f}"
                          " sooner" if "cached_voice_first_frame_s" in r else "")
            print(f"  {name}: prefill x{port['prefill_s'] / r['prefill_s']:.2f} faster, "
                  f"decode x{r['decode_frames_per_s'] / port['decode_frames_per_s']:.2f}{batch}{same_voice}")
    if args.baseline:
        print(f"\nratios against the baseline {args.baseline} (same run; above 1: this checkout is faster):")
        for name in ours:
            r, b = results.get(name, {}), results.get(f"{name}{BASELINE}", {})
            if "error" in r or "error" in b or not r or not b:
                continue
            batch = "".join(f", {n} streams x{r[f'streams_{n}']['frames_per_s'] / b[f'streams_{n}']['frames_per_s']:.2f}"
                            for n in streams if n != 1 and f"streams_{n}" in r and f"streams_{n}" in b)
            print(f"  {name}: prefill x{b['prefill_s'] / r['prefill_s']:.2f}, "
                  f"decode x{r['decode_frames_per_s'] / b['decode_frames_per_s']:.2f}{batch}, "
                  f"peak memory {r['peak_memory_gib']:.2f} / {b['peak_memory_gib']:.2f} GiB")
    if args.plot != "none":
        import plots

        settings = f"{args.frames} steps timed per batch size{isa}" + (f", best of {args.rounds}" if args.rounds > 1 else "")
        print(f"\npicture: {plots.generation(results, streams, Path(args.plot), f'{plots.machine(args.device)} · {settings}')}")


if __name__ == "__main__":
    main()
