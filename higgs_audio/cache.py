"""Every per-user folder higgs-audio writes to, and the one fingerprint that files derived data in them.

Derived data (a clip's codes, a voice's keys and values, a compiled kernel) is kept under a name that
fingerprints everything it was made from, so a changed checkpoint, codec or compiler never meets stale
files. This module imports nothing of the package and no torch, so every layer can use it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path

VOICES_ENV = "HIGGS_AUDIO_VOICES"  # library folders, separated by os.pathsep; the first one is written to
CACHE_ENV = "HIGGS_AUDIO_CACHE"  # folder for cached reference codes (prefixes and kernels go beside it)


def _platform_dir(kind: str) -> Path:
    """The per-user folder for "data" or "cache", following each platform's convention."""
    home = Path.home()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA" if kind == "cache" else "APPDATA") or home / "AppData" / "Local"
        return Path(base) / "higgs-audio"
    if sys.platform == "darwin":
        return home / "Library" / ("Caches" if kind == "cache" else "Application Support") / "higgs-audio"
    xdg = os.environ.get("XDG_CACHE_HOME" if kind == "cache" else "XDG_DATA_HOME")
    return Path(xdg or home / (".cache" if kind == "cache" else ".local/share")) / "higgs-audio"


def voice_folders() -> list[Path]:
    """``$HIGGS_AUDIO_VOICES`` (one or more folders), else the per-user data folder's ``voices``."""
    env = os.environ.get(VOICES_ENV)
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [_platform_dir("data") / "voices"]


def codes_dir() -> Path:
    """Where reference clips' codes are kept: ``$HIGGS_AUDIO_CACHE``, else the per-user cache's ``codes``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else _platform_dir("cache") / "codes"


def prefix_dir() -> Path:
    """Where the command line keeps voices' prompt keys and values: ``prefixes`` in the codes folder when
    ``$HIGGS_AUDIO_CACHE`` names it, else in the per-user cache folder."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() / "prefixes" if env else _platform_dir("cache") / "prefixes"


def kernel_dir() -> Path:
    """Where compiled CPU kernels are kept: ``kernels`` next to the prefixes."""
    return prefix_dir().with_name("kernels")


def fingerprint(*parts) -> str:
    """A short id (16 hex digits) of ``parts``, each one of:

    - a directory: its resolved path and its files' names, sizes and modification times (a checkpoint:
      cheap to take for many gigabytes, and any rewrite changes it);
    - a mapping of tensors (a state dict): each tensor's name, shape and a strided sample of up to 1024
      values, so two different weights never share an id while hashing stays fast for big models;
    - bytes, taken whole (a source file);
    - anything else by its ``repr`` (settings, dtypes, versions).
    """
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path) and part.is_dir():
            h.update(str(part.resolve()).encode())
            for f in sorted(part.iterdir()):
                if f.is_file():
                    stat = f.stat()
                    h.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        elif isinstance(part, Mapping) and part and all(hasattr(v, "detach") for v in part.values()):
            for name, tensor in sorted(part.items()):
                flat = tensor.detach().reshape(-1)
                h.update(f"{name}{tuple(tensor.shape)}".encode())
                h.update(flat[:: max(1, flat.numel() // 1024)].float().cpu().numpy().tobytes())
        elif isinstance(part, bytes):
            h.update(part)
        else:
            h.update(repr(part).encode())
        h.update(b"\0")  # parts never run into each other
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    """The sha256 of a file's content (a clip: the same clip under another name is the same voice)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
