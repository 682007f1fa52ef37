"""Prompts equal to the reference's (examples/generation.py), token for token. The expected ids are written out
literally: the reference's prompt built by hand from spec §3.2 and §7, tokenised with the real Llama-3 tokenizer
(tests/helpers) once, outside the code under test."""

import pytest
import torch

from higgs_audio.longform import generate_longform
from higgs_audio.prompt import build_messages, build_prompt
from higgs_audio.scenes import SCENES
from higgs_audio.text_tokenizer import TextTokenizer
from higgs_audio.voices import BUILTIN_PROFILES, VoiceRef
from tests.helpers.text_tokenizer import write_text_tokenizer

BOT, SH, EH, NN, EOT = 128000, 128006, 128007, 271, 128009
SYSTEM, USER, ASSISTANT = 9125, 882, 78191
AUDIO_EOS, AUDIO_OUT_BOS, AUDIO_OUT = 128012, 128013, 128016
SCENE_START, SCENE_END = 128018, 128019
OUT_BLOCK = [AUDIO_OUT_BOS, AUDIO_OUT, AUDIO_EOS]
GEN = [SH, ASSISTANT, EH, NN]
SMART_SYSTEM = [BOT, SH, SYSTEM, EH, NN, 32215, 7855, 2768, 7754, 13, EOT]  # "Generate audio following instruction."
INSTRUCTION_NN = [32215, 7855, 2768, 7754, 382]  # "Generate audio following instruction.\n\n"
QUIET_SYSTEM = [BOT, SH, SYSTEM, EH, NN, *INSTRUCTION_NN, SCENE_START,
                198, 15097, 374, 12715, 505, 264, 11594, 3130, 627, SCENE_END, EOT]  # "\n{quiet_indoor}\n"
FAST = dict(temperature=1.0, max_new_tokens=14, seed=1)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    write_text_tokenizer(directory)
    return TextTokenizer(directory)


def user(ids):
    return [SH, USER, EH, NN, *ids, EOT]


def longform_prompts(api, text, **options):
    seen = []
    generate_longform(api, text, on_prompt=lambda *a: seen.append(a), **{**FAST, **options})
    return [(chunk, prompt) for _, chunk, _, prompt in seen]


def test_builtin_scene_and_profile_texts_are_the_references_byte_for_byte():
    assert SCENES == {
        "quiet_indoor": "Audio is recorded from a quiet room.",
        "reading_blog": "In this audio, the person is reading a blog post aloud. The content is informative and "
        "engaging, with the speaker using a clear, conversational tone to make the material feel more approachable. "
        "The pacing is moderate, allowing listeners to absorb the information, and the tone shifts slightly to "
        "emphasize key points. The speaker occasionally pauses for effect, ensuring each section flows smoothly, as "
        "they guide the listener through the post's main ideas.",
    }
    assert BUILTIN_PROFILES == {
        "male_en": "Male, American accent, modern speaking rate, moderate-pitch, friendly tone, and very clear audio.",
        "female_en_story": "She speaks with a calm, gentle, and informative tone at a measured pace, with excellent "
        "articulation and very clear audio. She naturally brings storytelling to life with an articulate, genuine, "
        "and personable vocal style.",
        "male_en_british": "He speaks with a clear British accent and a conversational, inquisitive tone. His "
        "delivery is articulate and at a moderate pace, and very clear audio.",
        "female_en_british": "A female voice with a clear British accent speaking at a modern rate with a "
        "moderate-pitch in an expressive and friendly tone and very clear audio.",
    }


def test_blog_scene_prompt(tok):
    prompt = build_prompt(build_messages("Hi.", scene=SCENES["reading_blog"]), tok, force_audio=True)
    blog = [  # "\n" + the reading_blog scene + "\n"
        198, 644, 420, 7855, 11, 279, 1732, 374, 5403, 264, 5117, 1772, 71511, 13, 578, 2262, 374, 39319, 323,
        23387, 11, 449, 279, 19114, 1701, 264, 2867, 11, 7669, 1697, 16630, 311, 1304, 279, 3769, 2733, 810, 5603,
        481, 13, 578, 83240, 374, 24070, 11, 10923, 24475, 311, 35406, 279, 2038, 11, 323, 279, 16630, 29735, 10284,
        311, 47032, 1401, 3585, 13, 578, 19114, 23781, 86932, 369, 2515, 11, 23391, 1855, 3857, 28555, 39511, 11,
        439, 814, 8641, 279, 11700, 1555, 279, 1772, 596, 1925, 6848, 627,
    ]  # fmt: skip
    assert prompt.ids == [BOT, SH, SYSTEM, EH, NN, *INSTRUCTION_NN, SCENE_START, *blog, SCENE_END, EOT,
                          *user([13347, 13]), *GEN, AUDIO_OUT_BOS]


def test_paragraphs_are_joined_by_one_newline_without_a_stop_added(tiny_api):
    """Blank lines are dropped before anything else: '.\\n' (627) between paragraphs, never '.\\n\\n' (382),
    and a paragraph without final punctuation gains no '.'."""
    text = "First paragraph ends here.\n\nThe second one has no stop\n\n\nThe third one does."
    # "First paragraph ends here.\nThe second one has no stop\nThe third one does."
    spoken = [5451, 14646, 10548, 1618, 627, 791, 2132, 832, 706, 912, 3009, 198, 791, 4948, 832, 1587, 13]
    expected = [*QUIET_SYSTEM, *user(spoken), *GEN, AUDIO_OUT_BOS]
    [(_, prompt)] = longform_prompts(tiny_api, text, scene=SCENES["quiet_indoor"])
    assert prompt.ids == expected
    assert tiny_api.request(text, scene=SCENES["quiet_indoor"]).ids == expected


