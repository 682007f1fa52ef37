"""Audio in: read files, bytes, base64 and arrays; resample; change tempo; measure and normalise loudness.

Writing files and streams is ``higgs_audio.formats``' job.

Waves are float32 numpy arrays, shaped (samples,) for mono or (channels, samples) otherwise.
Every problem with audio a user handed in raises ``AudioInputError`` with a message saying what to fix.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from higgs_audio.errors import AudioInputError, AudioTooLongError

AudioSource = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray

_MAX_CHANNELS = 16


def check_wave(wave: np.ndarray, what: str = "audio") -> np.ndarray:
    """``wave`` as float32 (samples,) or (channels, samples), refusing empty, non-finite or odd-shaped input.

    Integer arrays are scaled from their full range to [-1, 1].
    """
    if hasattr(wave, "detach"):  # a torch tensor, without importing torch here
        wave = wave.detach().cpu().numpy()
    if not isinstance(wave, np.ndarray):
        raise AudioInputError(f"{what} must be a numpy array of samples, got {type(wave).__name__}")
    if np.issubdtype(wave.dtype, np.signedinteger):
        wave = wave.astype(np.float32) / float(-np.iinfo(wave.dtype).min)
    elif not np.issubdtype(wave.dtype, np.floating):
        raise AudioInputError(f"{what} must hold real numbers, got dtype {wave.dtype}")
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim not in (1, 2):
        raise AudioInputError(f"{what} must be shaped (samples,) or (channels, samples), got {wave.shape}")
    if wave.ndim == 2 and wave.shape[0] > _MAX_CHANNELS:
        raise AudioInputError(
            f"{what} has shape {wave.shape}: {wave.shape[0]} channels is implausible; "
            "pass (channels, samples) (transpose a (samples, channels) array)"
        )
    if wave.shape[-1] == 0 or wave.size == 0:
        raise AudioInputError(f"{what} is empty (no samples)")
    if not np.isfinite(wave).all():
        raise AudioInputError(f"{what} contains NaN or infinite samples")
    return wave


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Average the channels (what the reference's librosa load does)."""
    return wave if wave.ndim == 1 else wave.mean(axis=0, dtype=np.float32)


_UNKNOWN_FRAMES = (0, 2**63 - 1)  # what libsndfile reports for a streamed WAV (0) or FLAC (SF_COUNT_MAX)


def _too_long(seconds: float, max_seconds: float | None, name: str) -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLongError(
            f"{name} lasts {seconds:.1f} s but at most {max_seconds:.1f} s is accepted (the longest reference "
            "clip the model's prompt can hold); cut the clip to a shorter excerpt"
        )


def _unreadable(name: str, reason: str) -> AudioInputError:
    return AudioInputError(f"{name} is not a readable audio file ({reason}); use WAV, FLAC, MP3, OGG (Vorbis/Opus)"
                           " or AAC/M4A")


