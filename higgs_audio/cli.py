"""The ``higgs-audio`` command: ``speak`` (every task of the reference's examples/generation.py),
``voices`` (the voice library), ``scenes`` (the scene library) and ``quantize`` (a quantized copy of the
model that loads without quantizing again).

Everything that can be checked without the model (text, output path, voices, scene, option combinations)
is checked before loading it, and every error is one line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import warnings
from pathlib import Path

from higgs_audio.cache import prefix_dir
from higgs_audio.errors import (
    HiggsAudioError,
    UsageError,
    did_you_mean,
)
from higgs_audio.formats import FORMATS, format_for
from higgs_audio.options import (
    Parser,
    add_checkpoint_argument,
    add_model_arguments,
    at_least,
    common_parser,
    text_or_file,
)
from higgs_audio.sampling import describe
from higgs_audio.scenes import SCENES, scene_text
from higgs_audio.text import CHUNK_METHODS
from higgs_audio.voices import (
    PROFILE_PREFIX,
    Clip,
    Voice,
    VoiceLibrary,
    VoiceProfile,
    resolve_voice,
    sidecar_transcript,
)

# The SamplingParams fields that speak's flags set (--seed is its own: one seed per run, printed), by value type.
SAMPLING_FLAGS = {"temperature": float, "top_k": at_least(0), "top_p": float, "max_new_tokens": at_least(1),
                  "ras_window": at_least(0), "ras_max_repeat": at_least(1)}


# -- speak ---------------------------------------------------------------------------------------


def _read_text(args) -> str:
    if args.file is not None and args.text is not None:
        raise UsageError("give the text either as an argument or with --file, not both")
    if args.file is None and args.text is None:
        raise UsageError("nothing to speak: give TEXT, '-' to read standard input, or --file PATH")
    source = args.file if args.file is not None else args.text
    if source == "-":
        text = sys.stdin.read()
    elif args.file is not None:
        path = Path(args.file).expanduser()
        if not path.is_file():
            raise UsageError(f"text file {path} does not exist")
        text = path.read_text(encoding="utf-8")
    else:
        text = source
    if not text.strip():
        raise UsageError("the text to speak is empty")
    return text


def _output(args) -> tuple[Path | None, str]:
    """(path or None for stdout, format name); refuses to clobber before any work is done."""
    if args.output == "-":
        return None, args.format or "wav"
    path = Path(args.output).expanduser()
    try:
        fmt = format_for(path, args.format)
    except ValueError as e:
        raise UsageError(f"{e} (--format)") from None
    if path.exists() and not args.force:
        raise FileExistsError(f"{path} already exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} does not exist")
    return path, fmt


def _voice_specs(values: list[str]) -> dict[str, str] | list[str | None]:
    """``--voice`` values -> ``{"SPEAKERi": spec}`` when ``SPEAKERi=spec`` names the speakers, else the
    specs in speaker order: ``a,b`` and repeated flags list them (an empty entry, as in ``,b``, leaves that
    speaker to the model: None). A ``profile:`` value is never split: descriptions may contain commas. One
    listed voice is bound to no speaker (the reference's single-voice prompt); a named one is."""
    keyed: dict[str, str] = {}
    listed: list[str | None] = []
    for value in values:
        tag, sep, spec = value.partition("=")
        if sep and tag.startswith("SPEAKER") and tag[7:].isdigit():
            if tag in keyed:
                raise UsageError(f"--voice gives {tag} twice")
            if not spec.strip():
                raise UsageError(f"--voice {tag}= needs a voice after the '='")
            keyed[tag] = spec.strip()
        elif value.startswith(PROFILE_PREFIX):
            listed.append(value)
        else:
            listed += [v.strip() or None for v in value.split(",")]
    if keyed and listed:
        raise UsageError("use either --voice a,b (speakers in order) or --voice SPEAKER0=a --voice SPEAKER1=b, "
                         "not both")
    while listed and listed[-1] is None:
        listed.pop()
    return keyed or listed


def _each(voices: dict | list, fn) -> dict | list:
    """``fn`` applied to each voice of a speaker mapping or list (None stays None), keeping its shape."""
    if isinstance(voices, dict):
        return {tag: fn(v) for tag, v in voices.items()}
    return [None if v is None else fn(v) for v in voices]


def _plan_voice(spec: str, library: VoiceLibrary, ref_text: str | None) -> VoiceProfile | Clip:
    """A ``VoiceProfile`` or a ``Clip`` for one ``--voice`` value (see ``resolve_voice``), its audio checked."""
    from higgs_audio.audio import check_readable

    voice = resolve_voice(spec, library, ref_text)
    if isinstance(voice, VoiceProfile):
        if ref_text is not None:
            raise UsageError("--ref-text is the transcript of a reference clip; a profile has none")
        return voice
    check_readable(voice.audio)  # refuse unreadable audio before the model loads; its length once it has
    return voice


def _plan_voices(args, library: VoiceLibrary) -> dict | list:
    """The ``--voice`` values (see ``_voice_specs``) as ``VoiceProfile`` or ``Clip``, every clip checked to
    be usable."""
    plan = _each(_voice_specs(args.voice), lambda spec: _plan_voice(spec, library, args.ref_text))
    voices = [v for v in (plan.values() if isinstance(plan, dict) else plan) if v is not None]
    if args.ref_text is not None and len(voices) != 1:
        raise UsageError("--ref-text needs exactly one --voice; with several, put each transcript in a .txt "
                         "file next to its clip")
    in_system = args.refs_in_system or any(not isinstance(v, Clip) for v in voices)
    for v in voices:
        if isinstance(v, Clip) and v.transcript is None and not in_system:
            raise UsageError(f"{v.label} has no transcript: pass --ref-text \"...\", put it in "
                             f"{v.audio.with_suffix('.txt').name} next to the clip, or use --refs-in-system")
    return plan


def _encode_voices(plan: dict | list, library: VoiceLibrary, api) -> dict | list:
    limit = api.max_reference_seconds
    return _each(plan, lambda v: library.load(v, api.codec, limit) if isinstance(v, Clip) else v)


def _sampling(args) -> dict:
    return {n: getattr(args, n) for n in SAMPLING_FLAGS if getattr(args, n) is not None}


def _prompt_dumper(path: Path | None):
    """A JSON-lines writer of each chunk's prompt (token ids and audio codes) for debugging."""
    if path is None:
        return None, None
    handle = open(path, "w", encoding="utf-8")

    def dump(index, text, seed, prompt):
        audio = [{"output": a.is_output, "codes": a.codes.tolist()} for a in prompt.audio]
        record = {"chunk": index, "seed": seed, "text": text, "ids": prompt.ids, "audio": audio}
        handle.write(json.dumps(record) + "\n")
        handle.flush()

    return dump, handle


def cmd_speak(args, library: VoiceLibrary) -> int:
    text = _read_text(args)
    out, fmt = _output(args)
    if args.chunk is None and (args.chunk_words is not None or args.chunk_turns is not None):
        raise UsageError("--chunk-words and --chunk-turns need --chunk")
    scene = scene_text(args.scene)
    system = None if args.system is None else text_or_file(args.system, "system prompt")
    plan = _plan_voices(args, library)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))

    from higgs_audio.api import HiggsAudio
    from higgs_audio.formats import encode_audio, write_audio
    from higgs_audio.longform import generate_longform

    started = time.perf_counter()
    api = HiggsAudio.from_pretrained(args.model, args.codec, device=args.device, dtype=args.dtype,
                                     quantize=args.quantize, max_len=args.max_len, adapter=args.adapter,
                                     prefix_cache_dir=prefix_dir(),
                                     progress=sys.stderr.isatty() and not args.quiet)
    voices = _encode_voices(plan, library, api)
    dump, handle = _prompt_dumper(args.dump_prompts)
    try:
        result = generate_longform(
            api, text, voices=voices, scene=scene, system=system, refs_in_system=args.refs_in_system,
            chunk_method=args.chunk, max_words=args.chunk_words or 200, max_turns=args.chunk_turns or 1,
            context_chunks=args.context_chunks, normalize=not args.no_normalize, seed=seed, on_prompt=dump,
            progress=sys.stderr.isatty() and not args.quiet, **_sampling(args),
        )
    finally:
        if handle is not None:
            handle.close()
    for note in result.warnings:
        say(f"warning: {note}")
    if not len(result.audio):
        raise HiggsAudioError("the model produced no audio (try another --seed or a higher --max-new-tokens)")
    if out is None:
        sys.stdout.buffer.write(encode_audio(result.audio, result.sample_rate, fmt))
        sys.stdout.buffer.flush()
    else:
        write_audio(out, result.audio, result.sample_rate, fmt, force=args.force)
    seconds = len(result.audio) / result.sample_rate
    chunks = f", {len(result.chunks)} chunks" if len(result.chunks) > 1 else ""
    say(f"wrote {out or 'standard output'}: {seconds:.1f} s of audio{chunks}, seed {seed} "
        f"({time.perf_counter() - started:.1f} s)")
    return 0


