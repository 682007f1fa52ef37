"""Files: checkpoint folders (local, or fetched from the hub), strict JSON, and writes that a reader never sees
half done and a crash never leaves behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from higgs_audio.errors import CheckpointError


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve(name_or_path: str | os.PathLike) -> Path:
    """Return a local directory for a checkpoint given as a directory or a hub id.

    Hub ids are fetched with ``huggingface_hub`` (cached; honours ``HF_HOME`` and ``HF_HUB_OFFLINE``).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint directory that holds config.json")
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise CheckpointError(
            f"checkpoint {name!r} is neither an existing directory nor a hub id of the form 'owner/name'"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name))
    except LocalEntryNotFoundError as e:
        raise CheckpointError(
            f"checkpoint {name!r} is not in the local hub cache and cannot be downloaded "
            f"(offline or no network): download it once, or pass a local directory ({e})"
        ) from None
    except HfHubHTTPError as e:
        raise CheckpointError(f"could not download checkpoint {name!r}: {e}") from None


def read_json(path: Path) -> dict:
    """Read a JSON file, naming the file in any error."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: a checkpoint directory must contain it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data
