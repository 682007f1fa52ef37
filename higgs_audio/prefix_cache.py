"""Keys and values of prompt prefixes, kept for the next request that starts the same way.

Requests in one voice share a long prefix (system prompt, reference transcript, reference audio codes: about
300 positions for a 10 s clip), which would otherwise be prefilled again for each of them. A prompt is cut
into blocks of ``BLOCK`` positions; a full block is named by a digest of everything up to its end (text ids,
audio codes, which positions are audio), so it is found only after the very same prefix, at the same
positions. Blocks are copies of KV cache rows; the least recently used go when ``max_bytes`` is exceeded.
They can also be kept on disk, for the next process that loads the same model (the command line, run once
per sentence, then starts a known voice without prefilling it).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from higgs_audio.files import atomic_write
from higgs_audio.model.higgs import MergedInput
from higgs_audio.model.transformer import KVCache

BLOCK = 32
DISK_MAX_BYTES = 2 << 30

log = logging.getLogger(__name__)


@dataclass
class _Block:
    k: torch.Tensor  # (layers, kv_heads, BLOCK, head_dim)
    v: torch.Tensor
    audio: torch.Tensor  # (BLOCK,) bool

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.audio))


def _digests(merged: MergedInput, end: int) -> list[bytes]:
    """The chained digest of each full block within positions ``[0, end)``."""
    out, prev = [], b""
    for start in range(0, end - BLOCK + 1, BLOCK):
        stop = start + BLOCK
        h = hashlib.blake2b(prev, digest_size=16)
        for part in (merged.ids[start:stop], merged.codes[start:stop], merged.audio[start:stop]):
            h.update(part.contiguous().numpy().tobytes())
        prev = h.digest()
        out.append(prev)
    return out


class PrefixCache:
    """``max_bytes`` of blocks in memory; with ``directory``, every stored block is also written there (one
    safetensors file per block, at most ``disk_max_bytes``, least recently used removed first) and blocks
    missing from memory are read back from it, so a later process with the same model starts warm. The
    directory must belong to one model and compute dtype (``cache.fingerprint`` of the checkpoint names one)."""

    def __init__(self, max_bytes: int, directory: Path | None = None, disk_max_bytes: int = DISK_MAX_BYTES):
        self.max_bytes, self.directory, self.disk_max_bytes = max_bytes, directory, disk_max_bytes
        self.nbytes = 0
        self._blocks: OrderedDict[bytes, _Block] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._blocks)

    def reuse(self, merged: MergedInput, end: int, row: KVCache) -> int:
        """Copy the longest run of stored blocks that starts ``merged``, within positions ``[0, end)``, into
        the one-stream cache ``row``. Returns the number of positions filled (a multiple of ``BLOCK``)."""
        filled, mine = 0, set()
        for digest in _digests(merged, end):
            mine.add(digest)
            block = self._blocks.get(digest)
            if block is not None:
                self._blocks.move_to_end(digest)
            else:
                block = self._read(digest, row)
                if block is None:
                    break
                if self._make_room(block.nbytes, mine):
                    self._blocks[digest] = block
                    self.nbytes += block.nbytes
            span = slice(filled, filled + BLOCK)
            row.k[:, 0, :, span] = block.k
            row.v[:, 0, :, span] = block.v
            row.audio[0, span] = block.audio
            filled += BLOCK
        return filled

    def store(self, merged: MergedInput, end: int, row: KVCache) -> None:
        """Keep copies of the full blocks of positions ``[0, end)`` of the one-stream cache ``row`` (already
        computed for ``merged``) that are not stored yet. Room is made by dropping the least recently used
        blocks of other prompts; a prompt's first blocks are never dropped to store its later ones (a block
        is only found after all the blocks before it)."""
        size = BLOCK * (2 * row.k[:, 0, :, 0].numel() * row.k.element_size() + row.audio.element_size())
        mine: set[bytes] = set()
        for i, digest in enumerate(_digests(merged, end)):
            mine.add(digest)
            if digest in self._blocks:
                self._blocks.move_to_end(digest)
                continue
            if not self._make_room(size, mine):
                return
            span = slice(i * BLOCK, (i + 1) * BLOCK)
            try:
                block = _Block(row.k[:, 0, :, span].clone(), row.v[:, 0, :, span].clone(), row.audio[0, span].clone())
            except torch.OutOfMemoryError:
                # The device is fuller than the budget assumed: keep what is stored, never fail a request.
                log.warning("out of memory for the prefix cache; it keeps %d MB from now on", self.nbytes >> 20)
                self.max_bytes = self.nbytes
                return
            self._blocks[digest] = block
            self.nbytes += size
            self._write(digest, block)

    def _make_room(self, size: int, keep: set[bytes]) -> bool:
        """Drop least recently used blocks, except those in ``keep``, until ``size`` more bytes fit."""
        while self.nbytes + size > self.max_bytes and self._blocks and next(iter(self._blocks)) not in keep:
            self.nbytes -= self._blocks.popitem(last=False)[1].nbytes
        return self.nbytes + size <= self.max_bytes

    def _path(self, digest: bytes) -> Path:
        return self.directory / f"{digest.hex()}.safetensors"

    def _read(self, digest: bytes, row: KVCache) -> _Block | None:
        """The block stored on disk under ``digest``, if it is there and has the shapes ``row`` needs; a file
        that cannot be read or does not fit is removed."""
        if self.directory is None or not self._path(digest).is_file():
            return None
        path = self._path(digest)
        want = {"k": (row.k[:, 0, :, :BLOCK].shape, row.k.dtype), "v": (row.v[:, 0, :, :BLOCK].shape, row.v.dtype),
                "audio": ((BLOCK,), torch.bool)}
        try:
            tensors = load_file(str(path), device=str(row.k.device))
            if {k: (t.shape, t.dtype) for k, t in tensors.items()} != want:
                raise ValueError("shapes or dtypes differ")
            os.utime(path)  # recently used: removed last
        except Exception as e:  # noqa: BLE001 - a damaged or foreign file is only a cache miss
            log.warning("removing unusable prefix cache file %s: %s", path, e)
            path.unlink(missing_ok=True)
            return None
        return _Block(tensors["k"], tensors["v"], tensors["audio"])

    def _write(self, digest: bytes, block: _Block) -> None:
        """Write ``block`` to the directory (if any), then keep the directory within ``disk_max_bytes``."""
        if self.directory is None or self._path(digest).is_file():
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tensors = {"k": block.k, "v": block.v, "audio": block.audio}
            atomic_write(self._path(digest), save({k: t.contiguous().cpu() for k, t in tensors.items()}))
            files = sorted(self.directory.glob("*.safetensors"), key=lambda f: f.stat().st_mtime_ns)
            total = sum(f.stat().st_size for f in files)
            for old in files:
                if total <= self.disk_max_bytes:
                    break
                total -= old.stat().st_size
                old.unlink(missing_ok=True)
        except OSError as e:  # a full or read-only disk costs the cache, not the request
            log.warning("cannot write the prefix cache in %s: %s", self.directory, e)
