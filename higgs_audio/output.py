"""Columns -> waveform, in one place: delayed audio columns become code frames (``delay.FrameAssembler``), frames
become audio chunks as a stream goes (``ChunkedAudio``: the first chunk early, then every ``chunk_frames``), and
whole utterances, or several joined, decode in bounded memory (``decode``).

The codec's ``StreamDecoder`` (``codec/streaming.py``) is exact: a frame's samples are final once the decoder's
look-ahead has arrived, so chunked, blocked and one-shot decodes agree up to float rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from higgs_audio.codec import AudioCodec


def stack_frames(frames: list[torch.Tensor], num_codebooks: int) -> torch.Tensor:
    """(K,) frames -> (K, T) codes (T may be 0)."""
    return torch.stack(frames, dim=1) if frames else torch.zeros(num_codebooks, 0, dtype=torch.long)


class ChunkedAudio:
    """One stream's frames -> audio chunks: the first as soon as the frames so far decode to any samples (the
    delay pattern and the codec's look-ahead cleared), then one every ``chunk_frames`` frames, the rest at the
    end. ``push`` decodes here; a caller batching several streams' decodes uses ``take`` and ``heard``."""

    def __init__(self, codec: AudioCodec, chunk_frames: int = 10):
        self.decoder = codec.stream_decoder()
        self.chunk_frames = chunk_frames
        self._waiting: list[torch.Tensor] = []
        self._heard = False

    def take(self, frames: list[torch.Tensor], end: bool = False) -> torch.Tensor | None:
        """Add new frames (``end``: the stream has ended); return the codes (K, n) to decode now, or None."""
        self._waiting += frames
        due = not self._heard or len(self._waiting) >= self.chunk_frames or end
        if not self._waiting or not due:
            return None
        codes, self._waiting = torch.stack(self._waiting, dim=1), []
        return codes

    def heard(self, wave: np.ndarray) -> np.ndarray:
        """Note audio that reached the listener (from then on chunks wait for ``chunk_frames``); returns it."""
        self._heard = self._heard or bool(len(wave))
        return wave

    def push(self, frames: list[torch.Tensor], end: bool = False) -> np.ndarray:
        """``take`` and decode: the samples now final (often none)."""
        codes = self.take(frames, end)
        return np.zeros(0, dtype=np.float32) if codes is None else self.heard(self.decoder.push(codes))

    def flush(self) -> np.ndarray:
        """The remaining samples, once the stream has ended."""
        return self.decoder.flush()


def decode(codec: AudioCodec, codes: torch.Tensor, block_frames: int = 1500) -> np.ndarray:
    """(K, T) codes -> float32 samples: one decode, or for long audio (several chunks' codes joined) the
    streaming decoder ``block_frames`` at a time: the same samples, joins as smooth as any frame boundary, in
    bounded memory."""
    if codes.shape[1] <= block_frames:
        return np.asarray(codec.decode(codes), dtype=np.float32)
    decoder = codec.stream_decoder()
    pieces = [decoder.push(codes[:, i : i + block_frames]) for i in range(0, codes.shape[1], block_frames)]
    return np.concatenate([*pieces, decoder.flush()]).astype(np.float32, copy=False)
