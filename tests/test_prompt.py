"""Prompt ids against the spec's examples. Special-token ids are written out from spec §3.2/§3.3b; only
plain text between special tokens is tokenised here (never by the code under test)."""

import pytest
import torch

from higgs_audio.messages import AudioContent, Message, MessageError, TextContent
from higgs_audio.prompt import (
    PromptAudio,
    build_context,
    build_messages,
    build_prompt,
)
from higgs_audio.text_tokenizer import TextTokenizer
from higgs_audio.voices import VoiceProfile, VoiceRef
from tests.helpers.text_tokenizer import write_text_tokenizer

BOT, SH, EH, NN = 128000, 128006, 128007, 271
EOM, EOT = 128008, 128009
SYSTEM, USER, ASSISTANT = 9125, 882, 78191
AUDIO_BOS, AUDIO_EOS, AUDIO_OUT_BOS, AUDIO_IN, AUDIO_OUT = 128011, 128012, 128013, 128015, 128016
RECIPIENT, SCENE_START, SCENE_END = 128017, 128018, 128019

QUIET = "Audio is recorded from a quiet room."
MULTISPEAKER = (
    "You are an AI assistant designed to convert text into speech.\n"
    "If the user's message includes a [SPEAKER*] tag, do not read out the tag and generate speech for the "
    "following text, using the specified voice.\n"
    "If no speaker tag is present, select a suitable voice on your own."
)
IN_BLOCK = [AUDIO_BOS, AUDIO_IN, AUDIO_EOS]
OUT_BLOCK = [AUDIO_OUT_BOS, AUDIO_OUT, AUDIO_EOS]
GEN = [SH, ASSISTANT, EH, NN]


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    write_text_tokenizer(directory)
    return TextTokenizer(directory)


@pytest.fixture(scope="session")
def enc(tok):
    return tok.encode


def codes(value, frames=3):
    return torch.full((8, frames), value, dtype=torch.long)


def first(role):
    return [BOT, SH, role, EH, NN]


def head(role):
    return [SH, role, EH, NN]


def assert_audio(prompt, expected):
    assert [(a.codes.data_ptr(), a.is_output) for a in prompt.audio] == [
        (c.data_ptr(), out) for c, out in expected
    ]


def test_role_and_newline_ids_of_the_tokenizer(enc):
    assert enc("system") == [SYSTEM] and enc("user") == [USER] and enc("assistant") == [ASSISTANT]
    assert enc("\n\n") == [NN]


def test_voice_clone_without_system_message_spec_3_6(tok, enc):
    ref = codes(1)
    msgs = build_messages("Target words.", voices=VoiceRef(ref, "Reference words."))
    prompt = build_prompt(msgs, tok)
    expected = (
        first(USER) + enc("Reference words.") + [EOT]
        + head(ASSISTANT) + OUT_BLOCK + [EOT]
        + head(USER) + enc("Target words.") + [EOT]
        + GEN
    )  # fmt: skip
    assert prompt.ids == expected
    assert_audio(prompt, [(ref, True)])


def test_smart_voice_default_system_with_scene(tok, enc):
    prompt = build_prompt(build_messages("Hello.", scene=QUIET), tok, force_audio=True)
    expected = (
        first(SYSTEM) + enc("Generate audio following instruction.\n\n") + [SCENE_START]
        + enc(f"\n{QUIET}\n") + [SCENE_END, EOT]
        + head(USER) + enc("Hello.") + [EOT]
        + GEN + [AUDIO_OUT_BOS]
    )  # fmt: skip
    assert prompt.ids == expected and prompt.audio == []


def test_smart_voice_without_scene(tok, enc):
    prompt = build_prompt(build_messages("Hello."), tok)
    assert prompt.ids == first(SYSTEM) + enc("Generate audio following instruction.") + [EOT] + head(USER) + enc(
        "Hello."
    ) + [EOT] + GEN


def test_voice_clone_with_scene_spec_7_4(tok, enc):
    ref = codes(2)
    prompt = build_prompt(build_messages("Target.", voices=[VoiceRef(ref, "Ref.")], scene=QUIET), tok)
    expected = (
        first(SYSTEM) + enc("Generate audio following instruction.\n\n") + [SCENE_START]
        + enc(f"\n{QUIET}\n") + [SCENE_END, EOT]
        + head(USER) + enc("Ref.") + [EOT]
        + head(ASSISTANT) + OUT_BLOCK + [EOT]
        + head(USER) + enc("Target.") + [EOT]
        + GEN
    )  # fmt: skip
    assert prompt.ids == expected
    assert_audio(prompt, [(ref, True)])


def test_two_speakers_with_references_in_turns(tok, enc):
    a, b = codes(3), codes(4, frames=5)
    text = "[SPEAKER0] Hi.\n[SPEAKER1] Hello."
    prompt = build_prompt(build_messages(text, voices=[VoiceRef(a, "I am A."), VoiceRef(b, "I am B.")]), tok)
    expected = (
        first(USER) + enc("[SPEAKER0] I am A.") + [EOT]
        + head(ASSISTANT) + OUT_BLOCK + [EOT]
        + head(USER) + enc("[SPEAKER1] I am B.") + [EOT]
        + head(ASSISTANT) + OUT_BLOCK + [EOT]
        + head(USER) + enc(text) + [EOT]
        + GEN
    )  # fmt: skip
    assert prompt.ids == expected
    assert_audio(prompt, [(a, True), (b, True)])


