"""Response audio: whole files and incremental (streamed) encoders for every OpenAI format, and speed.

Whole files use ``higgs_audio.audio.encode_audio`` (proper headers with lengths), except AAC, which
libsndfile lacks. Streams cannot seek back to patch a header, so they are encoded incrementally with PyAV
(FFmpeg) into containers that need no length up front; WAV streams get a header whose sizes say
"unknown" (0xFFFFFFFF), as streaming TTS services do, which every reader accepts. FLAC is the exception:
a FLAC header of unknown length (0 samples) is valid, but libsndfile (soundfile) cannot read such a file, so
a FLAC stream is encoded as it goes and sent whole at the end, its header patched with the length.
``pcm`` is raw s16le mono at the model's rate.
"""

from __future__ import annotations

import io
import struct

import numpy as np

from higgs_audio.audio import encode_audio

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
# format -> (FFmpeg container, codec) for streamed encoding
_AV = {"mp3": ("mp3", "libmp3lame"), "opus": ("ogg", "libopus"), "aac": ("adts", "aac"), "flac": ("flac", "flac")}


def pcm16(wave: np.ndarray) -> bytes:
    return np.round(np.clip(wave, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def encode_file(wave: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """A complete audio file (or raw PCM) of ``wave``."""
    if fmt == "pcm":
        return pcm16(wave)
    if fmt == "aac":
        encoder = StreamEncoder(fmt, sample_rate)
        return encoder.write(wave) + encoder.close()
    if len(wave) == 0:  # libsndfile refuses to write nothing; an empty file is still valid
        return wav_header(sample_rate, 0) if fmt == "wav" else StreamEncoder(fmt, sample_rate).close()
    return encode_audio(wave, sample_rate, fmt)


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
        self.fmt, self.rate = fmt, sample_rate
        self._header = wav_header(sample_rate) if fmt == "wav" else b""
        self._container = self._stream = None
        if fmt in _AV:
            import av

            container, codec = _AV[fmt]
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


class Tempo:
    """Change speed without changing pitch (FFmpeg's ``atempo``), chunk by chunk; equal to one-shot."""

    def __init__(self, speed: float, sample_rate: int):
        import av.filter

        self._graph = av.filter.Graph()
        self._source = self._graph.add_abuffer(sample_rate=sample_rate, format="flt", layout="mono",
                                               time_base=f"1/{sample_rate}")
        node = self._source
        while speed < 0.5:  # one atempo stage covers [0.5, 100]
            stage = self._graph.add("atempo", "0.5")
            node.link_to(stage)
            node, speed = stage, speed / 0.5
        stage = self._graph.add("atempo", repr(speed))
        node.link_to(stage)
        self._sinknode = self._graph.add("abuffersink")
        stage.link_to(self._sinknode)
        self._graph.configure()
        self.rate, self._pts = sample_rate, 0

    def process(self, wave: np.ndarray) -> np.ndarray:
        import av

        if len(wave):
            frame = av.AudioFrame.from_ndarray(wave.astype(np.float32)[None], format="flt", layout="mono")
            frame.sample_rate, frame.pts = self.rate, self._pts
            self._pts += len(wave)
            self._source.push(frame)
        return self._pull()

    def flush(self) -> np.ndarray:
        self._source.push(None)
        return self._pull()

    def _pull(self) -> np.ndarray:
        import av

        out = []
        while True:
            try:
                out.append(self._sinknode.pull().to_ndarray()[0])
            except (av.error.BlockingIOError, av.error.EOFError):
                break
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)
