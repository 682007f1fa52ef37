import pytest

from higgs_audio.text import count_words, normalize_transcript, normalized_paragraphs, speaker_tags, split_chunks

# ---------------------------------------------------------------- normalisation


def test_chinese_punctuation_becomes_ascii():
    assert normalize_transcript("你好，世界。") == "你好, 世界."
    assert normalize_transcript("问：真的吗？是的！好；") == "问:真的吗?是的!好;"
    assert normalize_transcript("“引号”‘单’「角」『双』") == "\"引号\"'单'\"角\"\"双\""
    assert normalize_transcript("【注】《书》、一—二…三·四") == "[注]<书>,一-二...三.四."


def test_parentheses_and_temperatures():
    assert normalize_transcript("It is (very) hot: 40°C or 104°F.") == (
        "It is very hot: 40 degrees Celsius or 104 degrees Fahrenheit."
    )
    # Full-width parentheses become ASCII first, then spaces.
    assert normalize_transcript("甲（乙）丙") == "甲 乙 丙."


@pytest.mark.parametrize(
    "tag, marker",
    [
        ("[laugh]", "<SE>[Laughter]</SE>"),
        ("[humming start]", "<SE_s>[Humming]</SE_s>"),
        ("[humming end]", "<SE_e>[Humming]</SE_e>"),
        ("[music start]", "<SE_s>[Music]</SE_s>"),
        ("[music end]", "<SE_e>[Music]</SE_e>"),
        ("[music]", "<SE>[Music]</SE>"),
        ("[sing start]", "<SE_s>[Singing]</SE_s>"),
        ("[sing end]", "<SE_e>[Singing]</SE_e>"),
        ("[applause]", "<SE>[Applause]</SE>"),
        ("[cheering]", "<SE>[Cheering]</SE>"),
        ("[cough]", "<SE>[Cough]</SE>"),
    ],
)
def test_sound_effect_tags(tag, marker):
    assert normalize_transcript(f"Well {tag} ok.") == f"Well {marker} ok."


def test_whitespace_blank_lines_and_final_period():
    text = "  [SPEAKER0]   Hello   there  \n\n\n   [SPEAKER1] Hi\t you  \n  "
    assert normalize_transcript(text) == "[SPEAKER0] Hello there\n[SPEAKER1] Hi you."


@pytest.mark.parametrize("ending", [".", "!", "?", ",", ";", '"', "'", "[laugh]", "[music end]"])
def test_no_period_after_an_accepted_ending(ending):
    out = normalize_transcript(f"Done {ending}")
    assert not out.endswith(("..", "!.", "?.", ",.", ";.", '".', "'.", ">."))


def test_period_appended_otherwise():
    assert normalize_transcript("No ending") == "No ending."
    assert normalize_transcript("Humming [humming start]") == "Humming <SE_s>[Humming]</SE_s>."
    assert normalize_transcript("") == ""


# ---------------------------------------------------------------- speaker tags


def test_speaker_tags_sorted_numerically_and_unique():
    text = "[SPEAKER10] a\n[SPEAKER2] b\n[SPEAKER0] c\n[SPEAKER2] d [SPEAKER1]"
    assert speaker_tags(text) == ["SPEAKER0", "SPEAKER1", "SPEAKER2", "SPEAKER10"]


def test_speaker_tags_ignore_other_brackets():
    assert speaker_tags("[laugh] [SPEAKER] [speaker1] SPEAKER3") == []


# ---------------------------------------------------------------- chunking

DIALOGUE = (
    "[SPEAKER0] Hello there.\nHow are you?\n[SPEAKER1] Fine.\n<|speaker_id_start|>SPEAKER0<|speaker_id_end|> Good."
)


def test_no_chunking_returns_the_text():
    assert split_chunks("a b c", None) == ["a b c"]


def test_speaker_chunks_one_turn_each():
    assert split_chunks(DIALOGUE, "speaker") == [
        "[SPEAKER0] Hello there.\nHow are you?",
        "[SPEAKER1] Fine.",
        "<|speaker_id_start|>SPEAKER0<|speaker_id_end|> Good.",
    ]


def test_speaker_chunks_grouped_by_max_turns():
    assert split_chunks(DIALOGUE, "speaker", max_turns=2) == [
        "[SPEAKER0] Hello there.\nHow are you?\n[SPEAKER1] Fine.",
        "<|speaker_id_start|>SPEAKER0<|speaker_id_end|> Good.",
    ]


def test_word_chunks_follow_the_reference():
    text = "one two three four five\n\nsix seven"
    assert split_chunks(text, "word", max_words=2) == ["one two", "three four", "five\n\n", "six seven\n\n"]


def test_word_chunks_for_cjk_count_characters():
    text = "今天天气很好.我们去公园吧."
    assert split_chunks(text, "word", max_words=5) == ["今天天气很", "好.我们去公", "园吧.\n\n"]