def test_references_in_the_system_message_spec_3_5_b(tok, enc):
    a, b = codes(5), codes(6)
    msgs = build_messages(
        "[SPEAKER0] Hi.\n[SPEAKER1] Yo.", voices=[VoiceRef(a), VoiceRef(b)], scene=QUIET, refs_in_system=True
    )
    prompt = build_prompt(msgs, tok)
    expected = (
        first(SYSTEM) + enc("Generate audio following instruction.\n\n") + [SCENE_START]
        + enc(f"\n{QUIET}\n\nSPEAKER0: ") + IN_BLOCK
        + enc("\nSPEAKER1: ") + IN_BLOCK
        + enc("\n") + [SCENE_END, EOT]
        + head(USER) + enc("[SPEAKER0] Hi.\n[SPEAKER1] Yo.") + [EOT]
        + GEN
    )  # fmt: skip
    assert prompt.ids == expected
    assert_audio(prompt, [(a, False), (b, False)])


def test_profile_descriptions_force_the_system_layout(tok, enc):
    b = codes(7)
    msgs = build_messages(
        "[SPEAKER0] Hi.\n[SPEAKER1] Yo.", voices=[VoiceProfile("female, British accent"), VoiceRef(b, "unused")]
    )
    prompt = build_prompt(msgs, tok)
    expected = (
        first(SYSTEM) + enc("Generate audio following instruction.\n\n") + [SCENE_START]
        + enc("\nSPEAKER0: female, British accent\nSPEAKER1: ") + IN_BLOCK
        + enc("\n") + [SCENE_END, EOT]
        + head(USER) + enc("[SPEAKER0] Hi.\n[SPEAKER1] Yo.") + [EOT]
        + GEN
    )  # fmt: skip
    assert prompt.ids == expected
    assert_audio(prompt, [(b, False)])


def test_single_profile_voice(tok, enc):
    prompt = build_prompt(build_messages("Hi.", voices=VoiceProfile("a deep male voice"), scene=QUIET), tok)
    expected = (
        first(SYSTEM) + enc("Generate audio following instruction.\n\n") + [SCENE_START]
        + enc(f"\n{QUIET}\n\nSPEAKER0: a deep male voice\n") + [SCENE_END, EOT]
        + head(USER) + enc("Hi.") + [EOT] + GEN
    )  # fmt: skip
    assert prompt.ids == expected


def test_multi_speaker_without_references_spec_7_4(tok, enc):
    text = "[SPEAKER1] Yo.\n[SPEAKER0] Hi."
    prompt = build_prompt(build_messages(text, scene=QUIET), tok)
    expected = (
        first(SYSTEM) + enc(MULTISPEAKER + "\n\n") + [SCENE_START]
        + enc(f"\n{QUIET}\n\nSPEAKER0: feminine\nSPEAKER1: masculine\n") + [SCENE_END, EOT]
        + head(USER) + enc(text) + [EOT] + GEN
    )  # fmt: skip
    assert prompt.ids == expected


def test_multi_speaker_lines_follow_numeric_tag_order(tok, enc):
    text = "[SPEAKER10] a [SPEAKER2] b [SPEAKER1] c"
    prompt = build_prompt(build_messages(text), tok)
    lines = "SPEAKER1: feminine\nSPEAKER2: masculine\nSPEAKER10: feminine"
    expected = (
        first(SYSTEM) + enc(MULTISPEAKER + "\n\n") + [SCENE_START] + enc(f"\n{lines}\n") + [SCENE_END, EOT]
        + head(USER) + enc(text) + [EOT] + GEN
    )  # fmt: skip
    assert prompt.ids == expected


def test_custom_system_prompt_replaces_the_default_and_keeps_the_scene(tok, enc):
    system = "You are a simultaneous interpreter: speak an English translation of what the user says."
    prompt = build_prompt(build_messages("你好.", system=system, scene=QUIET), tok)
    expected = (
        first(SYSTEM) + enc(system + "\n\n") + [SCENE_START] + enc(f"\n{QUIET}\n") + [SCENE_END, EOT]
        + head(USER) + enc("你好.") + [EOT] + GEN
    )  # fmt: skip
    assert prompt.ids == expected
    plain = build_prompt(build_messages("你好.", system=system), tok)
    assert plain.ids == first(SYSTEM) + enc(system) + [EOT] + head(USER) + enc("你好.") + [EOT] + GEN


def test_custom_system_prompt_with_a_cloned_voice(tok, enc):
    ref = codes(8)
    prompt = build_prompt(build_messages("Go.", voices=VoiceRef(ref, "Ref."), system="Be calm."), tok)
    expected = (
        first(SYSTEM) + enc("Be calm.") + [EOT]
        + head(USER) + enc("Ref.") + [EOT] + head(ASSISTANT) + OUT_BLOCK + [EOT]
        + head(USER) + enc("Go.") + [EOT] + GEN
    )  # fmt: skip
    assert prompt.ids == expected


