"""Every user error: one line on stderr naming the problem, a non-zero exit code, never a traceback.

The cases run as concurrent subprocesses (most stop before the model loads, so the time is Python and torch
start-up) and each test checks one of them."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

DIALOG = "[SPEAKER0] Hi.\n[SPEAKER1] Hello."

# name -> (arguments, exit code, text the message must contain). Placeholders are filled in by the fixture.
CASES = {
    "unknown voice, with close matches": (
        ["speak", "Hi.", "-o", "{out}", "--voice", "alise", "{gen}"], 1,
        "unknown voice 'alise'; did you mean 'alice'?"),
    "unknown profile, with close matches": (
        ["speak", "Hi.", "-o", "{out}", "--voice", "profile:male_enn", "{gen}"], 1,
        "unknown voice profile 'male_enn'; did you mean 'male_en'"),
    "clip without a transcript": (
        ["speak", "Hi.", "-o", "{out}", "--voice", "{bare}", "{gen}"], 2,
        "nobody.wav has no transcript: pass --ref-text"),
    "unreadable audio": (
        ["speak", "Hi.", "-o", "{out}", "--voice", "{garbage}", "--ref-text", "words", "{gen}"], 1,
        "garbage.wav is not a readable audio file"),
    "missing audio file": (
        ["speak", "Hi.", "-o", "{out}", "--voice", "{tmp}/missing.wav", "{gen}"], 1,
        "missing.wav does not exist"),
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
    "--voice lists mixed with SPEAKERn=": (
        ["speak", DIALOG, "-o", "{out}", "--voice", "SPEAKER0={a}", "--voice", "{b}", "{gen}"], 2,
        "use either --voice a,b"),
    "chunk limits without --chunk": (
        ["speak", "Hi.", "-o", "{out}", "--chunk-words", "5", "{gen}"], 2, "--chunk-words and --chunk-turns need --chunk"),
    "text and --file together": (
        ["speak", "Hi.", "--file", "{a_txt}", "-o", "{out}", "{gen}"], 2, "either as an argument or with --file"),
    "no text": (["speak", "-o", "{out}", "{gen}"], 2, "nothing to speak"),
    "unknown scene, with close matches": (
        ["speak", "Hi.", "-o", "{out}", "--scene", "quiet_indor", "{gen}"], 2,
        "unknown scene 'quiet_indor'; did you mean 'quiet_indoor'?"),
    "unknown output format": (["speak", "Hi.", "-o", "{tmp}/x.aiff", "{gen}"], 2, "cannot tell the audio format"),
    "bad option value": (["speak", "Hi.", "-o", "{out}", "--chunk", "lines", "{gen}"], 2, "invalid choice: 'lines'"),
    "voice name with a path": (["voices", "add", "../evil", "{a}", "--text", "hi"], 1, "invalid voice name '../evil'"),
    "voice name taken": (["voices", "add", "alice", "{a}", "--text", "hi"], 1,
                         "voice 'alice' already exists in"),
    "library clip without a transcript": (["voices", "add", "someone", "{bare}"], 2,
                                          "needs the words spoken in the clip"),
    "removing an unknown voice": (["voices", "remove", "alicia"], 1, "did you mean 'alice'?"),
    "removing a built-in profile": (["voices", "remove", "profile:male_en"], 1, "built in and cannot be removed"),
}


@pytest.fixture(scope="module")
def results(cli, clips, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")
    library = tmp / "voices"
    library.mkdir()
    shutil.copy(clips.a, library / "alice.wav")
    shutil.copy(clips.a.with_suffix(".txt"), library / "alice.txt")
    (tmp / "garbage.wav").write_bytes(b"this is not audio at all" * 100)
    (tmp / "exists.wav").write_bytes(b"keep me")
    values = dict(out=tmp / "out.wav", tmp=tmp, codec=cli.codec, bare=clips.bare, garbage=tmp / "garbage.wav",
                  existing=tmp / "exists.wav", a=clips.a, b=clips.b, a_txt=clips.a.with_suffix(".txt"))

    def run(case):
        args = []
        for arg in case[0]:
            args += cli.generation if arg == "{gen}" else [arg.format(**values)]
        return cli.run(*args, env={"HIGGS_AUDIO_VOICES": str(library)}, check=False)

    with ThreadPoolExecutor(max_workers=4) as pool:
        done = dict(zip(CASES, pool.map(run, CASES.values())))
    assert (tmp / "exists.wav").read_bytes() == b"keep me" and not (tmp / "out.wav").exists()
    return done


@pytest.mark.parametrize("case", list(CASES))
def test_error_is_one_line_with_exit_code(results, case):
    _, code, message = CASES[case]
    proc = results[case]
    err = proc.stderr.decode()
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("higgs-audio: error: ") and message in err, err
    assert proc.returncode == code and proc.stdout == b""