def test_sentence_chunks_pack_whole_sentences():
    text = "Hello there. Mr. Smith went to Washington! Did he? Yes.\n\nPi is 3.14 exactly."
    assert split_chunks(text, "sentence", max_words=6) == [
        "Hello there.",
        "Mr. Smith went to Washington!",
        "Did he? Yes.",
        "Pi is 3.14 exactly.",
    ]
    assert split_chunks(text, "sentence", max_words=8) == [
        "Hello there. Mr. Smith went to Washington!",
        "Did he? Yes.\n\nPi is 3.14 exactly.",
    ]


def test_sentence_chunks_split_cjk_sentences_without_spaces():
    assert split_chunks("你好.今天天气很好!我们去公园吧.", "sentence", max_words=6) == [
        "你好.",
        "今天天气很好!",
        "我们去公园吧.",
    ]


def test_a_sentence_longer_than_the_limit_is_split_by_words():
    text = "a b c d e f g. h i."
    assert split_chunks(text, "sentence", max_words=3) == ["a b c", "d e f", "g.", "h i."]


def test_paragraph_chunks_keep_paragraphs_whole_when_they_fit():
    text = "First one here.\n\nSecond one. Still second.\n\nThird."
    assert split_chunks(text, "paragraph", max_words=7) == [
        "First one here.\n\nSecond one. Still second.",
        "Third.",
    ]


def test_an_oversize_paragraph_is_chunked_on_its_own_by_sentences():
    text = "Short.\n\nOne two three. Four five six. Seven.\n\nTail."
    assert split_chunks(text, "paragraph", max_words=4) == [
        "Short.",
        "One two three.",
        "Four five six. Seven.",
        "Tail.",
    ]


def test_chunks_cover_all_words():
    text = "Alpha beta. Gamma delta epsilon! Zeta?\n\nEta theta iota. Kappa."
    for method in ("word", "sentence", "paragraph"):
        chunks = split_chunks(text, method, max_words=3)
        assert " ".join(chunks).split() == text.split(), method


BOOK = "# Title line\n\nFirst  paragraph, (one) line.\nIts second line\n\n\n  Another paragraph here. It ends"


def test_normalisation_drops_blank_lines_first():
    """Spec §7.3 step 5: paragraphs joined by one newline, no '.' added inside, one at the very end."""
    normal = "# Title line\nFirst paragraph, one line.\nIts second line\nAnother paragraph here. It ends."
    assert normalize_transcript(BOOK) == normal
    assert normalized_paragraphs(BOOK) == ["# Title line", "First paragraph, one line.\nIts second line",
                                           "Another paragraph here. It ends."]
    assert "\n".join(normalized_paragraphs(BOOK)) == normal and normalized_paragraphs(" \n\n") == []


def test_normalised_word_chunks_follow_the_reference_over_paragraphs():
    # the reference's paragraph split on "\n\n" finds none after normalisation: words run across the breaks
    assert split_chunks(BOOK, "word", max_words=5, normalize=True) == [
        "# Title line\nFirst paragraph, one",
        "line.\nIts second line\nAnother paragraph here.",
        "It ends.\n\n",
    ]
    assert split_chunks(BOOK, "speaker", normalize=True) == [normalize_transcript(BOOK)]
    assert split_chunks(BOOK, None, normalize=True) == [normalize_transcript(BOOK)]


def test_normalised_paragraph_and_sentence_chunks_cut_at_paragraphs_only():
    """Our extensions use the blank lines of the text for edges; the text inside is the reference's."""
    assert split_chunks(BOOK, "paragraph", max_words=9, normalize=True) == [
        "# Title line\nFirst paragraph, one line.\nIts second line",
        "Another paragraph here. It ends.",
    ]
    assert split_chunks(BOOK, "sentence", max_words=4, normalize=True) == [
        "# Title line",
        "First paragraph, one line.",
        "Its second line",
        "Another paragraph here.",
        "It ends.",
    ]


def test_word_chunks_decide_cjk_for_the_whole_text():
    """Deliberate difference: mostly-CJK text is chunked by characters (the reference: jieba words); a CJK
    name inside English text does not make it CJK."""
    assert split_chunks("我们去公园吧,好吗?\n\n走吧.", "word", max_words=4, normalize=True) == [
        "我们去公", "园吧,好吗?", "走吧.\n\n",
    ]
    assert split_chunks("We met 王 at noon today", "word", max_words=3) == ["We met 王", "at noon today\n\n"]


def test_count_words():
    assert count_words("Hello, world - again!") == 3
    assert count_words("你好, world.") == 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown chunk method"):
        split_chunks("x", "line")
    with pytest.raises(ValueError):
        split_chunks("x", "word", max_words=0)