# -- voices and scenes -----------------------------------------------------------------------------


def _short(text: str | None, width: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_voices(args, library: VoiceLibrary) -> int:
    if args.action == "list":
        clips, profiles = library.entries()
        print(f"# voice library: {os.pathsep.join(map(str, library.folders))}")
        rows = [(n, v.kind, _short(v.transcript) or "(no transcript)") for n, v in sorted(clips.items())]
        rows += [(PROFILE_PREFIX + n, v.kind, _short(v.description)) for n, v in sorted(profiles.items())]
        width = max(len(r[0]) for r in rows)
        for name, kind, detail in rows:
            print(f"{name:<{width}}  {kind:<7}  {detail}")
    elif args.action == "show":
        _show(library.find(args.name))
    elif args.action == "add":
        if (args.audio is None) == (args.profile is None):
            raise UsageError("voices add needs either an AUDIO file (with --text) or --profile \"description\"")
        if args.profile is not None:
            if args.text is not None:
                raise UsageError("--text is the transcript of a clip; a profile takes only --profile")
            voice = library.add_profile(args.name, args.profile, force=args.force)
            print(f"added {PROFILE_PREFIX}{voice.name} to {voice.source}")
        else:
            text = args.text if args.text is not None else sidecar_transcript(Path(args.audio).expanduser())
            if not text or not text.strip():
                raise UsageError(f"voice {args.name!r} needs the words spoken in the clip: pass --text \"...\"")
            voice = library.add(args.name, args.audio, text, force=args.force)
            print(f"added {voice.name} ({voice.audio})")
    else:
        voice = library.remove(args.name)
        print(f"removed {PROFILE_PREFIX if voice.is_profile else ''}{voice.name}")
    return 0


def _show(voice: Voice) -> None:
    print(f"name: {voice.name}")
    print(f"kind: {voice.kind}")
    if voice.source is not None:
        print(f"from: {voice.source}")
    if voice.audio is not None:
        import soundfile as sf

        print(f"audio: {voice.audio}")
        try:
            info = sf.info(str(voice.audio))
            print(f"length: {info.duration:.2f} s at {info.samplerate} Hz, {info.channels} channel(s)")
        except (sf.LibsndfileError, RuntimeError):
            print("length: unreadable audio file")
        print(f"transcript: {voice.transcript or '(none)'}")
    for label, value in (("description", voice.description), ("system prompt", voice.system_prompt)):
        if value:
            print(f"{label}: {value}")


def cmd_scenes(args, library: VoiceLibrary) -> int:
    if args.name is not None:
        if args.name not in SCENES:
            raise UsageError(f"unknown scene {args.name!r}{did_you_mean(args.name, SCENES)}")
        print(SCENES[args.name])
        return 0
    width = max(map(len, SCENES))
    for name, text in SCENES.items():
        print(f"{name:<{width}}  {_short(text)}")
    return 0


# -- arguments -------------------------------------------------------------------------------------


def cmd_quantize(args, library: VoiceLibrary) -> int:
    from higgs_audio.quantized_checkpoint import save_quantized

    start = time.perf_counter()
    out = save_quantized(args.model, args.output, args.quantize, force=args.force,
                         progress=sys.stderr.isatty() and not args.quiet)
    if not args.quiet:
        size = sum(p.stat().st_size for p in out.iterdir()) / 1e9
        print(f"wrote {out} ({args.quantize}, {size:.2f} GB) in {time.perf_counter() - start:.0f} s; "
              f"use it with --model {out}", file=sys.stderr)
    return 0


def _count_or_all(value: str) -> int | None:
    """A count of at least 0, or ``all`` (None: no limit)."""
    if value == "all":
        return None
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"give a number of chunks (0 or more) or 'all', got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    common = common_parser()

    parser = Parser(prog="higgs-audio", description="Expressive speech with Higgs Audio V2.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("speak", parents=[common], help="turn text into speech",
                       description="Turn text into speech: smart voice, cloned voices, profiles, scenes, "
                                   "several speakers and long texts in chunks.")
    s.add_argument("text", nargs="?", metavar="TEXT", help="what to say ('-' reads standard input); "
                   "[SPEAKER0], [SPEAKER1] ... tags mark the speakers of a dialogue")
    s.add_argument("-f", "--file", metavar="PATH", help="read the text from a file")
    s.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="audio file to write ('-' for standard output); its extension picks the format")
    s.add_argument("--format", choices=list(FORMATS), help="audio format, overriding the extension (pcm: raw s16le)")
    s.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    g = s.add_argument_group("voices")
    g.add_argument("--voice", action="append", default=[], metavar="VOICE",
                   help="a library voice name, an audio file to clone, or profile:NAME / profile:\"description\"; "
                        "for several speakers 'a,b' or SPEAKER0=a --voice SPEAKER1=b. Without one the model "
                        "picks a voice. One voice given without SPEAKERi= is used as the reference uses it, "
                        "whatever [SPEAKERn] tags the text has. Speakers given no voice are described as the "
                        "reference's smart voice describes them: feminine, masculine, ... in numeric tag order "
                        "(SPEAKER2 before SPEAKER10; the reference sorts tags as strings)")
    g.add_argument("--ref-text", metavar="TEXT", help="what is said in the --voice clip (default: the .txt next to it)")
    g.add_argument("--refs-in-system", action="store_true",
                   help="put the reference clips in the system message (no transcripts needed)")
    g.add_argument("--scene", default="quiet_indoor", metavar="SCENE",
                   help="a scene name (see 'higgs-audio scenes'), a text file, the scene described in words, "
                        "or 'none' (default: quiet_indoor)")
    g.add_argument("--system", metavar="TEXT", help="a custom system instruction (text or a file), e.g. for a "
                   "simultaneous interpreter; the scene is still added")
    g.add_argument("--no-normalize", action="store_true",
                   help="speak the text as given (no punctuation, unit or sound-effect normalisation)")
    g = s.add_argument_group("long texts")
    g.add_argument("--chunk", choices=[m for m in CHUNK_METHODS if m],
                   help="generate the text in chunks: by speaker turn or word count as the reference does (mostly Chinese/Japanese/Korean text counts characters "
                   "where the reference counts jieba words), or by whole sentences or paragraphs (ours)")
    g.add_argument("--chunk-words", type=at_least(1), metavar="N", help="words per chunk (default 200)")
    g.add_argument("--chunk-turns", type=at_least(1), metavar="N",
                   help="speaker turns per chunk with --chunk speaker (default 1)")
    g.add_argument("--context-chunks", type=_count_or_all, default=2, metavar="N|all",
                   help="previous chunks each chunk hears, to keep the voice steady (default 2; the reference "
                        "keeps all of them, as 'all' does)")
    g = s.add_argument_group("sampling")
    for name, kind in SAMPLING_FLAGS.items():  # unset: SamplingParams' default
        g.add_argument(f"--{name.replace('_', '-')}", type=kind, help=describe(name),
                       metavar=None if kind is float else "N")
    g.add_argument("--seed", type=at_least(0), help="seed for reproducible output (default: random, printed)")
    add_model_arguments(s.add_argument_group("model"))
    s.add_argument("--dump-prompts", type=Path, metavar="FILE",
                   help="write each chunk's prompt (token ids and audio codes) as JSON lines, for debugging; "
                        "each ends with <|audio_out_bos|> (the model must speak), which the reference's "
                        "generation.py leaves to the model")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    s.set_defaults(run=cmd_speak)

    v = sub.add_parser("voices", help="list, add, remove or show library voices")
    actions = v.add_subparsers(dest="action", required=True, parser_class=Parser)
    actions.add_parser("list", parents=[common], help="list voices and profiles")
    p = actions.add_parser("show", parents=[common], help="show one voice")
    p.add_argument("name", help="voice name, or profile:NAME")
    p = actions.add_parser("add", parents=[common], help="add a clip (AUDIO --text) or a profile (--profile)")
    p.add_argument("name", help="letters, digits, '_' or '-'")
    p.add_argument("audio", nargs="?", help="audio file of the voice (a few seconds of clean speech)")
    p.add_argument("--text", help="what is said in the clip (default: the .txt next to it)")
    p.add_argument("--profile", metavar="DESCRIPTION", help="describe the voice in words instead of a clip")
    p.add_argument("--force", action="store_true", help="replace a voice of the same name")
    p = actions.add_parser("remove", parents=[common], help="delete a voice (or profile:NAME)")
    p.add_argument("name")
    v.set_defaults(run=cmd_voices)

    c = sub.add_parser("scenes", parents=[common], help="list the built-in scenes, or print one")
    c.add_argument("name", nargs="?")
    c.set_defaults(run=cmd_scenes)

    q = sub.add_parser("quantize", parents=[common], help="save a quantized copy of the model for fast loading",
                       description="Quantize the model's linear weights once and save them, so that later "
                                   "runs load the copy with --model OUT instead of quantizing at every start.")
    q.add_argument("-o", "--output", required=True, metavar="OUT", help="folder to write the quantized model to")
    q.add_argument("--quantize", choices=("int8", "int4"), required=True, help="weight format")
    add_checkpoint_argument(q)
    q.add_argument("--force", action="store_true", help="replace OUT if it exists")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    q.set_defaults(run=cmd_quantize)

    from higgs_audio.train.cli import (  # light: argparse only
        add_finetune_arguments,
        cmd_finetune,
    )

    f = sub.add_parser("finetune", parents=[common], help="train a LoRA adapter on your clips (extra [train])",
                       description="Fine-tune the model on clips with transcripts (a voice, a style, a language) "
                                   "as a LoRA adapter; 'finetune merge --adapter DIR -o OUT' merges one into a "
                                   "full checkpoint.")
    add_finetune_arguments(f)
    f.set_defaults(run=cmd_finetune)

    from higgs_audio.cluster import add_cluster_parser  # light: Ray loads only when the cluster runs
    from higgs_audio.server import (
        add_serve_parser,  # light: the server's packages load only when it runs
    )

    add_serve_parser(sub, parents=[common])
    add_cluster_parser(sub, parents=[common])
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        library = VoiceLibrary(args.voices_dir)
        if not debug:
            warnings.simplefilter("ignore")  # what matters reaches the user as one-line notes
        return args.run(args, library)
    except KeyboardInterrupt:
        print("higgs-audio: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        if isinstance(e, UsageError):
            code, message = 2, _one_line(e)
        elif isinstance(e, (HiggsAudioError, ValueError, OSError)):
            code, message = 1, _one_line(e)
        else:
            code, message = 1, f"internal error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for details)"
        print(f"higgs-audio: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
