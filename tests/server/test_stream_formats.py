"""Every response format, whole and streamed, read back by soundfile (libsndfile), PyAV (FFmpeg) and our reader.

Readers must agree with one another to the sample and with the written length within one frame of the
format's codec, plus, for MP3 and AAC streams, the encoder priming that only a gapless header (which a stream
cannot carry) lets a decoder trim.
"""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import pytest
import soundfile as sf

from higgs_audio import audio
from higgs_audio.formats import STREAMED, StreamEncoder, encode_audio, wav_header
from tests.codec.signals import speech_like

RATE = 24000
# One frame of each codec at 24 kHz, in samples (PCM formats have no frames).
FRAME = {"wav": 0, "flac": 0, "pcm": 0, "opus": 480, "mp3": 576, "aac": 1024}
# Priming an MP3 (LAME 576 + 529 decoder delay) or AAC (1024) stream leaves in front of the audio. AAC is
# always ADTS, a stream format, even as a whole file; a whole MP3 carries the gapless header.
PRIMING = {"mp3": 576 + 529, "aac": 1024}


def _written(fmt: str, streamed: bool, wave: np.ndarray) -> bytes:
    if not streamed:
        return encode_audio(wave, RATE, fmt)
    encoder = StreamEncoder(fmt, RATE)
    return b"".join(encoder.write(chunk) for chunk in np.array_split(wave, 9)) + encoder.close()


def _soundfile_seconds(data: bytes, fmt: str) -> float:
    if fmt == "pcm":
        wave, rate = sf.read(io.BytesIO(data), samplerate=RATE, channels=1, subtype="PCM_16", format="RAW")
    else:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32")
    return len(wave) / rate


def _pyav_seconds(data: bytes, fmt: str) -> float:
    options = {"sample_rate": str(RATE), "ch_layout": "mono"} if fmt == "pcm" else {}
    with av.open(io.BytesIO(data), format="s16le" if fmt == "pcm" else None, options=options) as container:
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream)) / stream.codec_context.sample_rate


def _ours_seconds(data: bytes, fmt: str) -> float:
    if fmt == "pcm":  # raw samples: an array with its known rate
        wave, rate = audio.read_audio(np.frombuffer(data, dtype="<i2"), RATE)
    else:
        wave, rate = audio.read_audio(data)
    return wave.shape[-1] / rate


READERS = {"soundfile": _soundfile_seconds, "pyav": _pyav_seconds, "higgs_audio": _ours_seconds}


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("fmt", STREAMED)
def test_every_reader_opens_every_format(fmt, streamed):
    wave = speech_like(int(2.5 * RATE), sr=RATE)
    data = _written(fmt, streamed, wave)
    readers = dict(READERS)
    if fmt == "aac":  # libsndfile has no AAC decoder at all; the other two must read it
        with pytest.raises(sf.LibsndfileError):
            sf.info(io.BytesIO(data))
        del readers["soundfile"]
    seconds = {name: read(data, fmt) for name, read in readers.items()}
    assert len({round(s * RATE) for s in seconds.values()}) == 1, seconds
    extra = round(next(iter(seconds.values())) * RATE) - len(wave)
    allowed = FRAME[fmt] + (PRIMING.get(fmt, 0) if streamed or fmt == "aac" else 0)
    assert 0 <= extra <= allowed if FRAME[fmt] else extra == 0, (seconds, extra)


def test_streamed_flac_header_holds_the_length():
    wave = speech_like(RATE, sr=RATE)
    assert sf.info(io.BytesIO(_written("flac", True, wave))).frames == len(wave)


def _flac_of_unknown_length(wave: np.ndarray) -> bytes:
    """A FLAC file as a writer that cannot seek back leaves it: STREAMINFO's total samples 0 (unknown)."""
    buffer = io.BytesIO()
    sf.write(buffer, wave, RATE, format="FLAC")
    data = bytearray(buffer.getvalue())
    assert data[:4] == b"fLaC"
    field = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
    data[18:26] = field.to_bytes(8, "big")
    return bytes(data)


@pytest.mark.parametrize("data_size", [0, 0xFFFFFFFF])
def test_our_reader_takes_a_streamed_wav(data_size):
    wave = speech_like(RATE, sr=RATE)
    pcm = np.round(wave * 32767).astype("<i2").tobytes()
    header = bytearray(wav_header(RATE, len(pcm)))
    header[-4:] = struct.pack("<I", data_size)
    back, rate = audio.read_audio(bytes(header) + pcm)
    assert rate == RATE and np.allclose(back, wave, atol=1 / 32767)


def test_our_reader_takes_a_flac_of_unknown_length(tmp_path):
    wave = speech_like(RATE, sr=RATE)
    data = _flac_of_unknown_length(wave)
    assert sf.info(io.BytesIO(data)).frames == 2**63 - 1  # what libsndfile makes of it
    (tmp_path / "streamed.flac").write_bytes(data)
    for source in (data, tmp_path / "streamed.flac"):
        back, rate = audio.read_audio(source)
        assert rate == RATE and np.allclose(back, wave, atol=1 / 32767)


def test_a_flac_of_unknown_length_is_cut_off_at_the_limit():
    data = _flac_of_unknown_length(speech_like(3 * RATE, sr=RATE))
    with pytest.raises(ValueError, match=r"lasts .* at most 1\.0 s"):
        audio.read_audio(data, max_seconds=1.0)
    assert audio.read_audio(data, max_seconds=3.0)[0].shape == (3 * RATE,)
