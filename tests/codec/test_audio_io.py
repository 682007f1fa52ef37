"""higgs_audio.audio: reading, resampling, loudness and atomic writing."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from higgs_audio import audio, formats
from higgs_audio.errors import AudioInputError
from tests.codec.signals import noise, speech_like


def _wav_bytes(wave: np.ndarray, rate: int, subtype: str = "FLOAT") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave.T, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


# --- reading ---

def test_read_from_path_bytes_base64_data_uri_and_array(tmp_path):
    stereo = np.stack([speech_like(8000, sr=16000), noise(8000)])
    data = _wav_bytes(stereo, 16000)
    (tmp_path / "a.wav").write_bytes(data)
    expected = stereo.mean(axis=0)
    encoded = base64.b64encode(data).decode()
    for source in (tmp_path / "a.wav", str(tmp_path / "a.wav"), data, bytearray(data), memoryview(data),
                   "data:audio/wav;base64," + encoded):
        wave, rate = audio.read_audio(source)
        assert rate == 16000 and wave.dtype == np.float32
        np.testing.assert_allclose(wave, expected, atol=1e-7)
    wave, rate = audio.read_audio_base64(encoded, mono=False)
    assert rate == 16000 and wave.shape == (2, 8000)
    np.testing.assert_array_equal(wave, stereo)
    wave, rate = audio.read_audio(stereo, 16000, mono=False)
    assert rate == 16000 and np.array_equal(wave, stereo)
    wave, _ = audio.read_audio(torch.from_numpy(stereo), 16000)
    np.testing.assert_allclose(wave, expected, atol=1e-7)


def test_integer_arrays_are_scaled_to_unit_range():
    wave, _ = audio.read_audio(np.array([-32768, 0, 16384], dtype=np.int16), 8000)
    np.testing.assert_array_equal(wave, np.array([-1.0, 0.0, 0.5], dtype=np.float32))
    wave, _ = audio.read_audio(np.array([2**30], dtype=np.int32), 8000)
    assert wave[0] == 0.5


@pytest.mark.parametrize(
    ("source", "kwargs", "message"),
    [
        (b"definitely not audio" * 10, {}, "not a readable audio file"),
        (b"", {}, "not a readable audio file"),
        ("/no/such/file.wav", {}, "does not exist"),
        (12345, {}, "cannot read audio from a int"),
        ({"audio": 1}, {}, "cannot read audio from a dict"),
        (np.zeros(10, dtype=np.float32), {}, "needs its sample_rate"),
        (np.zeros(10, dtype=np.float32), {"sample_rate": 0}, "positive"),
        (np.zeros(0, dtype=np.float32), {"sample_rate": 8000}, "empty"),
        (np.array([0.0, np.nan], dtype=np.float32), {"sample_rate": 8000}, "NaN"),
        (np.array([0, 1], dtype=np.uint8), {"sample_rate": 8000}, "real numbers"),
        ("data:audio/wav,abc", {}, "base64"),
        ("data:audio/wav;base64,@@@", {}, "not valid base64"),
    ],
)
def test_bad_sources_raise_audio_input_error(source, kwargs, message):
    with pytest.raises(AudioInputError, match=message):
        audio.read_audio(source, **kwargs)


def test_unsupported_file_type_and_empty_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello, this is text, not sound\n" * 20)
    with pytest.raises(AudioInputError, match=r"notes\.txt is not a readable audio file"):
        audio.read_audio(tmp_path / "notes.txt")
    (tmp_path / "empty.wav").write_bytes(_wav_bytes(np.zeros(0, dtype=np.float32), 8000))
    with pytest.raises(AudioInputError, match="empty"):
        audio.read_audio(tmp_path / "empty.wav")
    with pytest.raises(AudioInputError, match="only for arrays"):
        audio.read_audio(tmp_path / "empty.wav", 8000)


# --- resampling ---

def test_soxr_resampling_length_and_content():
    rate_in, rate_out = 44100, 24000
    t = np.arange(44101) / rate_in
    out = audio.resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), rate_in, rate_out)
    assert out.dtype == np.float32 and out.shape == (math.ceil(44101 * rate_out / rate_in),)
    ref = np.sin(2 * np.pi * 1000 * np.arange(len(out)) / rate_out)
    assert np.abs(out[500:-500] - ref[500:-500]).max() < 1e-3
    stereo = audio.resample(np.stack([t, t]).astype(np.float32), rate_in, rate_out)
    assert stereo.shape == (2, len(out))


# --- loudness ---

def test_integrated_loudness_matches_pyloudnorm():
    # Reference values computed with pyloudnorm 0.2.0 (Meter(rate).integrated_loudness) on the same signals.
    assert audio.integrated_loudness(speech_like(72000), 24000) == pytest.approx(-21.824664206620294, abs=1e-5)
    stereo = np.stack([speech_like(96000, sr=48000), noise(96000)])
    assert audio.integrated_loudness(stereo, 48000) == pytest.approx(-7.165629629324408, abs=1e-5)
    gated = np.concatenate([np.zeros(24000, np.float32), 0.01 * noise(24000), speech_like(48000)])
    assert audio.integrated_loudness(gated, 24000) == pytest.approx(-20.58097712794805, abs=1e-5)


def test_bs1770_reference_tone():
    # A full-scale 997 Hz sine reads about -3.01 LKFS in BS.1770 (pyloudnorm's filter gives -3.05).
    tone = np.sin(2 * np.pi * 997 * np.arange(96000) / 48000).astype(np.float32)
    assert audio.integrated_loudness(tone, 48000) == pytest.approx(-3.05, abs=0.01)


def test_normalize_loudness_hits_the_target_and_stays_float32():
    wave = 0.02 * speech_like(72000)
    out = audio.normalize_loudness(wave, 24000, -23.0)
    assert out.dtype == np.float32
    assert audio.integrated_loudness(out, 24000) == pytest.approx(-23.0, abs=1e-3)
    silence = np.zeros(24000, dtype=np.float32)
    assert audio.integrated_loudness(silence, 24000) == -math.inf
    assert np.array_equal(audio.normalize_loudness(silence, 24000), silence)
    short = noise(9000)  # under the 0.4 s gating block: no loudness to measure
    assert np.array_equal(audio.normalize_loudness(short, 24000), short)
    with pytest.raises(AudioInputError, match="at least 0.4 s"):
        audio.integrated_loudness(short, 24000)


# --- writing ---

@pytest.mark.parametrize("fmt", [f for f in formats.FORMATS if f != "pcm"])
def test_encode_formats_round_trip(fmt):
    wave = speech_like(24000)
    data = formats.encode_audio(wave, 24000, fmt)
    back, rate = audio.read_audio(data)
    assert rate == 24000
    if fmt in ("wav", "flac"):  # lossless 16-bit
        assert back.shape == wave.shape and np.abs(back - wave).max() <= 1 / 32767
    else:  # lossy codecs may pad the stream a little
        assert abs(len(back) - len(wave)) < 0.1 * len(wave)


@pytest.mark.parametrize("fmt", list(formats.FORMATS))
def test_no_samples_make_an_empty_file(fmt):
    data = formats.encode_audio(np.zeros(0, dtype=np.float32), 24000, fmt)
    if fmt in ("wav", "ogg"):  # headers that count the samples (FLAC's 0 means "unknown" to libsndfile)
        assert sf.info(io.BytesIO(data)).frames == 0
    else:
        assert isinstance(data, bytes)


def test_pcm_is_clipped_s16le():
    data = formats.encode_audio(np.array([0.0, 0.5, -1.0, 2.0, -3.0], dtype=np.float32), 24000, "pcm")
    assert np.frombuffer(data, dtype="<i2").tolist() == [0, 16384, -32767, 32767, -32767]


def test_opus_only_at_its_rates_and_unknown_formats():
    with pytest.raises(ValueError, match="Opus supports only"):
        formats.encode_audio(noise(22050), 22050, "opus")
    with pytest.raises(ValueError, match="unsupported audio format 'aiff'"):
        formats.encode_audio(noise(100), 24000, "aiff")
    with pytest.raises(AudioInputError, match="NaN"):
        formats.encode_audio(np.array([np.nan], dtype=np.float32), 24000, "wav")
    with pytest.raises(ValueError, match="cannot be encoded as a stream"):
        formats.StreamEncoder("ogg", 24000)


def test_format_from_the_suffix():
    assert [formats.format_for(f"out.{s}") for s in ("WAV", "aac", "raw", "ogg")] == ["wav", "aac", "pcm", "ogg"]
    with pytest.raises(ValueError, match="cannot tell the audio format from 'out.aiff'"):
        formats.format_for("out.aiff")


def test_write_is_atomic_and_refuses_to_overwrite(tmp_path):
    wave = speech_like(4800)
    path = formats.write_audio(tmp_path / "out.flac", wave, 24000)
    assert sf.info(path).format == "FLAC"
    first = path.read_bytes()
    with pytest.raises(FileExistsError, match="force=True"):
        formats.write_audio(path, noise(4800), 24000)
    assert path.read_bytes() == first
    formats.write_audio(path, noise(4800), 24000, force=True)
    assert path.read_bytes() != first
    formats.write_audio(tmp_path / "raw.bin", wave, 24000, format="pcm")
    assert (tmp_path / "raw.bin").stat().st_size == 2 * 4800
    with pytest.raises(ValueError, match="cannot tell the audio format"):
        formats.write_audio(tmp_path / "out.xyz", wave, 24000)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        formats.write_audio(tmp_path / "missing" / "out.wav", wave, 24000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.flac", "raw.bin"]  # no temporary files left
