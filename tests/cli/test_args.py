"""How ``speak`` reads its voice and scene options, and ``serve`` its numbers (pure functions, no model)."""

from __future__ import annotations

import argparse

import pytest

from higgs_audio.cli import _voice_specs, main
from higgs_audio.errors import UsageError
from higgs_audio.options import text_or_file
from higgs_audio.scenes import SCENES, scene_text
from higgs_audio.server import add_serve_arguments


@pytest.mark.parametrize("values, expected", [
    (["a,b"], ["a", "b"]),
    (["a", "b"], ["a", "b"]),
    ([",b"], [None, "b"]),  # SPEAKER0 left to the model
    (["a,"], ["a"]),  # one voice, bound to no speaker
    (["profile:a calm, deep voice", "b"], ["profile:a calm, deep voice", "b"]),
    (["SPEAKER0=a"], {"SPEAKER0": "a"}),  # one voice, bound to SPEAKER0
    (["SPEAKER1=b", "SPEAKER0=a,c"], {"SPEAKER1": "b", "SPEAKER0": "a,c"}),
    ([], []),
])
def test_voice_specs(values, expected):
    assert _voice_specs(values) == expected


@pytest.mark.parametrize("values, message", [
    (["SPEAKER0=a", "b"], "use either"),
    (["SPEAKER0=a", "SPEAKER0=b"], "gives SPEAKER0 twice"),
    (["SPEAKER0="], "needs a voice after the '='"),
])
def test_voice_spec_errors(values, message):
    with pytest.raises(UsageError, match=message):
        _voice_specs(values)


def test_scene_by_name_file_or_words(tmp_path):
    assert scene_text(None) is None and scene_text("none") is None
    assert scene_text("reading_blog") == SCENES["reading_blog"]
    path = tmp_path / "scene.txt"
    path.write_text("  Recorded outdoors in light rain.\n")
    assert scene_text(str(path)) == "Recorded outdoors in light rain."
    assert scene_text("A noisy train station.") == "A noisy train station."  # the reference would ignore this
    with pytest.raises(UsageError, match="scene file .*missing.txt does not exist"):
        scene_text(str(tmp_path / "missing.txt"))
    with pytest.raises(UsageError, match="did you mean 'reading_blog'"):
        scene_text("reading_blg")
    assert scene_text("Half indoor/outdoor ambience.") == "Half indoor/outdoor ambience."


def test_system_prompttext_or_file(tmp_path):
    path = tmp_path / "interpreter.txt"
    path.write_text("You are a simultaneous interpreter.\n")
    assert text_or_file(str(path), "system prompt") == "You are a simultaneous interpreter."
    assert text_or_file("Speak slowly and/or calmly.", "system prompt") == "Speak slowly and/or calmly."
    with pytest.raises(UsageError, match="system prompt file .*typo.txt does not exist"):
        text_or_file(str(tmp_path / "typo.txt"), "system prompt")


def test_scenes_command(capsys):
    assert main(["scenes"]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("quiet_indoor") and "reading_blog" in listing
    assert main(["scenes", "reading_blog"]) == 0
    assert capsys.readouterr().out == SCENES["reading_blog"] + "\n"
    assert main(["scenes", "quiet"]) == 2
    assert capsys.readouterr().err == "higgs-audio: error: unknown scene 'quiet'; did you mean 'quiet_indoor'?\n"


def test_context_chunks_default_two_or_all_as_the_reference():
    """Deliberate difference: 2 previous chunks by default; ``all`` (None) keeps every one, as the reference."""
    from higgs_audio.cli import build_parser

    def parse(*extra):
        return build_parser().parse_args(["speak", "x", "-o", "x.wav", *extra]).context_chunks

    assert parse() == 2 and parse("--context-chunks", "all") is None and parse("--context-chunks", "0") == 0
    with pytest.raises(UsageError, match="give a number of chunks .* or 'all', got '-1'"):
        parse("--context-chunks", "-1")


def test_serve_numbers_name_their_bounds(capsys):
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert parser.parse_args(["--prefix-cache-mb", "0"]).prefix_cache_mb == 0
    assert parser.parse_args([]).prefix_cache_mb == 512
    for args, message in ((["--prefix-cache-mb", "-1"], "must be at least 0, got -1"),
                          (["--max-batch", "0"], "must be at least 1, got 0"),
                          (["--timeout", "0"], "must be more than 0, got 0"),
                          (["--prefill-chunk", "x"], "'x' is not a whole number"),
                          (["--max-upload-mb", "x"], "'x' is not a number")):
        with pytest.raises(SystemExit):
            parser.parse_args(args)
        assert message in capsys.readouterr().err
