"""Audio out: every file format we write, as whole files and as incremental (streamed) encoders.

``FORMATS`` is the one table of them. Whole files go through libsndfile (soundfile), which writes proper
headers with lengths; AAC, which libsndfile lacks, goes through PyAV (FFmpeg). Streams cannot seek back to
patch a header, so they are encoded incrementally with PyAV into containers that need no length up front;
WAV streams get a header whose sizes say "unknown" (0xFFFFFFFF), as streaming TTS services do, which every
reader accepts. FLAC is the exception: a FLAC header of unknown length (0 samples) is valid, but libsndfile
cannot read such a file, so a FLAC stream is encoded as it goes and handed over whole at the end, its header
patched with the length. ``pcm`` is raw s16le mono.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from higgs_audio.audio import check_wave
from higgs_audio.files import atomic_write


@dataclass(frozen=True)
class Format:
    media_type: str
    file: tuple[str, str] | None  # libsndfile (container, subtype) of a whole file; None: PyAV or raw
    stream: tuple[str, str] | None  # FFmpeg (container, codec) of an incremental stream; None: written as is
    streams: bool = True  # whether a stream of it can be encoded chunk by chunk


FORMATS: dict[str, Format] = {
    "wav": Format("audio/wav", ("WAV", "PCM_16"), None),
    "flac": Format("audio/flac", ("FLAC", "PCM_16"), ("flac", "flac")),
    "mp3": Format("audio/mpeg", ("MP3", "MPEG_LAYER_III"), ("mp3", "libmp3lame")),
    "opus": Format("audio/ogg", ("OGG", "OPUS"), ("ogg", "libopus")),
    "aac": Format("audio/aac", None, ("adts", "aac")),
    "ogg": Format("audio/ogg", ("OGG", "VORBIS"), None, streams=False),  # FFmpeg's own Vorbis is experimental
    "pcm": Format("audio/pcm", None, None),
}
STREAMED = tuple(name for name, f in FORMATS.items() if f.streams)  # what the server's responses may ask for
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_SUFFIXES = {**{f".{name}": name for name in FORMATS}, ".raw": "pcm"}


def format_for(path: str | os.PathLike | None, format: str | None = None) -> str:
    """The format named by ``format``, else by ``path``'s suffix; a ValueError naming the choices otherwise."""
    if format is None:
        suffix = Path(path).suffix.lower() if path is not None else ""
        if suffix not in _SUFFIXES:
            raise ValueError(f"cannot tell the audio format from {str(path)!r}: name it "
                             f"{', '.join(_SUFFIXES)} or pass a format (one of {', '.join(FORMATS)})")
        return _SUFFIXES[suffix]
    name = format.lower()
    if name not in FORMATS:
        raise ValueError(f"unsupported audio format {format!r}; choose one of {list(FORMATS)}")
    return name


def encode_audio(wave: np.ndarray, sample_rate: int, format: str = "wav") -> bytes:
    """The bytes of a whole audio file (or raw s16le PCM for "pcm"). Samples are clipped to [-1, 1] first;
    no samples give a valid empty file."""
    name = format_for(None, format)
    if name == "opus" and sample_rate not in OPUS_RATES:
        raise ValueError(f"Opus supports only {OPUS_RATES} Hz; resample the {sample_rate} Hz audio first")
    if np.size(wave):
        wave = np.clip(check_wave(wave, "audio to write"), -1.0, 1.0)
    if name == "pcm":
        return pcm16(wave.T)  # interleaved channels
    container = FORMATS[name].file
    if container is None or (not np.size(wave) and FORMATS[name].stream is not None):
        # libsndfile lacks AAC, and writes an empty FLAC or MP3 file as no bytes at all: FFmpeg writes those
        encoder = StreamEncoder(name, sample_rate)
        return encoder.write(wave) + encoder.close()
    buffer = io.BytesIO()
    sf.write(buffer, wave.T, sample_rate, format=container[0], subtype=container[1])  # soundfile: (samples, ch)
    return buffer.getvalue()


def write_audio(
    path: str | os.PathLike, wave: np.ndarray, sample_rate: int, format: str | None = None, *, force: bool = False
) -> Path:
    """Write ``wave`` to ``path`` atomically (a temporary file in the same folder, then a rename).

    The format comes from ``format`` or the file suffix. An existing file is only replaced with ``force``.
    """
    path = Path(path).expanduser()
    data = encode_audio(wave, sample_rate, format_for(path, format))
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True to overwrite it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist")
    atomic_write(path, data)
    return path


def pcm16(wave: np.ndarray) -> bytes:
    return np.round(np.clip(wave, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int | None = None) -> bytes:
    """A 16-bit mono PCM WAV header; ``None`` bytes of data means unknown (a stream)."""
    riff, data = (0xFFFFFFFF, 0xFFFFFFFF) if data_bytes is None else (36 + data_bytes, data_bytes)
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + fmt + b"data" + struct.pack("<I", data)


def flac_with_length(data: bytes, samples: int) -> bytes:
    """``data``, a FLAC file, with its total sample count written into STREAMINFO (the first metadata block,
    right after the 4-byte marker and the 4-byte block header): the low 36 bits of its bytes 10-17."""
    if data[:4] != b"fLaC" or data[4] & 0x7F != 0:
        raise ValueError("not a FLAC stream starting with its STREAMINFO block")
    start = 8 + 10
    field = int.from_bytes(data[start : start + 8], "big") & ~((1 << 36) - 1) | samples
    return data[:start] + field.to_bytes(8, "big") + data[start + 8 :]


class _Sink(io.RawIOBase):
    """A write-only file that hands back what was written since the last ``take``."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


class StreamEncoder:
    """``write(wave) -> bytes`` for each chunk, then ``close() -> bytes``; the concatenation is one file."""

    def __init__(self, fmt: str, sample_rate: int):
        if not FORMATS[fmt].streams:
            raise ValueError(f"{fmt} cannot be encoded as a stream; use one of {', '.join(STREAMED)}")
        self.fmt, self.rate = fmt, sample_rate
        self._header = wav_header(sample_rate) if fmt == "wav" else b""
        self._container = self._stream = None
        if FORMATS[fmt].stream is not None:
            import av

            container, codec = FORMATS[fmt].stream
            self._sink = _Sink()
            self._container = av.open(self._sink, "w", format=container)
            self._stream = self._container.add_stream(codec, rate=sample_rate)
            self._stream.layout = "mono"
            self._pts = 0

    def write(self, wave: np.ndarray) -> bytes:
        if self._container is None:
            out, self._header = self._header + pcm16(wave), b""
            return out
        if len(wave):
            self._encode(np.clip(wave, -1.0, 1.0).astype(np.float32))
        return b"" if self.fmt == "flac" else self._sink.take()

    def close(self) -> bytes:
        if self._container is None:
            out, self._header = self._header, b""
            return out
        self._encode(None)
        self._container.close()
        out = self._sink.take()
        return flac_with_length(out, self._pts) if self.fmt == "flac" else out

    def _encode(self, wave: np.ndarray | None) -> None:
        import av

        frame = None
        if wave is not None:
            frame = av.AudioFrame.from_ndarray(wave[None], format="flt", layout="mono")
            frame.sample_rate, frame.pts = self.rate, self._pts
            self._pts += len(wave)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
