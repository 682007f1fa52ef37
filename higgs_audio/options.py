"""Command-line options that several subcommands share (speak, serve, quantize, ...): one definition each."""

from __future__ import annotations

import argparse
from pathlib import Path

from higgs_audio.cache import VOICES_ENV
from higgs_audio.config import DEFAULT_CODEC, DEFAULT_MODEL
from higgs_audio.errors import UsageError


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one-line ``UsageError``s (exit code 2) instead of a usage block."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def common_parser() -> Parser:
    """The options every subcommand takes (a parent parser)."""
    common = Parser(add_help=False)
    common.add_argument("--voices-dir", action="append", metavar="DIR",
                        help=f"voice library folder (repeat to search several; the first one is written to). "
                             f"Default: ${VOICES_ENV} or the per-user data folder")
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return common


def at_least(low: float, kind: type = int, *, above: bool = False):
    """An argparse type: a number of ``kind`` that is >= ``low`` (> ``low`` with ``above``)."""

    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a {'whole number' if kind is int else 'number'}") from None
        if number < low or (above and number == low):
            raise argparse.ArgumentTypeError(f"must be {'more than' if above else 'at least'} {low}, got {value}")
        return number

    return parse


def add_checkpoint_argument(parser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or folder (default {DEFAULT_MODEL})")


def add_model_arguments(parser) -> None:
    """Which checkpoints to load and how: the flags of every subcommand that runs the model."""
    add_checkpoint_argument(parser)
    parser.add_argument("--codec", default=DEFAULT_CODEC,
                        help=f"audio tokenizer hub id or folder (default {DEFAULT_CODEC})")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="auto", help="compute dtype: auto, float32, bfloat16 or float16")
    parser.add_argument("--quantize", choices=("int8", "int4"), help="store the model's linear weights quantized "
                        "(less memory, faster decoding on small GPUs and CPUs)")
    parser.add_argument("--max-len", type=at_least(16), default=4096, metavar="N",
                        help="positions in the model's cache per request: prompt plus generated steps "
                             "(default 4096)")
    parser.add_argument("--adapter", metavar="DIR",
                        help="a LoRA adapter folder ('higgs-audio finetune'), merged into the weights at load")


def text_or_file(value: str, what: str) -> str:
    """The contents of the file ``value`` names, or ``value`` itself; a lone word that looks like a path
    (a '/' or an extension) but names no file is an error rather than silently spoken as text."""
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    if not any(c.isspace() for c in value.strip()) and ("/" in value or path.suffix):
        raise UsageError(f"{what} file {path} does not exist")
    return value.strip()