def test_word_chunks_have_the_reference_edges(tiny_api):
    """The reference splits its normalised text (one paragraph now) on spaces: 2 chunks here, not one or more
    per paragraph; the last ends with '\\n\\n'."""
    text = "One two three four five.\n\nSix seven\n\nEight nine ten."
    seen = longform_prompts(tiny_api, text, chunk_method="word", max_words=4, context_chunks=0)
    assert [chunk for chunk, _ in seen] == ["One two three four", "five.\nSix seven\nEight nine ten.\n\n"]
    assert [prompt.ids for _, prompt in seen] == [
        [*SMART_SYSTEM, *user([4054, 1403, 2380, 3116]), *GEN, AUDIO_OUT_BOS],
        [*SMART_SYSTEM, *user([53770, 627, 42560, 8254, 198, 60185, 11888, 5899, 382]), *GEN, AUDIO_OUT_BOS],
    ]


def test_full_width_speaker_tags_are_not_speaker_tags(tiny_api):
    """Tags are read before normalisation, as the reference: 【SPEAKER0】 gets the single-speaker system prompt
    (and becomes [SPEAKER0] in the spoken text)."""
    text = "【SPEAKER0】你好。\n【SPEAKER1】再见。"
    spoken = [43574, 1777, 77587, 15, 60, 57668, 53901, 627, 43574, 1777, 77587, 16, 60, 88356, 90070, 13]
    expected = [*SMART_SYSTEM, *user(spoken), *GEN, AUDIO_OUT_BOS]
    [(chunk, prompt)] = longform_prompts(tiny_api, text)
    assert chunk == "[SPEAKER0]你好.\n[SPEAKER1]再见." and prompt.ids == expected
    assert tiny_api.request(text).ids == expected


def test_one_voice_with_a_two_speaker_transcript(tok):
    """One clip given without a speaker: the reference's single-voice clone context (no tag, no speaker lines).
    Bound to SPEAKER0 by name: the per-speaker form, and SPEAKER1 described as the smart voice does."""
    codes = torch.zeros(8, 3, dtype=torch.long)
    dialogue = [43574, 1777, 77587, 15, 60, 21694, 627, 43574, 1777, 77587, 16, 60, 44188, 13]
    text = "[SPEAKER0] Hi.\n[SPEAKER1] Yo."
    single = [BOT, *user([4032, 4339, 13]), SH, ASSISTANT, EH, NN, *OUT_BLOCK, EOT, *user(dialogue), *GEN]
    for voices in (VoiceRef(codes, "Ref words."), [VoiceRef(codes, "Ref words.")]):
        assert build_prompt(build_messages(text, voices=voices), tok).ids == single
    bound = build_prompt(build_messages(text, voices={"SPEAKER0": VoiceRef(codes, "Ref words.")}), tok)
    assert bound.ids == [
        BOT, SH, SYSTEM, EH, NN, *INSTRUCTION_NN, SCENE_START, 198, 50, 1777, 77587, 16, 25, 61165, 198, SCENE_END,
        EOT,  # "\nSPEAKER1: masculine\n"
        *user([43574, 1777, 77587, 15, 60, 8718, 4339, 13]),  # "[SPEAKER0] Ref words."
        SH, ASSISTANT, EH, NN, *OUT_BLOCK, EOT, *user(dialogue), *GEN,
    ]  # fmt: skip


def test_a_chunk_without_audio_stays_in_the_context(tiny_api, monkeypatch):
    """As the reference: the empty chunk's text and an empty audio turn (bos/eos only) stay in later prompts."""
    real, calls = tiny_api.generate_batch, []

    def second_chunk_silent(requests, **kwargs):
        [result] = real(requests, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            result.codes, result.warnings = result.codes[:, :0], ["no audio generated"]
        return [result]

    monkeypatch.setattr(tiny_api, "generate_batch", second_chunk_silent)
    text = "The first sentence is here. A second one follows it. The third closes the text."
    seen = []
    result = generate_longform(tiny_api, text, chunk_method="sentence", max_words=6,
                               on_prompt=lambda *a: seen.append(a[1:]), **FAST)
    first = [791, 1176, 11914, 374, 1618, 13]  # "The first sentence is here."
    second = [32, 2132, 832, 11263, 433, 13]  # "A second one follows it."
    third = [791, 4948, 34350, 279, 1495, 13]  # "The third closes the text."
    assert [len(prompt.audio) for *_, prompt in seen] == [0, 1, 2]
    assert seen[2][2].ids == [
        *SMART_SYSTEM, *user(first), SH, ASSISTANT, EH, NN, *OUT_BLOCK, EOT,
        *user(second), SH, ASSISTANT, EH, NN, *OUT_BLOCK, EOT, *user(third), *GEN, AUDIO_OUT_BOS,
    ]  # fmt: skip
    assert seen[2][2].audio[0].codes.shape[1] > 0 and seen[2][2].audio[1].codes.shape == (8, 0)
    assert "chunk 2/3: no audio generated" in result.warnings
    assert len(result.audio) == result.codes.shape[1] * 960 > 0
