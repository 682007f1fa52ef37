"""Keys and values of prompt prefixes, kept for the next request that starts the same way.

Requests in one voice share a long prefix (system prompt, reference transcript, reference audio codes: about
300 positions for a 10 s clip), which would otherwise be prefilled again for each of them. A prompt is cut
into blocks of ``BLOCK`` positions; a full block is named by a digest of everything up to its end (text ids,
audio codes, which positions are audio), so it is found only after the very same prefix, at the same
positions. Blocks are copies of KV cache rows; the least recently used go when ``max_bytes`` is exceeded.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch

from higgs_audio.model.higgs import MergedInput
from higgs_audio.model.transformer import KVCache

BLOCK = 32

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
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._blocks: OrderedDict[bytes, _Block] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._blocks)

    def reuse(self, merged: MergedInput, end: int, row: KVCache) -> int:
        """Copy the longest run of stored blocks that starts ``merged``, within positions ``[0, end)``, into
        the one-stream cache ``row``. Returns the number of positions filled (a multiple of ``BLOCK``)."""
        filled = 0
        for digest in _digests(merged, end):
            block = self._blocks.get(digest)
            if block is None:
                break
            self._blocks.move_to_end(digest)
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
            while self.nbytes + size > self.max_bytes and self._blocks and next(iter(self._blocks)) not in mine:
                self.nbytes -= self._blocks.popitem(last=False)[1].nbytes
            if self.nbytes + size > self.max_bytes:
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
