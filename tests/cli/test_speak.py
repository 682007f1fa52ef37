"""``higgs-audio speak`` end to end in a subprocess against the tiny checkpoints: every voice mode, every chunk
method and every output format, with the prompts checked token by token through ``--dump-prompts``."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import soundfile as sf

from higgs_audio.audio import read_audio
from higgs_audio.cache import file_digest
from higgs_audio.cli import main
from higgs_audio.scenes import SCENES
from higgs_audio.text_tokenizer import TextTokenizer
from higgs_audio.voices import BUILTIN_PROFILES

RATE, HOP = 24000, 960


@pytest.fixture(scope="module")
def tok(tiny_original):
    return TextTokenizer(tiny_original)


@pytest.fixture(scope="module")
def encode(tiny_codec):
    """Codes of a clip as an independent encoder in this process sees them."""
    from higgs_audio.codec import AudioCodec

    codec = AudioCodec.from_pretrained(tiny_codec)
    return lambda path: codec.encode(*read_audio(path)).tolist()


def prompts(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def turns(ids, tok):
    """[(role, text of the turn with special tokens)] in prompt order; the last is the generation prompt."""
    start, end = tok.token_id("<|start_header_id|>"), tok.token_id("<|end_header_id|>")
    heads = [i for i, t in enumerate(ids) if t == start]
    out = []
    for n, h in enumerate(heads):
        e = ids.index(end, h)
        out.append((tok.decode(ids[h + 1 : e]), tok.decode(ids[e + 1 : heads[n + 1] if n + 1 < len(heads) else None])))
    return out


def check_file(path, container, subtype=None):
    info = sf.info(str(path))
    assert (info.format, info.samplerate) == (container, RATE) and info.frames > 0
    if subtype:
        assert info.subtype == subtype
    return info


def test_smart_voice_wav(cli, tmp_path, tok):
    out, dump = tmp_path / "smart.wav", tmp_path / "p.jsonl"
    cli.speak("Hello there, this is a smart voice", "-o", out, "--dump-prompts", dump)
    info = check_file(out, "WAV", "PCM_16")
    assert info.frames % HOP == 0
    [p] = prompts(dump)
    assert p["seed"] == 3 and p["audio"] == [] and p["text"] == "Hello there, this is a smart voice."
    assert [r for r, _ in turns(p["ids"], tok)] == ["system", "user", "assistant"]
    system = turns(p["ids"], tok)[0][1]
    assert system == ("\n\nGenerate audio following instruction.\n\n<|scene_desc_start|>\n"
                      f"{SCENES['quiet_indoor']}\n<|scene_desc_end|><|eot_id|>")
    assert p["ids"][-1] == tok.token_id("<|audio_out_bos|>")


def test_clone_from_file_flac(cli, tmp_path, clips, tok, encode):
    out, dump = tmp_path / "clone.flac", tmp_path / "p.jsonl"
    cli.speak("Say it like the reference.", "-o", out, "--voice", clips.a, "--scene", "none", "--dump-prompts", dump)
    check_file(out, "FLAC")
    [p] = prompts(dump)
    t = turns(p["ids"], tok)
    assert [r for r, _ in t] == ["user", "assistant", "user", "assistant"]
    assert t[0][1] == f"\n\n{clips.text_a}<|eot_id|>"  # transcript from the sidecar .txt
    assert t[1][1] == "\n\n<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|><|eot_id|>"
    assert [a["output"] for a in p["audio"]] == [True] and p["audio"][0]["codes"] == encode(clips.a)


def test_a_voice_spoken_again_starts_from_its_keys_and_values_on_disk(cli, tmp_path, clips):
    """The first run keeps the voice's prompt keys and values in the cache folder; the next run with that
    voice reads them (their files count as used again) and speaks exactly as the first did."""
    env = {"HIGGS_AUDIO_CACHE": str(tmp_path / "codes")}  # a cache of this test's own
    first, again = tmp_path / "first.wav", tmp_path / "again.wav"
    cli.speak("Say it like the reference.", "-o", first, "--voice", clips.a, "--scene", "none", env=env)
    files = sorted((tmp_path / "codes" / "prefixes").glob("*/*.safetensors"))
    assert files, "no keys and values were kept"
    used = {f: f.stat().st_mtime_ns for f in files}
    time.sleep(0.05)
    cli.speak("Say it like the reference.", "-o", again, "--voice", clips.a, "--scene", "none", env=env)
    assert all(f.stat().st_mtime_ns > used[f] for f in files)
    assert first.read_bytes() == again.read_bytes()


def test_library_voice_mp3_and_voices_commands(cli, tmp_path, clips, tok, encode, capsys, monkeypatch):
    lib = {"HIGGS_AUDIO_VOICES": str(tmp_path / "lib")}
    added = cli.run("voices", "add", "narrator", clips.a, "--text", "Words of  the narrator.", env=lib)
    assert b"added narrator" in added.stdout
    out, dump = tmp_path / "lib.mp3", tmp_path / "p.jsonl"
    cli.speak("A library voice speaks.", "-o", out, "--voice", "narrator", "--scene", "none", "--dump-prompts", dump,
              env=lib)
    check_file(out, "MP3")
    [p] = prompts(dump)
    assert turns(p["ids"], tok)[0][1] == "\n\nWords of the narrator.<|eot_id|>"
    assert p["audio"][0]["codes"] == encode(tmp_path / "lib" / "narrator.wav")
    digest = file_digest(tmp_path / "lib" / "narrator.wav")
    assert [f for f in cli.cache.iterdir() if f.name.startswith(digest)]  # its codes were cached
    # the other voices commands, through the same entry point in this process
    monkeypatch.setenv("HIGGS_AUDIO_VOICES", lib["HIGGS_AUDIO_VOICES"])
    assert main(["voices", "list"]) == 0
    listing = capsys.readouterr().out
    assert "narrator" in listing and "profile:female_en_story" in listing
    assert main(["voices", "show", "narrator"]) == 0
    shown = capsys.readouterr().out
    assert "transcript: Words of the narrator." in shown and "1.50 s at 22050 Hz" in shown
    assert main(["voices", "remove", "narrator"]) == 0 and capsys.readouterr().out == "removed narrator\n"
    main(["voices", "list"])
    assert "narrator" not in capsys.readouterr().out


def test_profiles_named_and_free_text_ogg(cli, tmp_path, tok):
    out, dump = tmp_path / "profile.ogg", tmp_path / "p.jsonl"
    text = "[SPEAKER0] Good morning.\n[SPEAKER1] Morning to you."
    cli.speak(text, "-o", out, "--voice", "profile:female_en_british", "--voice", 'profile:"a calm, deep voice"',
              "--scene", "none", "--dump-prompts", dump)
    check_file(out, "OGG", "VORBIS")
    [p] = prompts(dump)
    system = turns(p["ids"], tok)[0][1]
    assert f"SPEAKER0: {BUILTIN_PROFILES['female_en_british']}\nSPEAKER1: a calm, deep voice\n" in system
    assert p["audio"] == []


def test_scene_and_sentence_chunks_opus(cli, tmp_path, tok):
    out, dump = tmp_path / "scene.opus", tmp_path / "p.jsonl"
    text = "The sun rose early. Birds began to sing. We walked down to the river."
    cli.speak(text, "-o", out, "--scene", "reading_blog", "--chunk", "sentence", "--chunk-words", "6",
              "--dump-prompts", dump)
    check_file(out, "OGG", "OPUS")
    ps = prompts(dump)
    assert [p["text"] for p in ps] == ["The sun rose early.", "Birds began to sing.", "We walked down to the river."]
    for i, p in enumerate(ps):
        assert SCENES["reading_blog"] in turns(p["ids"], tok)[0][1]
        assert len(p["audio"]) == min(i, 2)  # earlier chunks carried as context (default 2)
    seeds = [p["seed"] for p in ps]
    assert seeds[0] == 3 and len(set(seeds)) == 3


def test_two_speakers_with_references_speaker_chunks_pcm(cli, tmp_path, clips, tok, encode):
    """Every chunk's prompt binds each speaker's transcript turn to that speaker's own clip."""
    out, dump = tmp_path / "dialog.pcm", tmp_path / "p.jsonl"
    text = "[SPEAKER0] I brought the map.\n[SPEAKER1] Then lead the way.\n[SPEAKER0] Follow me, quickly."
    cli.speak(text, "-o", out, "--voice", f"{clips.a},{clips.b}", "--chunk", "speaker", "--context-chunks", "1",
              "--scene", "none", "--dump-prompts", dump)
    raw = out.read_bytes()
    assert raw[:4] not in (b"RIFF", b"fLaC", b"OggS") and len(raw) > 0 and len(raw) % (2 * HOP) == 0
    ps = prompts(dump)
    assert [p["text"] for p in ps] == text.split("\n")
    codes_a, codes_b = encode(clips.a), encode(clips.b)
    for i, p in enumerate(ps):
        t = turns(p["ids"], tok)
        assert t[0] == ("user", f"\n\n[SPEAKER0] {clips.text_a}<|eot_id|>")
        assert t[2] == ("user", f"\n\n[SPEAKER1] {clips.text_b}<|eot_id|>")
        assert t[1][1].count("<|AUDIO_OUT|>") == t[3][1].count("<|AUDIO_OUT|>") == 1
        # placeholders bind in order: the first follows SPEAKER0's turn, the second SPEAKER1's
        assert p["audio"][0]["codes"] == codes_a and p["audio"][1]["codes"] == codes_b
        assert all(a["output"] for a in p["audio"])
        carried = p["audio"][2:]
        assert len(carried) == min(i, 1)
        if carried:
            assert t[4] == ("user", f"\n\n{ps[i - 1]['text']}<|eot_id|>") and len(carried[0]["codes"][0]) > 0
        assert t[-2] == ("user", f"\n\n{p['text']}<|eot_id|>")


