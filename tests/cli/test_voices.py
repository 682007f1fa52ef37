"""The voice library: the reference's folder layouts, names, changes, profiles and the code cache."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from higgs_audio.audio import read_audio
from higgs_audio.errors import AudioInputError
from higgs_audio.voices import (
    BUILTIN_PROFILES,
    VoiceError,
    VoiceLibrary,
    VoiceProfile,
    VoiceRef,
    check_name,
    resolve_voice,
)


@pytest.fixture
def reference_folder(tmp_path, clips):
    """A folder laid out like the reference's examples/voice_prompts plus a vLLM presets config.json."""
    root = tmp_path / "voice_prompts"
    (root / "audio").mkdir(parents=True)
    shutil.copy(clips.a, root / "belinda.wav")
    (root / "belinda.txt").write_text("  Twas the night before.  \n")
    shutil.copy(clips.bare, root / "en_man.wav")  # no transcript
    shutil.copy(clips.b, root / "audio" / "p.flac")
    shutil.copy(clips.b, root / "shared.flac")
    (root / "profile.yaml").write_text("profiles:\n  custom: A raspy old sailor.\n  male_en: Overridden.\n")
    presets = {"preset_voice": {"transcript": "Preset words.", "audio_file": "audio/p.flac",
                                "system_prompt": "Be calm."},
               "shared": {"transcript": "Shared words.", "audio_file": "shared.flac"}}
    (root / "config.json").write_text(json.dumps(presets))
    return root


def test_reads_reference_folder_layouts(reference_folder, tmp_path):
    clips, profiles = VoiceLibrary(reference_folder, cache_dir=tmp_path / "c").entries()
    assert sorted(clips) == ["belinda", "en_man", "preset_voice", "shared"]  # shared.flac is not listed twice
    assert (clips["belinda"].kind, clips["belinda"].transcript) == ("clip", "Twas the night before.")
    assert clips["en_man"].transcript is None
    preset = clips["preset_voice"]
    assert (preset.kind, preset.transcript, preset.system_prompt) == ("preset", "Preset words.", "Be calm.")
    assert preset.audio == (reference_folder / "audio" / "p.flac").resolve()
    assert profiles["custom"].description == "A raspy old sailor."
    assert profiles["male_en"].description == "Overridden."  # a folder's profile wins over the built-in one
    assert profiles["female_en_story"].kind == "builtin"
    assert set(BUILTIN_PROFILES) == {"male_en", "female_en_story", "male_en_british", "female_en_british"}


def test_earlier_folders_win_and_add_writes_to_the_first(tmp_path, reference_folder, clips):
    mine = tmp_path / "mine"
    lib = VoiceLibrary([mine, reference_folder], cache_dir=tmp_path / "c")
    assert lib.find("belinda").source == reference_folder
    lib.add("belinda", clips.b, "My own  belinda.")
    found = lib.find("belinda")
    assert found.source == mine and found.transcript == "My own belinda." and found.audio == mine / "belinda.flac"
    assert (mine / "belinda.txt").read_text() == "My own belinda.\n"
    assert (reference_folder / "belinda.wav").exists()


def test_add_never_clobbers_without_force(tmp_path, clips):
    lib = VoiceLibrary(tmp_path / "lib", cache_dir=tmp_path / "c")
    lib.add("host", clips.a, "First take.")
    with pytest.raises(VoiceError, match="already exists.*--force"):
        lib.add("host", clips.b, "Second take.")
    assert lib.find("host").transcript == "First take."
    lib.add("host", clips.b, "Second take.", force=True)
    assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == ["host.flac", "host.txt"]  # old .wav gone
    assert lib.find("host").transcript == "Second take."


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", ".hidden", "", "two words", "x" * 65, "profile:x",
                                  "voice.wav", "-dash"])
def test_invalid_names_are_refused(name):
    with pytest.raises(VoiceError, match="invalid voice name"):
        check_name(name)


def test_valid_names():
    assert check_name("en_man") == "en_man" and check_name("Voice-2") == "Voice-2"


def test_add_refuses_unreadable_audio_and_missing_transcript(tmp_path, clips):
    lib = VoiceLibrary(tmp_path / "lib", cache_dir=tmp_path / "c")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio" * 50)
    with pytest.raises(AudioInputError, match="not a readable audio file"):
        lib.add("bad", bad, "words")
    with pytest.raises(VoiceError, match="needs the words spoken"):
        lib.add("quiet", clips.a, "   ")
    assert not (tmp_path / "lib").exists() or not any((tmp_path / "lib").iterdir())


def test_remove_clip_profile_and_preset(reference_folder, tmp_path):
    outside = tmp_path / "outside.flac"
    outside.write_bytes(b"x")
    presets = json.loads((reference_folder / "config.json").read_text())
    presets["escape"] = {"transcript": "t", "audio_file": "../outside.flac"}
    (reference_folder / "config.json").write_text(json.dumps(presets))
    lib = VoiceLibrary(reference_folder, cache_dir=tmp_path / "c")
    lib.remove("belinda")
    assert not (reference_folder / "belinda.wav").exists() and not (reference_folder / "belinda.txt").exists()
    lib.remove("profile:custom")
    assert "custom" not in lib.entries()[1] and "male_en:" in (reference_folder / "profile.yaml").read_text()
    lib.remove("preset_voice")
    assert "preset_voice" not in json.loads((reference_folder / "config.json").read_text())
    assert not (reference_folder / "audio" / "p.flac").exists()
    lib.remove("escape")
    assert outside.exists()  # files outside the library folder are never deleted
    with pytest.raises(VoiceError, match="built in"):
        lib.remove("profile:female_en_story")
    assert sorted(lib.entries()[0]) == ["en_man", "shared"]


