"""Transcript text: normalisation, speaker tags and chunking for long-form generation (spec §7.3, §7.5)."""

from __future__ import annotations

import re

# Chinese (full-width) punctuation -> ASCII, as the reference's generation.py maps it.
_PUNCTUATION = {
    "，": ", ",
    "。": ".",
    "：": ":",
    "；": ";",
    "？": "?",
    "！": "!",
    "（": "(",
    "）": ")",
    "【": "[",
    "】": "]",
    "《": "<",
    "》": ">",
    "“": '"',
    "”": '"',
    "‘": "'",
    "’": "'",
    "、": ",",
    "—": "-",
    "…": "...",
    "·": ".",
    "「": '"',
    "」": '"',
    "『": '"',
    "』": '"',
}

# Sound-effect tags -> the checkpoint's <SE*> special tokens (spec §7.3 step 4), applied in this order.
_SOUND_EFFECTS = (
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
)

_FINAL_ENDINGS = (".", "!", "?", ",", ";", '"', "'", "</SE_e>", "</SE>")

_SPEAKER_TAG = re.compile(r"\[(SPEAKER(\d+))\]")

# Scripts written without spaces between words: CJK ideographs, kana, hangul.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
# Candidate words: one CJK character, or one whitespace-delimited run of other characters.
_RUN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")

# A sentence ends after . ! ? (ASCII or full-width) or an ellipsis, plus closing quotes/brackets,
# when followed by whitespace, the end, or a CJK character (normalised Chinese has no space after '.').
_SENTENCE_END = re.compile(
    rf"(?:[.!?]+|[。！？…]+)[\"'”’)\]」』]*(?=\s|$|[{_CJK}])"
)
# Abbreviations whose period does not end a sentence.
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "vs.", "etc.", "e.g.", "i.e.", "jr.", "sr."}
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")

CHUNK_METHODS = (None, "speaker", "word", "sentence", "paragraph")


def normalize_transcript(text: str) -> str:
    """Normalise a transcript the way the reference does before generation (spec §7.3 steps 2-6).

    1. Chinese punctuation -> ASCII (``，`` -> ``", "``, ``。`` -> ``"."``, ...).
    2. ``(`` and ``)`` -> space; ``°F`` / ``°C`` -> " degrees Fahrenheit" / " degrees Celsius".
    3. Sound-effect tags (``[laugh]``, ``[music start]``, ...) -> the model's ``<SE>``-style markers.
    4. Whitespace collapsed to single spaces within each line; blank lines dropped (paragraphs are
       joined by a single ``\\n``); stripped.
    5. A final ``.`` appended unless the text already ends with ``. ! ? , ; " '`` or a closing SE marker.

    ``[SPEAKERn]`` tags are kept. The reference reads speaker tags (``speaker_tags``) before this step:
    full-width ``【SPEAKER0】`` only becomes a tag here.
    """
    return _end_sentence("\n".join("\n".join(p) for p in _paragraph_lines(text)))


def normalized_paragraphs(text: str) -> list[str]:
    """``normalize_transcript(text)`` cut where ``text`` has blank lines: joined with ``"\\n"`` the
    paragraphs give it back exactly (so the final ``.``, if added, is on the last one)."""
    paragraphs = ["\n".join(p) for p in _paragraph_lines(text)]
    if paragraphs:
        paragraphs[-1] = _end_sentence(paragraphs[-1])
    return paragraphs


def _paragraph_lines(text: str) -> list[list[str]]:
    """Steps 1-4 of ``normalize_transcript``: its non-empty lines, grouped by the blank lines between them."""
    for src, dst in _PUNCTUATION.items():
        text = text.replace(src, dst)
    text = text.replace("(", " ").replace(")", " ")
    text = text.replace("°F", " degrees Fahrenheit").replace("°C", " degrees Celsius")
    for tag, marker in _SOUND_EFFECTS:
        text = text.replace(tag, marker)
    paragraphs: list[list[str]] = [[]]
    for line in text.split("\n"):
        line = " ".join(line.split())
        if line:
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    return [p for p in paragraphs if p]


def _end_sentence(text: str) -> str:
    return text + "." if text and not text.endswith(_FINAL_ENDINGS) else text


def speaker_tags(text: str) -> list[str]:
    """The distinct ``SPEAKERn`` tags of ``[SPEAKERn]`` markers, sorted by number (SPEAKER2 before SPEAKER10)."""
    numbers = {int(m.group(2)): m.group(1) for m in _SPEAKER_TAG.finditer(text)}
    return [numbers[n] for n in sorted(numbers)]


def count_words(text: str) -> int:
    """Length in words: whitespace-separated words, each CJK character counting as one; punctuation is free."""
    return len(_word_starts(text))


def _word_starts(text: str) -> list[int]:
    return [m.start() for m in _RUN.finditer(text) if any(c.isalnum() for c in m.group())]


