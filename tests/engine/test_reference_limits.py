"""The Python API refuses a reference clip longer than its prompt holds, with a ValueError naming the limit,
from the file's header (nothing decoded) and for all the clips of one request together."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from higgs_audio import AudioContent, AudioTooLongError, Message
from higgs_audio.voices import VoiceLibrary

# tiny_api holds 512 positions: (512 - 8 codebooks - 2) / 25 frames per second.
LIMIT = 20.08


def _silence(path, seconds: float, rate: int = 8000):
    sf.write(path, np.zeros(int(seconds * rate), dtype=np.int16), rate)
    return path


def test_limit_comes_from_the_cache_and_the_codebooks(tiny_api):
    assert tiny_api.max_reference_seconds == pytest.approx(LIMIT)


def test_an_hour_long_file_is_refused_from_its_header(tiny_api, tmp_path, monkeypatch):
    path = tmp_path / "hour.flac"
    with sf.SoundFile(path, "w", 8000, 1, format="FLAC") as f:
        for _ in range(60):
            f.write(np.zeros(60 * 8000, dtype=np.int16))
    monkeypatch.setattr(sf.SoundFile, "read", lambda *a, **k: pytest.fail("decoded a clip it should refuse"))
    with pytest.raises(ValueError, match=r"lasts 3600\.0 s but at most 20\.1 s"):
        tiny_api.voice(str(path), "Silence.")


def test_arrays_and_clips_of_one_request_share_the_limit(tiny_api, tmp_path):
    with pytest.raises(AudioTooLongError, match=r"at most 20\.1 s"):
        tiny_api.voice((np.zeros(21 * 24000, dtype=np.float32), 24000), "Silence.")
    clip = AudioContent(data=_silence(tmp_path / "twelve.wav", 12).read_bytes())
    other = AudioContent(data=_silence(tmp_path / "twelve-b.wav", 12).read_bytes())
    with pytest.raises(AudioTooLongError, match=r"lasts 12\.0 s but at most 8\.\d s"):
        tiny_api.request(messages=[Message("assistant", clip), Message("assistant", other), Message("user", "Hi.")])
    assert tiny_api.encode_audio(AudioContent(data=_silence(tmp_path / "ok.wav", 20).read_bytes())).shape == (8, 500)


def test_the_library_refuses_a_long_clip_before_copying_it(tmp_path):
    library = VoiceLibrary(tmp_path / "voices", cache_dir=tmp_path / "codes")
    with pytest.raises(AudioTooLongError, match=r"at most 20\.0 s"):
        library.add("long", _silence(tmp_path / "long.wav", 30), "Silence.", max_seconds=20.0)
    assert not (tmp_path / "voices").exists()
    assert library.add("short", _silence(tmp_path / "short.wav", 3), "Silence.", max_seconds=20.0).name == "short"
