"""Training data: find clips and transcripts, check them all (every problem reported at once), encode them once.

Three layouts:
- a folder of clips with transcripts: ``x.wav`` + ``x.txt`` (any audio suffix the voice library takes);
- an LJSpeech-style folder: ``metadata.csv`` with ``id|text`` (or ``id|text|normalized text``: the last is used),
  clips in ``wavs/ID.wav`` or ``ID.wav``;
- a JSONL manifest, one clip per line: ``{"audio": path, "text": ..., "speaker": ..., "scene": ...}`` (paths
  relative to the manifest); dialogue lines mark their turns with ``[SPEAKERn]`` tags, as for ``speak``.

Clips are read and resampled as inference reads a reference clip and encoded through the voice library's code
cache (``VoiceLibrary.encode``): a clip is encoded once per codec, however many runs use it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from higgs_audio.errors import AudioInputError, HiggsAudioError
from higgs_audio.voices import AUDIO_SUFFIXES

SILENCE = 1e-4  # peak amplitude below which a clip counts as silent (-80 dBFS)


class DataError(HiggsAudioError):
    """The training data has problems; the message lists every bad file."""


@dataclass(frozen=True)
class Clip:
    audio: Path
    text: str
    speaker: str | None = None
    scene: str | None = None


@dataclass(frozen=True)
class Summary:
    clips: int
    seconds: float
    speakers: int
    frames: int

    def __str__(self) -> str:
        return (f"{self.clips} clips, {self.seconds / 3600:.2f} hours ({self.seconds:.1f} s), "
                f"{self.speakers} speaker{'s' if self.speakers != 1 else ''}, {self.frames} audio frames")


def find_clips(source: str | os.PathLike) -> tuple[list[Clip], list[str]]:
    """The clips of a dataset folder or manifest, and the problems found while listing them."""
    source = Path(source).expanduser()
    if source.is_file():
        if source.suffix != ".jsonl":
            raise DataError(f"{source} is a file but not a .jsonl manifest: give a folder of clips with transcripts, "
                            "a folder with metadata.csv, or a .jsonl manifest")
        return _manifest(source)
    if not source.is_dir():
        raise DataError(f"training data {source} does not exist")
    if (source / "metadata.csv").is_file():
        return _ljspeech(source)
    return _folder(source)


def _folder(folder: Path) -> tuple[list[Clip], list[str]]:
    clips, problems = [], []
    audio = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not audio:
        raise DataError(f"{folder} holds no audio clips ({', '.join(AUDIO_SUFFIXES)}) and no metadata.csv")
    for path in audio:
        txt = path.with_suffix(".txt")
        if not txt.is_file():
            problems.append(f"{path}: missing transcript (write what is said into {txt.name})")
            continue
        clips.append(Clip(path, txt.read_text(encoding="utf-8").strip()))
    return clips, problems


def _ljspeech(folder: Path) -> tuple[list[Clip], list[str]]:
    clips, problems = [], []
    meta = folder / "metadata.csv"
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("|")
        where = f"{meta}:{n}"
        if len(fields) < 2:
            problems.append(f"{where}: expected 'id|text', found {line[:60]!r}")
            continue
        stem = fields[0].strip()
        path = next((p for p in (folder / "wavs" / f"{stem}.wav", folder / f"{stem}.wav") if p.is_file()), None)
        if path is None:
            problems.append(f"{where}: no audio file {stem}.wav in {folder / 'wavs'} or {folder}")
            continue
        clips.append(Clip(path, fields[-1].strip()))
    return clips, problems


def _manifest(manifest: Path) -> tuple[list[Clip], list[str]]:
    clips, problems = [], []
    for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{manifest}:{n}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not valid JSON ({e})")
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("audio"), str):
            problems.append(f"{where}: each line needs an object with an 'audio' path and a 'text'")
            continue
        text = entry.get("text")
        if not isinstance(text, str):
            problems.append(f"{where}: 'text' is missing or not a string")
            continue
        path = (manifest.parent / entry["audio"]).expanduser()
        extra = {k: entry.get(k) for k in ("speaker", "scene")}
        bad = [k for k, v in extra.items() if v is not None and not isinstance(v, str)]
        if bad:
            problems.append(f"{where}: {bad[0]!r} must be a string")
            continue
        clips.append(Clip(path, text.strip(), **extra))
    return clips, problems


def check_clips(clips: list[Clip], problems: list[str], max_seconds: float) -> list[float]:
    """Read every clip; raise one DataError listing every problem (with the ones found while listing).
    Returns each clip's duration in seconds."""
    from higgs_audio.audio import read_audio

    problems = list(problems)
    durations = []
    for clip in clips:
        if not clip.text:
            problems.append(f"{clip.audio}: empty transcript")
        try:
            wave, rate = read_audio(clip.audio)
        except AudioInputError as e:
            problems.append(f"{clip.audio}: unreadable clip ({e})")
            continue
        seconds = len(wave) / rate
        durations.append(seconds)
        if float(np.abs(wave).max()) < SILENCE:
            problems.append(f"{clip.audio}: silent clip (peak below -80 dBFS)")
        if seconds > max_seconds:
            problems.append(f"{clip.audio}: {seconds:.1f} s is longer than the {max_seconds:g} s limit "
                            "(split it, or raise --max-seconds)")
    if not clips and not problems:
        problems.append("no clips found")
    if problems:
        raise DataError(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in the training data:\n  "
                        + "\n  ".join(problems))
    return durations


def summarize(clips: list[Clip], durations: list[float], frame_rate: float) -> Summary:
    """``frame_rate``: the codec's frames per second."""
    seconds = float(sum(durations))
    return Summary(len(clips), seconds, len({c.speaker for c in clips}), int(round(seconds * frame_rate)))


def encode_clips(clips: list[Clip], codec, cache_dir: str | os.PathLike | None = None, progress: bool = False):
    """Codes (K, T) of every clip, through the voice library's code cache."""
    from tqdm import tqdm

    from higgs_audio.voices import VoiceLibrary

    library = VoiceLibrary(folders=[Path.cwd()], cache_dir=cache_dir)  # only its code cache is used
    return [library.encode(c.audio, codec) for c in tqdm(clips, desc="encoding", unit="clip", disable=not progress,
                                                         leave=False, dynamic_ncols=True)]
