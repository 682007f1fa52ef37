"""``higgs-audio serve``: the OpenAI-compatible HTTP server (needs the ``[server]`` extra).

``add_serve_parser(subparsers, parents)`` adds the ``serve`` subcommand to the CLI (whose common parent
parser gives ``--voices-dir``); ``run_serve(args, library)`` runs it. ``serve_settings`` and ``load_model``
turn the parsed flags into what a server needs (the cluster's engine replicas use them too).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from higgs_audio.options import add_model_arguments, at_least
from higgs_audio.sampling import SamplingParams

API_KEY_ENV = "HIGGS_AUDIO_API_KEY"


def add_serve_parser(subparsers, parents=()) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        parents=list(parents),
        help="run the OpenAI-compatible speech server",
        description="Serve /v1/audio/speech, /v1/audio/generation, /v1/chat/completions, /v1/voices, /metrics "
        "and a web page at /, decoding concurrent requests together (continuous batching).",
    )
    add_serve_arguments(p)
    p.set_defaults(run=run_serve)
    return p


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--compile", action="store_true", help="replay the decode step from CUDA graphs (CUDA only; "
                   "captured at start-up)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default="higgs-audio-v2", help="model id shown by /v1/models")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1 and /metrics (or set ${API_KEY_ENV})")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser requests from ORIGIN (repeatable; '*' for any)")
    p.add_argument("--max-batch", type=at_least(1), default=8, help="requests decoded together in one step")
    p.add_argument("--prefill-chunk", type=at_least(1), default=128, metavar="N",
                   help="prompt positions a joining request prefills per step while others decode, so their "
                        "audio keeps flowing (default 128; lower it on a CPU)")
    p.add_argument("--prefix-cache-mb", type=at_least(0, float), default=512, metavar="MB",
                   help="memory for past prompts' keys and values: a request in a voice used before prefills only "
                        "what differs (default 512; 0: off)")
    p.add_argument("--max-queue", type=at_least(1), default=64,
                   help="waiting requests beyond which new ones get 429")
    p.add_argument("--max-input-chars", type=at_least(1), default=100_000,
                   help="longer texts get 413 (default 100000, a chapter; /v1/audio/speech speaks long texts "
                        "paragraph by paragraph)")
    p.add_argument("--chunk-words", type=at_least(1), default=200, metavar="N",
                   help="/v1/audio/speech speaks a longer input in chunks of whole paragraphs (or sentences) up "
                        "to N words, each hearing the two before it, as 'speak --chunk paragraph' (default 200)")
    p.add_argument("--max-upload-mb", type=at_least(0, float, above=True), default=20.0,
                   help="larger request bodies get 413")
    p.add_argument("--max-new-tokens", type=at_least(1), default=SamplingParams.max_new_tokens,
                   help="default and ceiling of a request's generation steps (25 audio steps = 1 s)")
    p.add_argument("--timeout", type=at_least(0, float, above=True), default=300.0,
                   help="seconds before a request is cancelled")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


ARENAS = 2  # glibc malloc arenas a server process may use (benchmarks/README.md, Soak)


def limit_malloc_arenas() -> bool:
    """Cap glibc's malloc arenas, unless ``MALLOC_ARENA_MAX`` is set: by default each thread that allocates
    may get an arena of its own, and under many concurrent requests their fragments let a server's memory
    creep up (a 16-client soak: +12 % over 5 minutes; flat with 2 arenas). Call it before the server's
    threads start. Returns whether the cap was set (False off glibc)."""
    if sys.platform != "linux" or "MALLOC_ARENA_MAX" in os.environ:
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl has no arenas to cap)
        return False
    m_arena_max = -8  # glibc's malloc.h
    return bool(libc.mallopt(m_arena_max, ARENAS))


def run_serve(args: argparse.Namespace, library=None) -> int:
    """Load the model and serve until interrupted; ``library`` defaults to ``VoiceLibrary(args.voices_dir)``."""
    limit_malloc_arenas()
    try:
        import uvicorn

        from higgs_audio.server.app import create_app
        from higgs_audio.server.local import LocalBackend
    except ImportError as e:
        raise SystemExit(f"the server needs its extra packages: pip install 'higgs-audio[server]' ({e})") from None
    from higgs_audio.voices import VoiceLibrary

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = serve_settings(args)
    voices = library or VoiceLibrary(args.voices_dir)
    app = create_app(LocalBackend(load_model(args), voices, settings), voices, settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


def serve_settings(args: argparse.Namespace):
    """The server's ``Settings`` from the parsed ``serve`` flags."""
    from higgs_audio.server.service import Settings

    return Settings(
        served_model_name=args.served_model_name,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        cors_origins=args.cors_origin,
        max_queue=args.max_queue,
        max_input_chars=args.max_input_chars,
        chunk_words=args.chunk_words,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        timeout_s=args.timeout,
        max_new_tokens=args.max_new_tokens,
    )


def load_model(args: argparse.Namespace):
    """The ``HiggsAudio`` that the parsed ``serve`` flags describe."""
    from higgs_audio.api import HiggsAudio

    return HiggsAudio.from_pretrained(args.model, args.codec, device=args.device, dtype=args.dtype,
                                      quantize=args.quantize, compile=args.compile, adapter=args.adapter,
                                      max_batch=args.max_batch, max_len=args.max_len,
                                      prefill_chunk=args.prefill_chunk, prefix_cache_mb=args.prefix_cache_mb,
                                      progress=sys.stderr.isatty())
