"""Every user error: one line on stderr naming the problem, a non-zero exit code, never a traceback.

The command cases run as concurrent subprocesses (most stop before the model loads, so their time is Python
and torch start-up); the rest go through the same ``main`` in this process."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from higgs_audio.cli import main

DIALOG = "[SPEAKER0] Hi.\n[SPEAKER1] Hello."

# name -> (arguments, exit code, text the message must contain). Placeholders are filled in by the fixture.
# The error cases run as the real command in subprocesses; the rest call main() in this process.
COMMAND_CASES = {
    "unknown voice, with close matches": (
        ["speak", "Hi.", "-o", "{out}", "--voice", "alise", "{gen}"], 1,
        "unknown voice 'alise'; did you mean 'alice'?"),
    "clip without a transcript": (
        ["speak", "Hi.", "-o", "{out}", "--voice", "{bare}", "{gen}"], 2,
        "nobody.wav has no transcript: pass --ref-text"),
    "unreadable audio": (
        ["speak", "Hi.", "-o", "{out}", "--voice", "{garbage}", "--ref-text", "words", "{gen}"], 1,
        "garbage.wav is not a readable audio file"),
    "existing output without --force": (
        ["speak", "Hi.", "-o", "{existing}", "{gen}"], 1, "exists.wav already exists; pass --force"),
    "model folder that is not a checkpoint": (
        ["speak", "Hi.", "-o", "{out}", "--model", "{tmp}", "--codec", "{codec}", "--device", "cpu"], 1,
        "config.json is missing"),
    "official model not downloaded, offline": (
        ["speak", "Hi.", "-o", "{out}", "--device", "cpu"], 1,
        "'bosonai/higgs-audio-v2-generation-3B-base' is not in the local hub cache"),
    "--ref-text with several voices": (
        ["speak", DIALOG, "-o", "{out}", "--voice", "{a},{b}", "--ref-text", "x", "{gen}"], 2,
        "--ref-text needs exactly one --voice"),
}
MAIN_CASES = {
    "unknown profile, with close matches": (
        ["speak", "Hi.", "-o", "{out}", "--voice", "profile:male_enn", "{gen}"], 1,
        "unknown voice profile 'male_enn'; did you mean 'male_en'"),
    "missing audio file": (
        ["speak", "Hi.", "-o", "{out}", "--voice", "{tmp}/missing.wav", "{gen}"], 1,
        "missing.wav does not exist"),
    "--voice lists mixed with SPEAKERn=": (
        ["speak", DIALOG, "-o", "{out}", "--voice", "SPEAKER0={a}", "--voice", "{b}", "{gen}"], 2,
        "use either --voice a,b"),
    "chunk limits without --chunk": (
        ["speak", "Hi.", "-o", "{out}", "--chunk-words", "5", "{gen}"], 2,
        "--chunk-words and --chunk-turns need --chunk"),
    "text and --file together": (
        ["speak", "Hi.", "--file", "{a_txt}", "-o", "{out}", "{gen}"], 2, "either as an argument or with --file"),
    "no text": (["speak", "-o", "{out}", "{gen}"], 2, "nothing to speak"),
    "unknown scene, with close matches": (
        ["speak", "Hi.", "-o", "{out}", "--scene", "quiet_indor", "{gen}"], 2,
        "unknown scene 'quiet_indor'; did you mean 'quiet_indoor'?"),
    "unknown output format": (["speak", "Hi.", "-o", "{tmp}/x.aiff", "{gen}"], 2, "cannot tell the audio format"),
    "reference clip longer than the prompt holds": (
        ["speak", "Hi.", "-o", "{out}", "--voice", "{long}", "--ref-text", "words", "{gen}"], 1,
        "long.flac lasts 60.0 s but at most 40.6 s is accepted"),
    "bad option value": (["speak", "Hi.", "-o", "{out}", "--chunk", "lines", "{gen}"], 2, "invalid choice: 'lines'"),
    "voice name with a path": (["voices", "add", "../evil", "{a}", "--text", "hi"], 1, "invalid voice name '../evil'"),
    "voice name taken": (["voices", "add", "alice", "{a}", "--text", "hi"], 1,
                         "voice 'alice' already exists in"),
    "library clip without a transcript": (["voices", "add", "someone", "{bare}"], 2,
                                          "needs the words spoken in the clip"),
    "removing an unknown voice": (["voices", "remove", "alicia"], 1, "did you mean 'alice'?"),
    "removing a built-in profile": (["voices", "remove", "profile:male_en"], 1, "built in and cannot be removed"),
}


@dataclass
class Setup:
    library: Path
    values: dict

    def args(self, case, generation):
        out = []
        for arg in case[0]:
            out += [str(a) for a in generation] if arg == "{gen}" else [arg.format(**self.values)]
        return out


@pytest.fixture(scope="module")
def setup(cli, clips, tmp_path_factory) -> Setup:
    tmp = tmp_path_factory.mktemp("errors")
    library = tmp / "voices"
    library.mkdir()
    shutil.copy(clips.a, library / "alice.wav")
    shutil.copy(clips.a.with_suffix(".txt"), library / "alice.txt")
    (tmp / "garbage.wav").write_bytes(b"this is not audio at all" * 100)
    (tmp / "exists.wav").write_bytes(b"keep me")
    sf.write(tmp / "long.flac", np.zeros(60 * 8000, dtype=np.int16), 8000)  # the --max-len 1024 prompt holds 40.6 s
    return Setup(library, dict(out=tmp / "out.wav", tmp=tmp, codec=cli.codec, bare=clips.bare,
                               garbage=tmp / "garbage.wav", existing=tmp / "exists.wav", a=clips.a, b=clips.b,
                               a_txt=clips.a.with_suffix(".txt"), long=tmp / "long.flac"))


@pytest.fixture(scope="module")
def results(cli, setup):
    def run(case):
        return cli.run(*setup.args(case, cli.generation), env={"HIGGS_AUDIO_VOICES": str(setup.library)},
                       check=False)

    with ThreadPoolExecutor(max_workers=4) as pool:
        done = dict(zip(COMMAND_CASES, pool.map(run, COMMAND_CASES.values())))
    return done


def check(err: str, out, code: int, case: str, expected_code: int, message: str):
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("higgs-audio: error: ") and message in err, err
    assert code == expected_code and not out, case


@pytest.mark.parametrize("case", list(COMMAND_CASES))
def test_command_error_is_one_line_with_exit_code(results, setup, case):
    _, code, message = COMMAND_CASES[case]
    proc = results[case]
    check(proc.stderr.decode(), proc.stdout, proc.returncode, case, code, message)
    assert setup.values["existing"].read_bytes() == b"keep me" and not setup.values["out"].exists()


@pytest.mark.parametrize("case", list(MAIN_CASES))
def test_error_is_one_line_with_exit_code(cli, setup, case, capsys, monkeypatch):
    _, code, message = MAIN_CASES[case]
    monkeypatch.setenv("HIGGS_AUDIO_VOICES", str(setup.library))
    returned = main(setup.args(MAIN_CASES[case], cli.generation))
    captured = capsys.readouterr()
    check(captured.err, captured.out, returned, case, code, message)
