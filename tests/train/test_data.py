"""Training data: the three layouts, every bad file reported at once with exit code 3, nothing written."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from higgs_audio.cli import main
from higgs_audio.train.data import find_clips
from tests.train.conftest import finetune_args, tone, write_voices


def test_the_three_layouts_give_the_same_clips(tmp_path):
    folder = write_voices(tmp_path / "folder")
    lj = tmp_path / "lj"
    (lj / "wavs").mkdir(parents=True)
    lines = []
    for i, clip in enumerate(sorted(folder.glob("*.wav"))):
        (lj / "wavs" / clip.name).write_bytes(clip.read_bytes())
        text = clip.with_suffix(".txt").read_text().strip()
        lines.append(f"{clip.stem}|{text.upper()}|{text}")
    (lj / "metadata.csv").write_text("\n".join(lines) + "\n")
    manifest = tmp_path / "data.jsonl"
    manifest.write_text("\n".join(json.dumps({"audio": f"folder/{c.name}", "text": c.with_suffix(".txt").read_text(),
                                              "speaker": "tone", "scene": "A quiet room."})
                                  for c in sorted(folder.glob("*.wav"))) + "\n")
    expected = [(c.name, c.with_suffix(".txt").read_text().strip()) for c in sorted(folder.glob("*.wav"))]
    for source in (folder, lj, manifest):
        clips, problems = find_clips(source)
        assert problems == []
        assert [(c.audio.name, c.text) for c in clips] == expected
    clips, _ = find_clips(manifest)
    assert {(c.speaker, c.scene) for c in clips} == {("tone", "A quiet room.")}


def test_dry_run_prints_the_summary(tmp_path, capsys, tiny_native, tiny_codec):
    data = write_voices(tmp_path / "data", seconds=0.5)
    out = tmp_path / "out"
    assert main(finetune_args(data, out, tiny_native, tiny_codec, tmp_path / "cache", "--dry-run")) == 0
    assert "4 clips, 0.00 hours (2.0 s), 1 speaker, 50 audio frames" in capsys.readouterr().out
    assert not out.exists()


def test_every_bad_file_is_listed_and_nothing_is_written(tmp_path, capsys, tiny_native, tiny_codec):
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "good.wav", tone(0.5, 150.0), 24000)
    (data / "good.txt").write_text("Fine.")
    sf.write(data / "no_text.wav", tone(0.5, 150.0), 24000)
    sf.write(data / "empty.wav", tone(0.5, 150.0), 24000)
    (data / "empty.txt").write_text("  \n")
    sf.write(data / "silent.wav", np.zeros(12000, dtype=np.float32), 24000)
    (data / "silent.txt").write_text("Nothing.")
    (data / "broken.wav").write_bytes(b"RIFF not really a wave file")
    (data / "broken.txt").write_text("Broken.")
    sf.write(data / "long.wav", tone(2.0, 150.0), 24000)
    (data / "long.txt").write_text("Too long.")
    out = tmp_path / "out"
    code = main(finetune_args(data, out, tiny_native, tiny_codec, tmp_path / "cache", "--max-seconds", 1.5))
    err = capsys.readouterr().err
    assert code == 3
    assert "5 problems in the training data" in err
    for expected in ("no_text.wav: missing transcript", "empty.wav: empty transcript", "silent.wav: silent clip",
                     "broken.wav: unreadable clip", "long.wav: 2.0 s is longer than the 1.5 s limit"):
        assert expected in err, expected
    assert "good.wav" not in err
    assert not out.exists()


def test_manifest_and_metadata_errors_name_their_lines(tmp_path, capsys, tiny_native, tiny_codec):
    manifest = tmp_path / "data.jsonl"
    manifest.write_text('{"audio": "missing.wav", "text": "Hi."}\nnot json\n{"audio": "x.wav"}\n')
    out = tmp_path / "out"
    assert main(finetune_args(manifest, out, tiny_native, tiny_codec, tmp_path / "cache")) == 3
    err = capsys.readouterr().err
    assert "3 problems" in err
    assert f"{manifest}:2: not valid JSON" in err and f"{manifest}:3: 'text' is missing" in err
    assert "missing.wav: unreadable clip" in err
    lj = tmp_path / "lj"
    lj.mkdir()
    (lj / "metadata.csv").write_text("a|Hello.\nno separator here\n")
    assert main(finetune_args(lj, out, tiny_native, tiny_codec, tmp_path / "cache")) == 3
    err = capsys.readouterr().err
    assert "metadata.csv:1: no audio file a.wav" in err and "metadata.csv:2: expected 'id|text'" in err
    assert not out.exists()


def test_a_non_empty_output_needs_force_or_resume(tmp_path, capsys, tiny_native, tiny_codec):
    data = write_voices(tmp_path / "data", seconds=0.5)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(finetune_args(data, out, tiny_native, tiny_codec, tmp_path / "cache", "--steps", 1)) == 1
    assert "is not empty: pass --resume" in capsys.readouterr().err
    assert main(finetune_args(data, out, tiny_native, tiny_codec, tmp_path / "cache", "--steps", 1, "--resume")) == 1
    assert "holds no checkpoint" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me"
    assert main(finetune_args(data, out, tiny_native, tiny_codec, tmp_path / "cache", "--steps", 1, "--force")) == 0
    assert (out / "mine.txt").read_text() == "keep me"  # --force replaces a run, not the folder's other files
    assert (out / "adapter_model.safetensors").is_file()