def test_speaker_without_a_voice_gets_the_default_line(tok, enc):
    a = codes(9)
    text = "[SPEAKER0] Hi.\n[SPEAKER1] Yo."
    prompt = build_prompt(build_messages(text, voices={"SPEAKER0": VoiceRef(a, "Ref.")}), tok)
    expected = (
        first(SYSTEM) + enc("Generate audio following instruction.\n\n") + [SCENE_START]
        + enc("\nSPEAKER1: masculine\n") + [SCENE_END, EOT]
        + head(USER) + enc("[SPEAKER0] Ref.") + [EOT] + head(ASSISTANT) + OUT_BLOCK + [EOT]
        + head(USER) + enc(text) + [EOT] + GEN
    )  # fmt: skip
    assert prompt.ids == expected


# ---------------------------------------------------------------- the template itself


def test_consecutive_assistant_turns_use_eom_and_recipient(tok, enc):
    x, y = codes(10), codes(11)
    msgs = [
        Message("user", "Q"),
        Message("assistant", "Let me think.", recipient="planner"),
        Message("assistant", AudioContent(codes=x)),
        Message("user", ["Listen:", AudioContent(codes=y)]),
    ]
    prompt = build_prompt(msgs, tok, add_generation_prompt=False)
    expected = (
        first(USER) + enc("Q") + [EOT]
        + head(ASSISTANT) + enc("planner") + [RECIPIENT] + enc("Let me think.") + [EOM]
        + head(ASSISTANT) + OUT_BLOCK + [EOT]
        + head(USER) + enc("Listen:") + IN_BLOCK + [EOT]
    )  # fmt: skip
    assert prompt.ids == expected
    assert_audio(prompt, [(x, True), (y, False)])


def test_user_and_system_audio_is_kept_in_placeholder_order(tok):
    s, u, a = codes(12), codes(13), codes(14)
    msgs = [
        Message("system", ["voice: ", AudioContent(codes=s)]),
        Message("user", AudioContent(codes=u)),
        Message("assistant", AudioContent(codes=a)),
        Message("user", "Now you."),
    ]
    prompt = build_prompt(msgs, tok)
    placeholders = [i for i in prompt.ids if i in (AUDIO_IN, AUDIO_OUT)]
    assert placeholders == [AUDIO_IN, AUDIO_IN, AUDIO_OUT]
    assert_audio(prompt, [(s, False), (u, False), (a, True)])
    assert isinstance(prompt.audio[0], PromptAudio)


def test_dict_messages_and_text_contents(tok, enc):
    prompt = build_prompt(
        [{"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]}], tok
    )
    assert prompt.ids == first(USER) + enc("A") + enc("B") + [EOT] + GEN


def test_special_tokens_in_text_stay_single_ids(tok, enc):
    prompt = build_prompt([Message("user", TextContent("Ha <SE>[Laughter]</SE> ok"))], tok)
    assert prompt.ids == first(USER) + enc("Ha ") + [128022] + enc("[Laughter]") + [128023] + enc(" ok") + [EOT] + GEN


def test_audio_without_codes_is_an_error_not_a_misbinding(tok):
    msgs = [Message("user", AudioContent(audio_url="ref.wav")), Message("assistant", AudioContent(codes=codes(1)))]
    with pytest.raises(MessageError, match=r"messages\[0\] \(user\) content\[0\]: audio has no codes.*audio_url"):
        build_prompt(msgs, tok)
    with pytest.raises(MessageError, match="no audio source"):
        build_prompt([Message("assistant", AudioContent(audio_url=""))], tok)


def test_placeholder_typed_into_text_is_rejected(tok):
    with pytest.raises(MessageError, match="placeholder"):
        build_prompt([Message("user", "sneaky <|AUDIO_OUT|>")], tok)


def test_turn_layout_needs_transcripts():
    with pytest.raises(MessageError, match="SPEAKER1 has no transcript"):
        build_context(voices=[VoiceRef(codes(1), "ok"), VoiceRef(codes(2))])
    build_context(voices=[VoiceRef(codes(1), "ok"), VoiceRef(codes(2))], refs_in_system=True)


def test_bad_voices():
    with pytest.raises(MessageError, match="not a speaker tag"):
        build_context(voices={"alice": VoiceProfile("x")})
    with pytest.raises(MessageError, match="must be a VoiceRef or VoiceProfile"):
        build_context(voices=["belinda"])
    with pytest.raises(MessageError, match="is not like 'SPEAKER0'"):
        build_context(speaker_tags=["[SPEAKER0]"])


def test_build_messages_ends_with_the_user_text_and_context_is_reusable():
    context = build_context(voices=VoiceRef(codes(1), "Ref."), speaker_tags=["SPEAKER0"])
    msgs = build_messages("Next chunk.", voices=VoiceRef(codes(1), "Ref."))
    assert [m.role for m in context] == ["user", "assistant"]
    assert [m.role for m in msgs] == ["user", "assistant", "user"] and msgs[-1].content == "Next chunk."
