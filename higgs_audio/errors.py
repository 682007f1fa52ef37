"""Exceptions raised where bad input enters; each message names the problem and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HiggsAudioError(Exception):
    """Base class for every error this package raises on purpose."""


class CheckpointError(HiggsAudioError):
    """A model or codec checkpoint is missing, malformed or uses an option we do not implement."""


class AudioInputError(HiggsAudioError):
    """Audio given by the user cannot be read or used."""


class AudioTooLongError(AudioInputError, ValueError):
    """A clip is longer than the limit it was read under (for a reference voice: what the prompt can hold)."""


class UsageError(HiggsAudioError):
    """Command-line options that cannot be used together or are missing (exit code 2, like argparse's own)."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """"; did you mean 'x'?" for up to 3 similar candidates (misspelt, or ``name`` cut short), else ""."""
    candidates = list(candidates)
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    close += [c for c in candidates if name and c.startswith(name) and c not in close]
    return f"; did you mean {', '.join(repr(c) for c in close[:3])}?" if close else ""
