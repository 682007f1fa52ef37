"""Messages -> prompt token ids with their audio blocks (spec §3.2), and the reference's message layouts
for smart voice, voice cloning, scenes and multiple speakers (spec §3.4, §3.5, §7.4).

Pure: no model, no codec. Audio must already be encoded (``AudioContent.codes``); the engine encodes
clips before building the prompt, so every placeholder is bound to exactly one code block.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, Union

import torch

from higgs_audio.messages import AudioContent, ChatMLSample, Message, MessageError, TextContent, coerce_messages
from higgs_audio.text import speaker_tags as find_speaker_tags
from higgs_audio.text_tokenizer import SpecialTokens
from higgs_audio.voices import VoiceProfile, VoiceRef

DEFAULT_SYSTEM = "Generate audio following instruction."
MULTISPEAKER_SYSTEM = (
    "You are an AI assistant designed to convert text into speech.\n"
    "If the user's message includes a [SPEAKER*] tag, do not read out the tag and generate speech for the "
    "following text, using the specified voice.\n"
    "If no speaker tag is present, select a suitable voice on your own."
)


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def token_id(self, token: str) -> int: ...


@dataclass(frozen=True)
class PromptAudio:
    """The codes bound to one placeholder: raw (K, T) codes, not delayed."""

    codes: torch.Tensor
    is_output: bool  # True: an <|AUDIO_OUT|> (assistant) block; False: an <|AUDIO|> (user/system) block


@dataclass
class Prompt:
    """Token ids with one ``<|AUDIO|>`` / ``<|AUDIO_OUT|>`` per clip; ``audio`` in placeholder order."""

    ids: list[int]
    audio: list[PromptAudio]


def build_prompt(
    messages: ChatMLSample | Sequence[Message | dict] | dict,
    tokenizer: Tokenizer,
    *,
    add_generation_prompt: bool = True,
    force_audio: bool = False,
) -> Prompt:
    """The reference's ChatML template (spec §3.2), each piece tokenised on its own.

    Message i: header (``<|begin_of_text|>`` before the first only), ``recipient<|recipient|>`` if set,
    each content in order (text as is; audio as ``<|audio_bos|><|AUDIO|><|audio_eos|>`` in user/system
    turns, ``<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|>`` in assistant turns), then ``<|eom_id|>`` when
    an assistant turn is followed by another assistant turn, else ``<|eot_id|>``. Then the assistant
    header if ``add_generation_prompt``, and ``<|audio_out_bos|>`` if also ``force_audio``.

    Unlike the reference, audio in user/system turns is kept (spec §10.8) and an audio content without
    codes is an error rather than a silently shifted binding (§10.23).
    """
    msgs = coerce_messages(messages)
    sp = SpecialTokens.of(tokenizer)
    newlines = tokenizer.encode("\n\n")
    ids: list[int] = []
    audio: list[PromptAudio] = []

    def header(role: str) -> list[int]:
        return [sp.start_header, *tokenizer.encode(role), sp.end_header, *newlines]

    for i, msg in enumerate(msgs):
        if i == 0:
            ids.append(sp.begin_of_text)
        ids += header(msg.role)
        if msg.recipient:
            ids += [*tokenizer.encode(msg.recipient), sp.recipient]
        for j, content in enumerate(msg.contents()):
            where = f"messages[{i}] ({msg.role}) content[{j}]"
            if isinstance(content, TextContent):
                piece = tokenizer.encode(content.text)
                if sp.audio_in in piece or sp.audio_out in piece:
                    raise MessageError(
                        f"{where}: the text contains an <|AUDIO|> or <|AUDIO_OUT|> placeholder; "
                        "pass audio as an AudioContent so it is bound to its codes"
                    )
                ids += piece
                continue
            if content.codes is None:
                found = content.source
                raise MessageError(
                    f"{where}: audio has no codes"
                    + (f" (it has {found}; encode it with the codec first)" if found else " and no audio source")
                )
            is_output = msg.role == "assistant"
            if is_output:
                ids += [sp.audio_out_bos, sp.audio_out, sp.audio_eos]
            else:
                ids += [sp.audio_bos, sp.audio_in, sp.audio_eos]
            audio.append(PromptAudio(codes=content.codes, is_output=is_output))
        next_is_assistant = i + 1 < len(msgs) and msgs[i + 1].role == "assistant"
        ids.append(sp.eom if msg.role == "assistant" and next_is_assistant else sp.eot)

    if add_generation_prompt:
        ids += header("assistant")
        if force_audio:
            ids.append(sp.audio_out_bos)
    return Prompt(ids=ids, audio=audio)


# ----------------------------------------------------------------------------------------------------
# Message layouts


Voice = Union[VoiceRef, VoiceProfile]
Voices = Union[Voice, Sequence[Union[Voice, None]], Mapping[str, Voice], None]

_TAG = re.compile(r"SPEAKER(\d+)")


def build_context(
    *,
    voices: Voices = None,
    scene: str | None = None,
    system: str | None = None,
    refs_in_system: bool = False,
    speaker_tags: Sequence[str] = (),
) -> list[Message]:
    """The messages that precede the text to speak: system prompt and reference-voice turns.

    ``voices``: one voice (SPEAKER0), a list (entry i is SPEAKERi; None leaves a speaker without a
    voice) or a mapping ``{"SPEAKERi": voice}``. ``speaker_tags``: the SPEAKERn tags of the transcript.
    ``system`` replaces the default instruction line; the scene block is still appended.

    Layouts (spec §3.4, §3.5, §7.4):
    - no voices, one speaker: ``DEFAULT_SYSTEM`` (+ scene block if ``scene``);
    - no voices, several speakers: ``MULTISPEAKER_SYSTEM`` + scene block of the scene and one
      ``SPEAKERi: feminine`` / ``masculine`` line per tag (alternating in numeric tag order);
    - references in turns (default): system with the scene only if there is one, then per reference
      a user turn with its transcript (``"[SPEAKERi] "`` prefixed when there are several speakers) and an
      assistant turn with its audio (audio-out);
    - ``refs_in_system`` or any ``VoiceProfile`` (as the reference, profiles force it): one system message
      whose scene block lists ``SPEAKERi: <audio>`` (audio-in) or ``SPEAKERi: <description>``.
    Speakers named by a tag but given no voice get the feminine/masculine line in the scene block.
    One voice given without a speaker (a voice, or a list of one) is the reference's single-voice
    layout whatever tags the transcript has: no ``[SPEAKER0]`` prefix and no lines for other speakers.
    A mapping binds each voice to its speaker; then the other tags get their lines.
    """
    assigned = _assign_voices(voices)
    for tag in speaker_tags:
        if not _TAG.fullmatch(tag):
            raise MessageError(f"speaker tag {tag!r} is not like 'SPEAKER0'")
    if _unbound_single(voices):
        speaker_tags = ()
    tags = _sort_tags(set(speaker_tags) | set(assigned))
    several = len(tags) > 1
    unvoiced = [_default_line(i, tag) for i, tag in enumerate(tags) if tag not in assigned]

    if not assigned:
        if several:
            return [_system_message(system or MULTISPEAKER_SYSTEM, scene, unvoiced)]
        return [_system_message(system or DEFAULT_SYSTEM, scene, [])]

    if refs_in_system or any(isinstance(v, VoiceProfile) for v in assigned.values()):
        lines: list[list[str | AudioContent]] = []
        for i, tag in enumerate(tags):
            voice = assigned.get(tag)
            if voice is None:
                lines.append([_default_line(i, tag)])
            elif isinstance(voice, VoiceProfile):
                lines.append([f"{tag}: {voice.description}"])
            else:
                lines.append([f"{tag}: ", AudioContent(codes=voice.codes)])
        return [_system_message(system or DEFAULT_SYSTEM, scene, lines)]

    messages = []
    if scene or unvoiced or system:
        messages.append(_system_message(system or DEFAULT_SYSTEM, scene, unvoiced))
    for tag, voice in assigned.items():
        if not voice.transcript:
            raise MessageError(
                f"the reference voice for {tag} has no transcript; give the words spoken in the clip "
                "or put the references in the system message (refs_in_system=True)"
            )
        messages.append(Message("user", f"[{tag}] {voice.transcript}" if several else voice.transcript))
        messages.append(Message("assistant", AudioContent(codes=voice.codes)))
    return messages


def build_messages(
    text: str,
    *,
    voices: Voices = None,
    scene: str | None = None,
    system: str | None = None,
    refs_in_system: bool = False,
    speaker_tags: Sequence[str] | None = None,
) -> list[Message]:
    """``build_context(...)`` followed by the user turn ``text``; speaker tags default to those in ``text``."""
    tags = find_speaker_tags(text) if speaker_tags is None else speaker_tags
    context = build_context(
        voices=voices, scene=scene, system=system, refs_in_system=refs_in_system, speaker_tags=tags
    )
    return [*context, Message("user", text)]


def _assign_voices(voices: Voices) -> dict[str, Voice]:
    if voices is None:
        return {}
    if isinstance(voices, (VoiceRef, VoiceProfile)):
        return {"SPEAKER0": voices}
    if isinstance(voices, Mapping):
        for tag, voice in voices.items():
            if not isinstance(tag, str) or not _TAG.fullmatch(tag):
                raise MessageError(f"voice key {tag!r} is not a speaker tag like 'SPEAKER0'")
            _check_voice(voice, tag)
        return {tag: voices[tag] for tag in _sort_tags(voices)}
    assigned = {}
    for i, voice in enumerate(voices):
        if voice is not None:
            assigned[f"SPEAKER{i}"] = _check_voice(voice, f"SPEAKER{i}")
    return assigned


def _unbound_single(voices: Voices) -> bool:
    """One voice, not bound to a speaker by a mapping: ``voice`` or ``[voice]``."""
    if isinstance(voices, (VoiceRef, VoiceProfile)):
        return True
    return isinstance(voices, Sequence) and len(voices) == 1 and voices[0] is not None


def _check_voice(voice: object, tag: str) -> Voice:
    if not isinstance(voice, (VoiceRef, VoiceProfile)):
        raise MessageError(f"the voice for {tag} must be a VoiceRef or VoiceProfile, got {type(voice).__name__}")
    return voice


def _sort_tags(tags) -> list[str]:
    return sorted(tags, key=lambda t: int(_TAG.fullmatch(t).group(1)))


def _default_line(index: int, tag: str) -> str:
    return f"{tag}: {'feminine' if index % 2 == 0 else 'masculine'}"


def _system_message(head: str, scene: str | None, lines: Sequence[str | list[str | AudioContent]]) -> Message:
    """``head``, then, if there is a scene or speaker lines, a scene block:
    ``"\\n\\n<|scene_desc_start|>\\n" + scene + "\\n\\n" + lines joined by "\\n" + "\\n<|scene_desc_end|>"``.
    A line may hold audio; the content is then a list of text and audio parts, split at each clip."""
    if not scene and not lines:
        return Message("system", head)
    flat: list[str | AudioContent] = [f"{head}\n\n<|scene_desc_start|>\n"]
    if scene:
        flat.append(scene + ("\n\n" if lines else ""))
    for n, line in enumerate(lines):
        flat += (["\n"] if n else []) + ([line] if isinstance(line, str) else line)
    flat.append("\n<|scene_desc_end|>")
    parts: list[str | AudioContent] = []
    for item in flat:
        if isinstance(item, str) and parts and isinstance(parts[-1], str):
            parts[-1] += item
        else:
            parts.append(item)
    if len(parts) == 1:
        return Message("system", parts[0])
    return Message("system", [TextContent(p) if isinstance(p, str) else p for p in parts])