def _decode_file(file: str | io.BytesIO, name: str, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode with libsndfile when the header gives the length, which is checked before anything is decoded.

    Files whose header cannot say how long they are (streamed WAV and FLAC) and formats libsndfile lacks
    (AAC, M4A) are decoded with FFmpeg (PyAV) instead, a block at a time, stopping once past ``max_seconds``.
    """
    try:
        with sf.SoundFile(file) as f:
            frames, rate = f.frames, int(f.samplerate)
            if frames not in _UNKNOWN_FRAMES:
                _too_long(frames / rate, max_seconds, name)
                data = f.read(dtype="float32", always_2d=True)
                return check_wave(data.T, name), rate
        reason = "its header does not give its length"
    except sf.LibsndfileError as e:
        reason = e.error_string
    except AudioInputError:
        raise
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioInputError(f"{name} could not be decoded as audio: {e}") from None
    if isinstance(file, io.BytesIO):
        file.seek(0)
    return _decode_av(file, name, max_seconds, reason)


def _decode_av(file: str | io.BytesIO, name: str, max_seconds: float | None, reason: str) -> tuple[np.ndarray, int]:
    try:
        import av
    except ImportError:
        raise _unreadable(name, f"{reason}; installing PyAV ('pip install av') lets FFmpeg read it") from None
    try:
        container = av.open(file, "r")
    except (av.FFmpegError, ValueError) as e:
        raise _unreadable(name, reason if isinstance(file, io.BytesIO) else str(e)) from None
    with container:
        if not container.streams.audio:
            raise _unreadable(name, "it holds no audio stream")
        stream = container.streams.audio[0]
        if container.duration is not None:  # the container's own estimate, in microseconds
            _too_long(container.duration / 1e6, max_seconds, name)
        rate = stream.codec_context.sample_rate
        channels = stream.codec_context.channels
        # Every frame as float32 planes at the stream's own rate and layout (decoders differ in sample format).
        planar = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=rate)
        blocks, samples = [], 0
        try:
            for frame in container.decode(stream):
                for out in planar.resample(frame):
                    blocks.append(out.to_ndarray().reshape(channels, -1))
                    samples += blocks[-1].shape[1]
                if rate and samples > rate * (max_seconds or math.inf):
                    _too_long(samples / rate, max_seconds, name)
        except av.FFmpegError as e:
            raise AudioInputError(f"{name} could not be decoded as audio: {e}") from None
    if not blocks or not rate:
        raise AudioInputError(f"{name} is empty (no samples)")
    return check_wave(np.concatenate(blocks, axis=1), name), int(rate)


def check_readable(path: str | os.PathLike) -> None:
    """Refuse a file neither libsndfile nor FFmpeg can open, reading its header only (nothing is decoded)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AudioInputError(f"audio file {path} does not exist")
    try:
        sf.info(str(path))
        return
    except (sf.LibsndfileError, RuntimeError) as e:
        reason = getattr(e, "error_string", str(e))
    try:
        import av
    except ImportError:
        raise _unreadable(str(path), reason) from None
    try:
        with av.open(str(path), "r") as container:
            if container.streams.audio:
                return
            reason = "it holds no audio stream"
    except (av.FFmpegError, ValueError):
        pass
    raise _unreadable(str(path), reason)


def read_audio(source: AudioSource, sample_rate: int | None = None, *, mono: bool = True,
               max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Read audio from a file path, the bytes of a file, a ``data:`` URI or an array; return (wave, rate).

    ``sample_rate`` is the rate of an array source and must not be given for files (they carry their own).
    With ``mono`` the channels are averaged. A clip longer than ``max_seconds`` raises ``AudioTooLongError``
    (a ``ValueError``), from the file's header where it gives the length, so nothing long is decoded.
    """
    if isinstance(source, np.ndarray) or hasattr(source, "detach"):
        if sample_rate is None:
            raise AudioInputError("audio given as an array needs its sample_rate")
        if int(sample_rate) <= 0:
            raise AudioInputError(f"sample_rate must be positive, got {sample_rate}")
        _too_long(source.shape[-1] / int(sample_rate), max_seconds, "the audio array")
        wave, rate = check_wave(source), int(sample_rate)
    else:
        if sample_rate is not None:
            raise AudioInputError("sample_rate is only for arrays: audio files carry their own rate")
        if isinstance(source, str) and source.startswith("data:"):
            return read_audio_base64(source, mono=mono, max_seconds=max_seconds)
        if isinstance(source, (bytes, bytearray, memoryview)):
            wave, rate = _decode_file(io.BytesIO(bytes(source)), "the audio bytes", max_seconds)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source).expanduser()
            if not path.is_file():
                raise AudioInputError(f"audio file {path} does not exist")
            wave, rate = _decode_file(str(path), str(path), max_seconds)
        else:
            raise AudioInputError(
                f"cannot read audio from a {type(source).__name__}: pass a path, file bytes, a data: URI "
                "or a numpy array with its sample_rate"
            )
    return (to_mono(wave) if mono else wave), rate


def read_audio_base64(data: str, *, mono: bool = True, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Read an audio file encoded as base64, bare or as a ``data:audio/...;base64,`` URI."""
    if data.startswith("data:"):
        header, sep, data = data.partition(",")
        if not sep or not header.endswith(";base64"):
            raise AudioInputError("a data: URI for audio must be of the form 'data:audio/<type>;base64,<data>'")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise AudioInputError(f"audio is not valid base64: {e}") from None
    return read_audio(raw, mono=mono, max_seconds=max_seconds)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample along the last axis with soxr 'HQ' (librosa's default), to ceil(T * target / orig) samples."""
    if orig_sr == target_sr:
        return wave
    length = math.ceil(wave.shape[-1] * target_sr / orig_sr)
    out = soxr.resample(wave.T, orig_sr, target_sr, quality="HQ").T.astype(np.float32, copy=False)
    # librosa pads or trims soxr's output to exactly this length; so do we, to frame the same way.
    if out.shape[-1] >= length:
        return np.ascontiguousarray(out[..., :length])
    return np.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, length - out.shape[-1])])


# --- Loudness (ITU-R BS.1770-4 integrated loudness, the measure pyloudnorm's default Meter implements) ---

_BLOCK_S, _OVERLAP, _ABS_GATE, _REL_GATE = 0.4, 0.75, -70.0, -10.0