def test_refs_in_system_word_chunks_from_file(cli, tmp_path, clips, tok, encode):
    out, dump, source = tmp_path / "sys.wav", tmp_path / "p.jsonl", tmp_path / "text.txt"
    source.write_text("one two three four five six seven\n")
    cli.speak("--file", source, "-o", out, "--voice", f"{clips.a},{clips.bare}", "--refs-in-system",
              "--chunk", "word", "--chunk-words", "4", "--context-chunks", "0", "--dump-prompts", dump)
    check_file(out, "WAV")
    ps = prompts(dump)
    assert [p["text"] for p in ps] == ["one two three four", "five six seven.\n\n"]
    for p in ps:
        t = turns(p["ids"], tok)
        assert [r for r, _ in t] == ["system", "user", "assistant"]  # no transcript turns
        assert "SPEAKER0: <|audio_bos|><|AUDIO|><|audio_eos|>\nSPEAKER1: <|audio_bos|><|AUDIO|><|audio_eos|>" in t[0][1]
        assert [a["output"] for a in p["audio"]] == [False, False]
        assert p["audio"][0]["codes"] == encode(clips.a) and p["audio"][1]["codes"] == encode(clips.bare)


def test_paragraph_chunks_stdin_to_stdout(cli, tmp_path):
    dump = tmp_path / "p.jsonl"
    text = "First paragraph here.\n\nSecond  paragraph follows.\n\nThird one ends it"
    proc = cli.speak("-", "-o", "-", "--chunk", "paragraph", "--chunk-words", "4", "--dump-prompts", dump,
                     stdin=text.encode())
    wave, rate = sf.read(io.BytesIO(proc.stdout))
    assert proc.stdout[:4] == b"RIFF" and rate == RATE and len(wave) > 0 and np.isfinite(wave).all()
    assert [p["text"] for p in prompts(dump)] == ["First paragraph here.", "Second paragraph follows.",
                                                  "Third one ends it."]