def split_chunks(
    text: str, method: str | None = None, max_words: int = 200, max_turns: int = 1, *, normalize: bool = False
) -> list[str]:
    """Split a transcript into chunks generated one after another (spec §7.5, plus our own methods).

    With ``normalize`` the text is first normalised as the reference does (``normalize_transcript``), so
    every chunk is a piece of the reference's normalised text: blank lines are gone and paragraphs are
    joined by one ``"\\n"``.

    - ``None``: one chunk.
    - ``"speaker"``: one chunk per speaker turn (a line starting ``[SPEAKER`` or ``<|speaker_id_start|>``
      opens a turn), ``max_turns`` turns joined per chunk, as the reference.
    - ``"word"``: per paragraph (split on ``"\\n\\n"``, which normalised text no longer has), groups of
      ``max_words`` space-separated words; each paragraph's last chunk ends in ``"\\n\\n"``, as the
      reference. Text that is mostly CJK counts characters and is re-joined without spaces (the
      reference counts jieba words; we avoid the dependency).
    - ``"sentence"``: whole sentences packed up to ``max_words`` (a longer sentence is split by words).
    - ``"paragraph"``: whole paragraphs packed up to ``max_words``; a longer paragraph is chunked on its
      own by sentences.
    The last two (ours) cut at the blank lines of ``text`` even when normalising: a paragraph's end is
    always a chunk edge candidate, and the text inside a chunk stays the reference's normalised text.
    """
    if method not in CHUNK_METHODS:
        raise ValueError(f"unknown chunk method {method!r}; choose one of {', '.join(map(str, CHUNK_METHODS))}")
    if max_words < 1 or max_turns < 1:
        raise ValueError("max_words and max_turns must be at least 1")
    if method in ("sentence", "paragraph"):
        # Paragraphs carry the break that follows them, so a chunk's pieces concatenate to its text.
        paragraphs = [p + "\n" for p in normalized_paragraphs(text)] if normalize else _paragraphs(text)
        if method == "sentence":
            return _pack([s for p in paragraphs for s in _sentences(p)], max_words)
        return _split_paragraph(paragraphs, max_words)
    if normalize:
        text = normalize_transcript(text)
    if method is None:
        return [text]
    if method == "speaker":
        return _split_speaker(text, max_turns)
    return _split_word(text, max_words)


def _split_paragraph(paragraphs: list[str], max_words: int) -> list[str]:
    chunks: list[str] = []
    run: list[str] = []
    for paragraph in paragraphs:
        if count_words(paragraph) > max_words:  # chunked on its own, by sentences
            chunks += _pack(run, max_words) + _pack(_sentences(paragraph), max_words)
            run = []
        else:
            run.append(paragraph)
    return chunks + _pack(run, max_words)


def _split_speaker(text: str, max_turns: int) -> list[str]:
    turns: list[str] = []
    current = ""
    for line in text.split("\n"):
        line = line.strip()
        if line.startswith("[SPEAKER") or line.startswith("<|speaker_id_start|>"):
            if current:
                turns.append(current.strip())
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        turns.append(current.strip())
    return ["\n".join(turns[i : i + max_turns]) for i in range(0, len(turns), max_turns)]


def _split_word(text: str, max_words: int) -> list[str]:
    cjk = _mostly_cjk(text)  # decided for the whole text, as the reference's language detection
    chunks: list[str] = []
    for paragraph in text.split("\n\n"):
        if not paragraph.strip():
            continue
        if cjk:
            groups = _split_units(paragraph, max_words)
        else:
            words = [w for w in paragraph.split(" ") if w]
            groups = [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words)]
        chunks.extend(groups)
        chunks[-1] += "\n\n"
    return chunks


def _mostly_cjk(text: str) -> bool:
    """More than half of the words are CJK characters."""
    return 2 * len(re.findall(f"[{_CJK}]", text)) > count_words(text)


def _paragraphs(text: str) -> list[str]:
    """Paragraphs, each with the break that follows it (so concatenation gives back ``text``)."""
    pieces, start = [], 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        pieces.append(text[start : match.end()])
        start = match.end()
    pieces.append(text[start:])
    return [p for p in pieces if p.strip()]


def _sentences(text: str) -> list[str]:
    """Sentences with their original trailing whitespace (so concatenation gives back ``text``)."""
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        last_word = text[start:end].split()[-1].lower() if text[start:end].split() else ""
        if last_word in _ABBREVIATIONS:
            continue
        while end < len(text) and text[end].isspace():
            end += 1
        pieces.append(text[start:end])
        start = end
    if start < len(text):
        pieces.append(text[start:])
    return [p for p in pieces if p.strip()]


def _pack(pieces: list[str], max_words: int) -> list[str]:
    """Greedily join consecutive pieces (which carry their own trailing whitespace) while the total stays
    within ``max_words``; a piece longer than that is split by words."""
    chunks: list[str] = []
    current = ""
    size = 0
    for piece in pieces:
        n = count_words(piece)
        if current and size + n > max_words:
            chunks.append(current.strip())
            current, size = "", 0
        if n > max_words:
            chunks.extend(_split_units(piece, max_words))
            continue
        current += piece
        size += n
    if current.strip():
        chunks.append(current.strip())
    return chunks


def _split_units(text: str, max_words: int) -> list[str]:
    """Split one over-long piece every ``max_words`` words, keeping the original spacing."""
    edges = [0, *_word_starts(text)[max_words::max_words], len(text)]
    return [text[a:b].strip() for a, b in zip(edges, edges[1:]) if text[a:b].strip()]