def _biquad(kind: str, gain_db: float, q: float, fc: float, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(b, a) of the K-weighting stages, normalised so a[0] = 1 (audio-EQ-cookbook formulas)."""
    a_gain = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * fc / rate
    alpha, cos = math.sin(w0) / (2 * q), math.cos(w0)
    if kind == "high_shelf":
        root = 2 * math.sqrt(a_gain) * alpha
        b = [a_gain * ((a_gain + 1) + (a_gain - 1) * cos + root), -2 * a_gain * ((a_gain - 1) + (a_gain + 1) * cos),
             a_gain * ((a_gain + 1) + (a_gain - 1) * cos - root)]
        a = [(a_gain + 1) - (a_gain - 1) * cos + root, 2 * ((a_gain - 1) - (a_gain + 1) * cos),
             (a_gain + 1) - (a_gain - 1) * cos - root]
    else:  # high_pass
        b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
        a = [1 + alpha, -2 * cos, 1 - alpha]
    return np.array(b) / a[0], np.array(a) / a[0]


@lru_cache(maxsize=8)
def _k_weighting(rate: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Numerator, denominator (cascade of both stages) and the length after which its response is < 1e-12."""
    b1, a1 = _biquad("high_shelf", 4.0, 1 / math.sqrt(2), 1500.0, rate)
    b2, a2 = _biquad("high_pass", 0.0, 0.5, 38.0, rate)
    b, a = np.polymul(b1, b2), np.polymul(a1, a2)
    radius = max(abs(np.roots(a)))
    # Slowest pole decays as n * r^n (a double pole at worst); budget twice the single-pole length.
    tail = 2 * math.ceil(math.log(1e-12) / math.log(radius))
    return b, a, tail


def _k_filter(wave: np.ndarray, rate: int) -> np.ndarray:
    """Apply the IIR K-weighting filter exactly up to a 1e-12 tail, via the FFT of the padded signal.

    Circular convolution with the filter's frequency response equals the causal IIR output once the padding
    is longer than the (decaying) impulse response, and needs no per-sample Python loop.
    """
    b, a, tail = _k_weighting(rate)
    n = 1 << (wave.shape[-1] + tail - 1).bit_length()
    z_inv = np.exp(-2j * np.pi * np.fft.rfftfreq(n))
    response = np.polyval(b[::-1], z_inv) / np.polyval(a[::-1], z_inv)
    return np.fft.irfft(np.fft.rfft(wave.astype(np.float64), n) * response, n)[..., : wave.shape[-1]]


def integrated_loudness(wave: np.ndarray, rate: int) -> float:
    """Gated integrated loudness in LUFS; -inf for silence. Needs at least 0.4 s of audio."""
    wave = check_wave(wave)
    channels = wave[None] if wave.ndim == 1 else wave
    block, step = _BLOCK_S * rate, 1 - _OVERLAP
    n_blocks = int(round((channels.shape[-1] / rate - _BLOCK_S) / (_BLOCK_S * step))) + 1
    if channels.shape[-1] < block or n_blocks < 1:
        raise AudioInputError(f"loudness needs at least {_BLOCK_S} s of audio, got {channels.shape[-1] / rate:.3f} s")
    filtered = _k_filter(channels, rate)
    power = np.empty((channels.shape[0], n_blocks))
    for j in range(n_blocks):
        lo, hi = int(_BLOCK_S * (j * step) * rate), int(_BLOCK_S * (j * step + 1) * rate)
        power[:, j] = (1.0 / block) * np.sum(np.square(filtered[:, lo:hi]), axis=1)
    weights = np.array([1.41 if c in (3, 4) else 1.0 for c in range(channels.shape[0])])  # surround channels
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10 * np.log10(weights @ power)
        gated = block_lufs >= _ABS_GATE
        if not gated.any():
            return -math.inf
        relative = -0.691 + 10 * np.log10(weights @ power[:, gated].mean(axis=1)) + _REL_GATE
        gated = (block_lufs > relative) & (block_lufs > _ABS_GATE)
        return float(-0.691 + 10 * np.log10(weights @ power[:, gated].mean(axis=1)))


def normalize_loudness(wave: np.ndarray, rate: int, target_lufs: float = -23.0) -> np.ndarray:
    """Scale ``wave`` to ``target_lufs`` integrated loudness, staying float32.

    Clips shorter than 0.4 s and silence (no block above -70 LUFS) have no measurable loudness and are
    returned unchanged. The result may exceed [-1, 1]; writers clip.
    """
    wave = check_wave(wave)
    if wave.shape[-1] < _BLOCK_S * rate:
        return wave
    loudness = integrated_loudness(wave, rate)
    if not math.isfinite(loudness):
        return wave
    return (wave * np.float32(10 ** ((target_lufs - loudness) / 20))).astype(np.float32)


# --- Tempo ---

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