def test_long_form_prompts_are_the_references_but_for_the_forced_audio_start(cli, tmp_path, clips, tok, encode):
    """The reference README's long-form command (reading_blog scene, one cloned voice, --chunk_method word,
    --generation_chunk_buffer_size 2) on an en_dl.txt-like transcript: each prompt is the one the reference
    builds (spec §3.2, §7.3-7.6, written out here by hand) plus the <|audio_out_bos|> we force."""
    source, out, dump = tmp_path / "talk.txt", tmp_path / "talk.wav", tmp_path / "p.jsonl"
    source.write_text("Hi, everyone! Welcome back to the Friday show.\nIt’s your host, Sam — and today we’re talking "
                      "about rivers.\n\nSo here’s the question: where does the water go?\nWell, let’s find out.\n\n"
                      "# Where it starts\nWe’ll begin at the source\n", encoding="utf-8")
    cli.speak("--file", source, "-o", out, "--voice", clips.a, "--scene", "reading_blog", "--chunk", "word",
              "--chunk-words", "9", "--context-chunks", "2", "--dump-prompts", dump)
    chunks = [  # the reference's normalised text cut every 9 space-separated words, '\n\n' after the last
        "Hi, everyone! Welcome back to the Friday show.\nIt's your",
        "host, Sam - and today we're talking about rivers.\nSo",
        "here's the question: where does the water go?\nWell, let's",
        "find out.\n# Where it starts\nWe'll begin at the source.\n\n",
    ]
    ps = prompts(dump)
    assert [p["text"] for p in ps] == chunks
    start, end = tok.token_id("<|start_header_id|>"), tok.token_id("<|end_header_id|>")
    eot = tok.token_id("<|eot_id|>")
    out_block = [tok.token_id(t) for t in ("<|audio_out_bos|>", "<|AUDIO_OUT|>", "<|audio_eos|>")]

    def turn(role, ids):
        return [start, *tok.encode(role), end, *tok.encode("\n\n"), *ids, eot]

    system = [*tok.encode("Generate audio following instruction.\n\n"), tok.token_id("<|scene_desc_start|>"),
              *tok.encode(f"\n{SCENES['reading_blog']}\n"), tok.token_id("<|scene_desc_end|>")]
    context = [tok.token_id("<|begin_of_text|>"), *turn("system", system), *turn("user", tok.encode(clips.text_a)),
               *turn("assistant", out_block)]
    for i, p in enumerate(ps):
        history = [t for c in chunks[max(0, i - 2) : i]
                   for t in turn("user", tok.encode(c)) + turn("assistant", out_block)]
        reference = [*context, *history, *turn("user", tok.encode(chunks[i])), start, *tok.encode("assistant"), end,
                     *tok.encode("\n\n")]
        assert p["ids"] == reference + [tok.token_id("<|audio_out_bos|>")]
        assert len(p["audio"]) == 1 + min(i, 2) and p["audio"][0]["codes"] == encode(clips.a)