def test_profiles_by_name_or_description(tmp_path):
    lib = VoiceLibrary(tmp_path / "lib", cache_dir=tmp_path / "c")

    def profile(text):
        return resolve_voice(f"profile:{text}", lib)

    assert profile("male_en_british") == VoiceProfile(BUILTIN_PROFILES["male_en_british"])
    assert profile('"a warm, low voice"') == VoiceProfile("a warm, low voice")
    with pytest.raises(VoiceError, match="did you mean 'female_en_british'"):
        profile("female_en_britsh")
    with pytest.raises(VoiceError, match="needs a profile name or a description"):
        profile("  ")
    lib.add_profile("pirate", "A gravelly  pirate.")
    assert profile("pirate") == VoiceProfile("A gravelly pirate.")
    with pytest.raises(VoiceError, match="already exists"):
        lib.add_profile("pirate", "Another.")


def test_one_reading_of_voice_specs(reference_folder, tmp_path, clips):
    """``resolve_voice``: strict for the CLI and the API, lenient (no files) for the server."""
    lib = VoiceLibrary(reference_folder, cache_dir=tmp_path / "c")
    preset = resolve_voice("preset_voice", lib)
    assert (preset.audio, preset.transcript, preset.system_prompt) == (
        (reference_folder / "audio" / "p.flac").resolve(), "Preset words.", "Be calm.")
    assert resolve_voice("belinda", lib, "Given words.").transcript == "Given words."  # given wins
    path = resolve_voice(str(reference_folder / "belinda.wav"), lib)
    assert (path.audio, path.transcript) == (reference_folder / "belinda.wav", "Twas the night before.")
    wave = (np.zeros(240, dtype=np.float32), 24000)
    assert resolve_voice(wave, None, "Words.").audio is wave
    assert resolve_voice("profile:custom", None) == VoiceProfile("custom")  # no library: the words themselves
    with pytest.raises(AudioInputError, match="does not exist"):
        resolve_voice(str(tmp_path / "missing.wav"), lib)
    with pytest.raises(AudioInputError, match="not an audio file, a 'profile:' description or a known voice"):
        resolve_voice("belinda", None)
    with pytest.raises(VoiceError, match="is a profile; use it as 'profile:custom'"):
        resolve_voice("custom", lib)
    with pytest.raises(VoiceError, match="unknown voice 'belinde'; did you mean 'belinda'"):
        resolve_voice("belinde", lib)

    def lenient(spec):
        return resolve_voice(spec, lib, files=False, strict=False)

    assert lenient("custom") == lenient("profile:custom") == VoiceProfile("A raspy old sailor.")
    assert lenient("profile:urgent") == VoiceProfile("urgent")  # an unknown profile name is a description
    assert lenient("alloy") is None and lenient(str(reference_folder / "belinda.wav")) is None
    assert lenient("belinda").transcript == "Twas the night before."


class CountingCodec:
    """A codec that counts its encode calls."""

    def __init__(self, codec):
        self.codec, self.calls = codec, 0

    def encode(self, wave, rate):
        self.calls += 1
        return self.codec.encode(wave, rate)

    def __getattr__(self, name):
        return getattr(self.codec, name)


@pytest.fixture(scope="module")
def codecs(tiny_codec, tmp_path_factory):
    """The tiny codec and another one with different weights."""
    from higgs_audio.codec import AudioCodec
    from tests.helpers.tiny_codec import write_checkpoints

    other, _ = write_checkpoints(tmp_path_factory.mktemp("other-codec"), seed=1)
    return AudioCodec.from_pretrained(tiny_codec), AudioCodec.from_pretrained(other)


def test_codes_are_cached_by_audio_hash_and_codec(tmp_path, clips, codecs):
    codec, other = codecs
    folder, cache = tmp_path / "lib", tmp_path / "cache"

    def get(name, codec):
        library = VoiceLibrary(folder, cache_dir=cache)
        return library.load(resolve_voice(name, library), codec)

    VoiceLibrary(folder, cache_dir=cache).add("host", clips.a, "Words.")

    first = CountingCodec(codec)
    ref = get("host", first)
    assert isinstance(ref, VoiceRef) and ref.transcript == "Words."
    assert first.calls == 1 and torch.equal(ref.codes, codec.encode(*read_audio(clips.a)))

    second_run = CountingCodec(codec)  # a new library object: what the next command sees
    again = get("host", second_run)
    assert second_run.calls == 0 and torch.equal(again.codes, ref.codes) and again.codes.dtype == torch.long
    assert len(list(cache.iterdir())) == 1

    different = CountingCodec(other)
    get("host", different)
    assert different.calls == 1 and len(list(cache.iterdir())) == 2

    shutil.copy(clips.b, folder / "host.wav")  # same name, new audio: new hash
    changed = CountingCodec(codec)
    get("host", changed)
    assert changed.calls == 1

    for entry in cache.iterdir():  # a damaged cache entry is re-made, not trusted
        entry.write_bytes(b"junk")
    damaged = CountingCodec(codec)
    codes = get("host", damaged).codes
    assert damaged.calls == 1 and np.array_equal(codes.numpy(), codec.encode(*read_audio(clips.b)).numpy())


def test_folders_and_cache_from_environment(tmp_path, monkeypatch, clips):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("HIGGS_AUDIO_VOICES", f"{a}{os.pathsep}{b}")
    monkeypatch.setenv("HIGGS_AUDIO_CACHE", str(tmp_path / "codes"))
    lib = VoiceLibrary()
    assert lib.folders == [a, b] and lib.home == a and lib.cache_dir == tmp_path / "codes"
    monkeypatch.delenv("HIGGS_AUDIO_VOICES")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert VoiceLibrary().folders == [tmp_path / "data" / "higgs-audio" / "voices"]
