"""``higgs-audio quantize`` writes a copy that ``speak --model`` loads as it is."""

from __future__ import annotations

import soundfile as sf


def test_quantize_then_speak_with_the_copy(cli, tmp_path):
    out = tmp_path / "tiny-int8"
    proc = cli.run("quantize", "-o", out, "--model", cli.model, "--quantize", "int8")
    assert f"wrote {out} (int8" in proc.stderr.decode() and (out / "quantization.json").is_file()

    again = cli.run("quantize", "-o", out, "--model", cli.model, "--quantize", "int8", check=False)
    assert again.returncode == 1 and b"pass --force" in again.stderr and b"Traceback" not in again.stderr

    generation = [out if arg == cli.model else arg for arg in cli.generation]
    wav = tmp_path / "hello.wav"
    cli.run("speak", "Hello there.", "-o", wav, *generation)
    audio, rate = sf.read(wav)
    assert rate == 24000 and len(audio) > 0

    wrong = cli.run("speak", "Hello there.", "-o", tmp_path / "x.wav", *generation, "--quantize", "int4",
                    check=False)
    assert wrong.returncode == 1 and b"holds int8 weights and cannot be loaded as int4" in wrong.stderr
