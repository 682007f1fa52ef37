"""The codebook delay pattern (spec §4): codebook k runs k steps behind codebook 0.

Codes are shaped (K, T) or batched (B, K, T), the last two dims (codebook, time); the generation-time rules
(``apply_delay_constraints``) work on one sampled column (B, K) per stream, and ``FrameAssembler`` reverts the
pattern column by column as a stream is generated.
"""

from __future__ import annotations

import torch


def add_delay_pattern(codes: torch.Tensor, bos: int, eos: int) -> torch.Tensor:
    """(K, T) codes -> (K, T + K + 1) delayed block, as the model sees prompt audio (spec §4.1).

    The stream is first framed as ``[bos | codes | eos]``; then row k is shifted right by k, the gap
    before it filled with ``bos`` and the gap after it with ``eos``.
    """
    k, t = codes.shape[-2:]
    lead = codes.shape[:-1]
    marked = torch.cat([codes.new_full((*lead, 1), bos), codes, codes.new_full((*lead, 1), eos)], dim=-1)
    # Column j of row r shows marked[j - r]; clamping repeats the bos before and the eos after.
    width = t + k + 1
    src = torch.arange(width, device=codes.device) - torch.arange(k, device=codes.device)[:, None]
    return marked.gather(-1, src.clamp(0, t + 1).expand(*lead, width))


def revert_delay_pattern(delayed: torch.Tensor) -> torch.Tensor:
    """(K, N) delayed -> (K, N - K + 1) aligned frames: row k keeps columns k .. N - K + k (spec §4.3)."""
    k, n = delayed.shape[-2:]
    frames = max(n - k + 1, 0)
    idx = torch.arange(frames, device=delayed.device) + torch.arange(k, device=delayed.device)[:, None]
    return delayed.gather(-1, idx.expand(*delayed.shape[:-1], frames))


def delayed_to_codes(delayed: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """A generated (K, N) delayed segment -> (K, N - K - 1) codes ready for the codec decoder.

    As the reference: revert, drop the first (stream-bos) and last (stream-eos) frame, clip to
    ``codebook_size - 1`` (bos/eos sampled inside the audio become the last code). The trim is
    positional, like the reference's. A segment too short to hold any frame (N <= K + 1, e.g. cut by
    ``max_new_tokens``) gives (K, 0) instead of failing downstream (spec §10.9).
    """
    frames = revert_delay_pattern(delayed)[..., 1:-1]
    return frames.clamp(0, codebook_size - 1)


def delay_state_from_column(column: torch.Tensor, bos: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_delay, remaining) to resume a segment whose last delayed column is ``column`` (B, K).

    For a prompt that already ends inside an audio segment (spec §5.4, continuation): ``num_delay`` is
    K - (#bos in the column); ``remaining`` is K - j - 1 for the lowest row j holding eos, else -1.
    """
    k = column.shape[-1]
    num_delay = k - (column == bos).sum(-1)
    is_eos = column == eos
    first_eos = is_eos.int().argmax(-1)  # argmax returns the first maximum: the lowest eos row
    remaining = torch.where(is_eos.any(-1), k - first_eos - 1, torch.full_like(first_eos, -1))
    return num_delay.long(), remaining.long()


def apply_delay_constraints(
    column: torch.Tensor,
    num_delay: torch.Tensor,
    remaining: torch.Tensor,
    bos: int,
    eos: int,
    active: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The start ramp and end countdown of the delay pattern on a sampled column (spec §5.4).

    State per stream: ``num_delay`` (B,) long, 0 after the all-bos first column of a segment;
    ``remaining`` (B,) long, the countdown, -1 while not counting down. In order:
    1. while ``num_delay + 1 < K``: rows ``num_delay + 1 ..`` are forced to bos; ``num_delay += 1``;
    2. counting down: rows ``0 .. K - remaining - 1`` are forced to eos; ``remaining -= 1``;
       otherwise, if some row holds eos, with j the LOWEST such row: rows ``0 .. j - 1`` are forced to
       eos and ``remaining = K - j - 1``;
    3. ``finished`` where counting down and ``remaining <= 0``: this column is the segment's last (emit
       ``<|audio_eos|>`` with it); that stream's state is reset to (0, -1).
    Streams where ``active`` is False keep their column and state and are not finished.
    Returns (column, num_delay, remaining, finished).
    """
    k = column.shape[-1]
    rows = torch.arange(k, device=column.device)
    ramp = num_delay + 1 < k
    new = column.masked_fill(ramp[:, None] & (rows >= (num_delay + 1)[:, None]), bos)
    new_delay = num_delay + ramp.long()

    counting = remaining >= 0
    new = new.masked_fill(counting[:, None] & (rows < (k - remaining)[:, None]), eos)
    is_eos = new == eos
    first_eos = is_eos.int().argmax(dim=-1)  # argmax returns the first maximum: the lowest eos row
    found = ~counting & is_eos.any(dim=-1)
    new = new.masked_fill(found[:, None] & (rows < first_eos[:, None]), eos)
    new_remaining = torch.where(counting, remaining - 1, torch.where(found, k - first_eos - 1, -1))

    finished = (counting | found) & (new_remaining <= 0)
    new_delay = torch.where(finished, 0, new_delay)
    new_remaining = torch.where(finished, -1, new_remaining)
    if active is not None:
        new = torch.where(active[:, None], new, column)
        new_delay = torch.where(active, new_delay, num_delay)
        new_remaining = torch.where(active, new_remaining, remaining)
        finished = finished & active
    return new, new_delay, new_remaining, finished


class FrameAssembler:
    """Turns a stream's delayed columns into aligned code frames as soon as each frame is complete.

    Frame f of a segment takes row r from column f + r, so the newest column completes frame n - K
    (n columns so far): the diagonal of the last K columns. Frame 0 is the stream-bos frame and the
    frame completed by a segment's last column is the stream-eos frame; both are dropped, as the
    reference's ``[:, 1:-1]`` trim does. bos/eos codes inside kept frames are clipped to the last code.
    """

    def __init__(self, num_codebooks: int, codebook_size: int):
        self.k, self.max_code = num_codebooks, codebook_size - 1
        self.recent: list[torch.Tensor] = []
        self.count = 0

    def push(self, column: torch.Tensor, last: bool = False) -> torch.Tensor | None:
        """Add a column (``last``: it ends the segment); return the newly completed (K,) frame, or None."""
        self.count += 1
        self.recent = (self.recent + [column])[-self.k :]
        if last:
            self.recent, self.count = [], 0
            return None
        if self.count - self.k < 1:
            return None
        return torch.stack(self.recent).diagonal().clamp(0, self.max_code)
