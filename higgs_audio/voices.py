"""Voices: what a prompt clones or describes (``VoiceRef``, ``VoiceProfile``), the one reading of a voice spec
(``resolve_voice``: library names, ``profile:``, clip paths, arrays) for the CLI, the API and the server, and the
voice library: named reference clips and text profiles kept in plain folders, with cached codes.

A library folder may hold, in any mix (so the reference's folders can be used as they are):
- ``NAME.wav`` (or .flac/.mp3/.ogg/.opus) + ``NAME.txt``: a clip and its transcript (the reference's
  ``examples/voice_prompts`` layout);
- ``profile.yaml`` with ``profiles: {NAME: description}``: voices described in words, used as ``profile:NAME``;
- ``config.json`` with ``{NAME: {"transcript": ..., "audio_file": ..., "system_prompt": ...}}``: the vLLM
  server's voice presets (``audio_file`` relative to the folder).

Several folders can be searched (earlier ones win); new voices are added to the first. Encoded codes are
cached in a separate per-user folder, keyed by the audio file's content hash and the codec's fingerprint,
so a clip is encoded once per codec however often it is used. Nothing here imports torch until a clip is
encoded, which keeps ``higgs-audio voices`` quick.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from higgs_audio.cache import codes_dir, file_digest, fingerprint, voice_folders
from higgs_audio.errors import AudioInputError, HiggsAudioError, did_you_mean
from higgs_audio.files import atomic_write

if TYPE_CHECKING:
    import torch

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")
PROFILES_FILE = "profile.yaml"
PRESETS_FILE = "config.json"
PROFILE_PREFIX = "profile:"

# The reference's examples/voice_prompts/profile.yaml (texts as quoted by public copies of that file).
BUILTIN_PROFILES = {
    "male_en": "Male, American accent, modern speaking rate, moderate-pitch, friendly tone, and very clear audio.",
    "female_en_story": (
        "She speaks with a calm, gentle, and informative tone at a measured pace, with excellent articulation "
        "and very clear audio. She naturally brings storytelling to life with an articulate, genuine, and "
        "personable vocal style."
    ),
    "male_en_british": (
        "He speaks with a clear British accent and a conversational, inquisitive tone. His delivery is "
        "articulate and at a moderate pace, and very clear audio."
    ),
    "female_en_british": (
        "A female voice with a clear British accent speaking at a modern rate with a moderate-pitch in an "
        "expressive and friendly tone and very clear audio."
    ),
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class VoiceError(HiggsAudioError, ValueError):
    """A voice name is unknown, invalid or taken, or a library file is malformed."""


@dataclass(frozen=True)
class VoiceRef:
    """A reference clip to clone: its codes (K, T) and what is said in it (needed by the turn layout)."""

    codes: torch.Tensor
    transcript: str | None = None


@dataclass(frozen=True)
class VoiceProfile:
    """A voice described in words (the reference's ``profile:``), e.g. "female, British accent"."""

    description: str


@dataclass(frozen=True)
class Clip:
    """A voice to clone, found but not yet encoded (encoding needs the codec)."""

    audio: Path | tuple[np.ndarray, int]  # an audio file, or a waveform and its sample rate
    transcript: str | None
    label: str  # how messages name it
    system_prompt: str | None = None  # a vLLM preset's


@dataclass(frozen=True)
class Voice:
    """One library entry. ``kind``: "clip" (audio + transcript file), "preset" (vLLM config.json entry),
    "profile" (a description) or "builtin" (a built-in profile)."""

    name: str
    kind: str
    source: Path | None  # the folder (clip, preset) or file (profile) it was read from
    audio: Path | None = None
    transcript: str | None = None
    description: str | None = None
    system_prompt: str | None = None

    @property
    def is_profile(self) -> bool:
        return self.kind in ("profile", "builtin")


def check_name(name: str) -> str:
    """A voice name is 1-64 letters, digits, '_' or '-', starting with a letter or digit: it becomes a file
    name, so it may not hold path separators, dots or spaces."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise VoiceError(
            f"invalid voice name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return name


def sidecar_transcript(audio: Path) -> str | None:
    """The transcript kept beside a clip as ``NAME.txt`` (the reference's voice-folder layout), if any."""
    text = audio.with_suffix(".txt")
    return (text.read_text(encoding="utf-8").strip() or None) if text.is_file() else None


def _read_profiles(path: Path) -> dict[str, str]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise VoiceError(f"{path} is not a readable YAML file: {' '.join(str(e).split())}") from None
    profiles = data.get("profiles", {}) if isinstance(data, dict) else None
    if not isinstance(profiles, dict) or not all(isinstance(v, str) for v in profiles.values()):
        raise VoiceError(f"{path} must hold 'profiles:' mapping each name to a description")
    return {str(k): v.strip() for k, v in profiles.items()}


def _read_presets(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VoiceError(f"{path} is not a readable JSON file: {e}") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("audio_file"), str) for v in data.values()
    ):
        raise VoiceError(f"{path} must map each voice name to {{\"audio_file\": ..., \"transcript\": ...}}")
    return data


def _scan(folder: Path) -> list[Voice]:
    """The entries of one folder: presets, then clips (audio files a preset already uses are not clips),
    then profiles."""
    found: list[Voice] = []
    if not folder.is_dir():
        return found
    used: set[Path] = set()
    presets = folder / PRESETS_FILE
    if presets.is_file():
        for name, entry in _read_presets(presets).items():
            audio = (folder / entry["audio_file"]).resolve()
            used.add(audio)
            found.append(Voice(name, "preset", folder, audio, (entry.get("transcript") or "").strip() or None,
                               system_prompt=entry.get("system_prompt")))
    for audio in sorted(folder.iterdir()):
        if audio.suffix.lower() in AUDIO_SUFFIXES and audio.is_file() and audio.resolve() not in used:
            found.append(Voice(audio.stem, "clip", folder, audio, sidecar_transcript(audio)))
    profiles = folder / PROFILES_FILE
    if profiles.is_file():
        found += [Voice(n, "profile", profiles, description=d) for n, d in _read_profiles(profiles).items()]
    return found


def _is_path(spec: str) -> bool:
    path = Path(spec).expanduser()
    return os.sep in spec or "/" in spec or path.suffix.lower() in AUDIO_SUFFIXES or path.exists()


def _unknown(name: str, clips: dict, profiles: dict) -> VoiceError:
    close = did_you_mean(name, list(clips) + [PROFILE_PREFIX + p for p in profiles])
    return VoiceError(f"unknown voice {name!r}{close} (see 'higgs-audio voices list', or give a path to an audio file)")


def _unknown_profile(name: str, profiles: dict) -> VoiceError:
    return VoiceError(f"unknown voice profile {name!r}{did_you_mean(name, profiles)} (see 'higgs-audio voices list')")


def resolve_voice(spec, library: VoiceLibrary | None = None, transcript: str | None = None, *, files: bool = True,
                  strict: bool = True) -> VoiceRef | VoiceProfile | Clip | None:
    """The one reading of a voice spec (the CLI's ``--voice``, the API's ``voice=``, the server's voice fields):

    - a ``VoiceRef`` or ``VoiceProfile``: itself;
    - ``profile:NAME``: that profile of ``library``; ``profile:words`` (any words, without a library): a
      profile described by the words;
    - ``(waveform, sample_rate)``, or a path to an audio file when ``files`` (the server reads no local files):
      a ``Clip``, its transcript ``transcript`` or else the ``NAME.txt`` beside the file;
    - a name in ``library``: a ``Clip`` of that voice, its transcript ``transcript`` or else the library's.

    ``strict`` refuses what it does not know. Otherwise (the server, whose clients send names as they please)
    a profile may be named without ``profile:``, an unknown ``profile:NAME`` is a description, and an unknown
    name gives None.
    """
    if isinstance(spec, (VoiceRef, VoiceProfile)):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        return Clip(spec, transcript, "the reference waveform")
    spec = str(spec)
    if spec.startswith(PROFILE_PREFIX):
        return _profile(spec[len(PROFILE_PREFIX):], library, strict)
    if files and _is_path(spec):
        audio = Path(spec).expanduser()
        if not audio.is_file():
            raise AudioInputError(f"voice audio file {audio} does not exist")
        return Clip(audio, transcript or sidecar_transcript(audio), str(audio))
    if library is None:
        raise AudioInputError(f"voice {spec!r} is not an audio file, a 'profile:' description or a known voice")
    clips, profiles = library.entries()
    if spec in clips:
        voice = clips[spec]
        return Clip(voice.audio, transcript or voice.transcript, f"library voice {spec!r}", voice.system_prompt)
    if not strict:
        return VoiceProfile(profiles[spec].description) if spec in profiles else None
    if spec in profiles:
        raise VoiceError(f"{spec!r} is a profile; use it as '{PROFILE_PREFIX}{spec}'")
    raise _unknown(spec, clips, profiles)


def _profile(text: str, library: VoiceLibrary | None, strict: bool) -> VoiceProfile:
    """What follows ``profile:``: a profile name (a voice name's characters) or a description, quotes dropped."""
    text = text.strip().strip('"').strip()
    if not text:
        raise VoiceError("'profile:' needs a profile name or a description of the voice")
    if library is None or not _NAME.fullmatch(text):
        return VoiceProfile(text)
    found = library.find(PROFILE_PREFIX + text, missing_ok=not strict)
    return VoiceProfile(text if found is None else found.description)


class VoiceLibrary:
    """Voices by name. ``folders``: where to look (default ``voice_folders()``); the first one is where
    ``add`` writes. ``cache_dir``: where encoded codes are kept (default ``codes_dir()``)."""

    def __init__(self, folders: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None):
        if folders is None:
            folders = voice_folders()
        elif isinstance(folders, (str, os.PathLike)):
            folders = [folders]
        self.folders = [Path(f).expanduser() for f in folders]
        if not self.folders:
            raise VoiceError("a voice library needs at least one folder")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else codes_dir()
        self._fingerprints: dict[int, str] = {}

    @property
    def home(self) -> Path:
        return self.folders[0]

    # -- reading --------------------------------------------------------------------------------

    def entries(self) -> tuple[dict[str, Voice], dict[str, Voice]]:
        """(voices with audio, profiles), each by name; earlier folders win, built-in profiles come last."""
        clips: dict[str, Voice] = {}
        profiles: dict[str, Voice] = {}
        for folder in self.folders:
            for v in _scan(folder):
                (profiles if v.is_profile else clips).setdefault(v.name, v)
        for name, text in BUILTIN_PROFILES.items():
            profiles.setdefault(name, Voice(name, "builtin", None, description=text))
        return clips, profiles

    def find(self, name: str, *, missing_ok: bool = False) -> Voice | None:
        """The entry called ``name`` (``profile:NAME`` for a profile); an unknown one raises ``VoiceError``,
        or gives None with ``missing_ok``."""
        clips, profiles = self.entries()
        is_profile = name.startswith(PROFILE_PREFIX)
        key = name[len(PROFILE_PREFIX):] if is_profile else name
        found = (profiles if is_profile else clips).get(key)
        if found is not None or missing_ok:
            return found
        raise _unknown_profile(key, profiles) if is_profile else _unknown(name, clips, profiles)

    def load(self, clip: Clip, codec, max_seconds: float | None = None) -> VoiceRef:
        """A clip file as a ``VoiceRef``, its codes from the cache (encoded on first use); a clip longer than
        ``max_seconds`` raises ``AudioTooLongError``."""
        return VoiceRef(self.encode(clip.audio, codec, max_seconds), clip.transcript)

    def encode(self, audio: str | os.PathLike, codec, max_seconds: float | None = None):
        """Codes (K, T) of an audio file, from the cache when this file was encoded by this codec before;
        one longer than ``max_seconds`` raises ``AudioTooLongError`` before it is decoded."""
        import torch

        from higgs_audio.audio import read_audio

        audio = Path(audio).expanduser()
        if not audio.is_file():
            raise AudioInputError(f"audio file {audio} does not exist")
        key = self._fingerprints.get(id(codec))
        if key is None:  # the codec's settings and weights
            key = self._fingerprints[id(codec)] = fingerprint(codec.config, str(codec.dtype), codec.model.state_dict())
        cached = self.cache_dir / f"{file_digest(audio)}-{key}.npy"
        if cached.is_file():
            try:
                return torch.from_numpy(np.load(cached, allow_pickle=False).astype(np.int64))
            except (OSError, ValueError):
                cached.unlink(missing_ok=True)  # a damaged cache entry is re-made below
        wave, rate = read_audio(audio, max_seconds=max_seconds)
        codes = codec.encode(wave, rate)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, codes.cpu().numpy().astype(np.int16), allow_pickle=False)
        atomic_write(cached, buffer.getvalue())
        return codes

    # -- changing -------------------------------------------------------------------------------

    def add(self, name: str, audio: str | os.PathLike, transcript: str, *, force: bool = False,
            max_seconds: float | None = None) -> Voice:
        """Copy ``audio`` into the library as ``NAME<suffix>`` with ``NAME.txt``; replace only with ``force``.
        A clip longer than ``max_seconds`` raises ``AudioTooLongError`` before it is decoded."""
        from higgs_audio.audio import read_audio

        check_name(name)
        audio = Path(audio).expanduser()
        if audio.suffix.lower() not in AUDIO_SUFFIXES:
            raise AudioInputError(f"{audio}: use an audio file ending in {', '.join(AUDIO_SUFFIXES)}")
        read_audio(audio, max_seconds=max_seconds)  # refuse unusable audio now rather than at the first use
        transcript = " ".join(transcript.split()) if transcript else ""
        if not transcript:
            raise VoiceError(f"voice {name!r} needs the words spoken in the clip: pass --text")
        existing = self._taken(name)
        if existing and not force:
            raise VoiceError(f"voice {name!r} already exists in {existing}; pass --force to replace it")
        self.home.mkdir(parents=True, exist_ok=True)
        if existing:
            self._delete_clip(name)
        target = self.home / f"{name}{audio.suffix.lower()}"
        atomic_write(target, audio.read_bytes())
        atomic_write(self.home / f"{name}.txt", (transcript + "\n").encode("utf-8"))
        return Voice(name, "clip", self.home, target, transcript)

    def add_profile(self, name: str, description: str, *, force: bool = False) -> Voice:
        """Add ``name: description`` to the first folder's ``profile.yaml``."""
        import yaml

        check_name(name)
        description = " ".join(description.split())
        if not description:
            raise VoiceError(f"profile {name!r} needs a description")
        path = self.home / PROFILES_FILE
        profiles = _read_profiles(path) if path.is_file() else {}
        if name in profiles and not force:
            raise VoiceError(f"profile {name!r} already exists in {path}; pass --force to replace it")
        profiles[name] = description
        self.home.mkdir(parents=True, exist_ok=True)
        atomic_write(path, yaml.safe_dump({"profiles": profiles}, allow_unicode=True, width=1 << 16).encode())
        return Voice(name, "profile", path, description=description)

    def remove(self, name: str) -> Voice:
        """Delete a clip (its audio and transcript), a preset entry or a profile (``profile:NAME``)."""
        import yaml

        voice = self.find(name)
        if voice.kind == "builtin":
            raise VoiceError(f"profile {voice.name!r} is built in and cannot be removed")
        if voice.kind == "profile":
            profiles = _read_profiles(voice.source)
            del profiles[voice.name]
            atomic_write(voice.source, yaml.safe_dump({"profiles": profiles}, allow_unicode=True,
                                                       width=1 << 16).encode())
        elif voice.kind == "preset":
            self._delete_preset(voice.source, voice.name)
        else:
            voice.audio.unlink()
            voice.audio.with_suffix(".txt").unlink(missing_ok=True)
        return voice

    def _taken(self, name: str) -> Path | None:
        """The first folder's entry for ``name`` (clip or preset), if any: adding there would replace it."""
        for v in _scan(self.home):
            if v.name == name and not v.is_profile:
                return v.audio
        return None

    def _delete_clip(self, name: str) -> None:
        if (self.home / PRESETS_FILE).is_file() and name in _read_presets(self.home / PRESETS_FILE):
            self._delete_preset(self.home, name)
        for suffix in (*AUDIO_SUFFIXES, ".txt"):
            (self.home / f"{name}{suffix}").unlink(missing_ok=True)

    @staticmethod
    def _delete_preset(folder: Path, name: str) -> None:
        """Drop the entry and its audio file (which would otherwise reappear as a clip of the same name),
        unless another preset uses that file too."""
        path = folder / PRESETS_FILE
        presets = _read_presets(path)
        audio = (folder / presets.pop(name)["audio_file"]).resolve()
        atomic_write(path, (json.dumps(presets, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        shared = any((folder / p["audio_file"]).resolve() == audio for p in presets.values())
        if not shared and folder.resolve() in audio.parents:  # never delete files outside the folder
            audio.unlink(missing_ok=True)

