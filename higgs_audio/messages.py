"""Chat data types, close to the reference's ``boson_multimodal.data_types`` so its users can switch.

``AudioContent``, ``TextContent``, ``Message`` and ``ChatMLSample`` keep the reference's field names and
order. Our extras on ``AudioContent``: an in-memory waveform (``array`` + ``sample_rate``), raw file
bytes (``data``) and already-encoded codes (``codes``, filled in by the engine or the voice library).
Plain dicts are accepted anywhere a content or message is expected and are checked strictly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch

from higgs_audio.errors import HiggsAudioError

ROLES = ("system", "user", "assistant")


class MessageError(HiggsAudioError, ValueError):
    """A chat message, its content or a prompt built from it is malformed."""


@dataclass(eq=False)
class AudioContent:
    """One audio clip in a message. The first usable source wins, in this order: codes, array, data,
    raw_audio (base64 of an audio file), audio_url (a path; ``""`` and ``"placeholder"`` mean none,
    as in the reference)."""

    audio_url: str | None = None
    raw_audio: str | None = None
    offset: float | None = None
    duration: float | None = None
    row_id: int | None = None
    type: str = "audio"
    array: np.ndarray | torch.Tensor | None = field(default=None, repr=False)
    sample_rate: int | None = None
    data: bytes | None = field(default=None, repr=False)
    codes: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.type != "audio":
            raise MessageError(f"AudioContent.type must be 'audio', got {self.type!r}")
        for name in ("audio_url", "raw_audio"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise MessageError(f"AudioContent.{name} must be a string, got {type(value).__name__}")
        if self.data is not None and not isinstance(self.data, (bytes, bytearray)):
            raise MessageError(f"AudioContent.data must be bytes, got {type(self.data).__name__}")
        if self.array is not None:
            if not isinstance(self.array, (np.ndarray, torch.Tensor)):
                raise MessageError(
                    f"AudioContent.array must be a numpy array or torch tensor, got {type(self.array).__name__}"
                )
            if not isinstance(self.sample_rate, int) or self.sample_rate <= 0:
                raise MessageError("AudioContent.array needs sample_rate, a positive int (e.g. 24000)")
        if self.codes is not None:
            if not isinstance(self.codes, torch.Tensor) or self.codes.dim() != 2 or self.codes.is_floating_point():
                raise MessageError("AudioContent.codes must be an integer tensor of shape (num_codebooks, frames)")

    @property
    def source(self) -> str | None:
        """Name of the field the audio will be taken from, or None when the content carries no audio."""
        if self.codes is not None:
            return "codes"
        if self.array is not None:
            return "array"
        if self.data is not None:
            return "data"
        if self.raw_audio:
            return "raw_audio"
        if self.audio_url not in (None, "", "placeholder"):
            return "audio_url"
        return None


@dataclass
class TextContent:
    text: str
    type: str = "text"

    def __post_init__(self) -> None:
        if self.type != "text":
            raise MessageError(f"TextContent.type must be 'text', got {self.type!r}")
        if not isinstance(self.text, str):
            raise MessageError(f"TextContent.text must be a string, got {type(self.text).__name__}")


Content = Union[str, AudioContent, TextContent]


@dataclass
class Message:
    role: str
    content: Content | list[Content]
    recipient: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise MessageError(f"Message.role must be one of {', '.join(ROLES)}; got {self.role!r}")
        if isinstance(self.content, list):
            self.content = [_coerce_content(c, f"Message.content[{i}]") for i, c in enumerate(self.content)]
        else:
            self.content = _coerce_content(self.content, "Message.content")
        if self.recipient is not None:
            if not isinstance(self.recipient, str):
                raise MessageError(f"Message.recipient must be a string, got {type(self.recipient).__name__}")
            if self.role != "assistant":
                raise MessageError(f"Message.recipient is only allowed on assistant messages, not {self.role!r}")

    def contents(self) -> list[TextContent | AudioContent]:
        """The content as a list, plain strings wrapped in TextContent."""
        items = self.content if isinstance(self.content, list) else [self.content]
        return [TextContent(c) if isinstance(c, str) else c for c in items]


@dataclass
class ChatMLSample:
    messages: list[Message]
    start_index: int | None = None
    misc: dict | None = None
    speaker: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.messages, list):
            raise MessageError(f"ChatMLSample.messages must be a list, got {type(self.messages).__name__}")
        self.messages = [coerce_message(m, f"ChatMLSample.messages[{i}]") for i, m in enumerate(self.messages)]


def coerce_message(value: Message | dict, where: str = "message") -> Message:
    """A Message from a Message or a dict with exactly Message's fields."""
    if isinstance(value, Message):
        return value
    if isinstance(value, dict):
        return _from_dict(Message, value, where)
    raise MessageError(f"{where} must be a Message or a dict, got {type(value).__name__}")


def coerce_messages(value: ChatMLSample | dict | list | tuple) -> list[Message]:
    """The messages of a ChatMLSample (or its dict form) or of a plain list of messages / dicts."""
    if isinstance(value, dict):
        value = _from_dict(ChatMLSample, value, "ChatMLSample")
    if isinstance(value, ChatMLSample):
        return list(value.messages)
    if isinstance(value, (list, tuple)):
        return [coerce_message(m, f"messages[{i}]") for i, m in enumerate(value)]
    raise MessageError(f"messages must be a ChatMLSample or a list of messages, got {type(value).__name__}")


def _coerce_content(value: Any, where: str) -> Content:
    if isinstance(value, (str, AudioContent, TextContent)):
        return value
    if isinstance(value, dict):
        kind = value.get("type")
        if kind == "text":
            return _from_dict(TextContent, value, where)
        if kind == "audio":
            return _from_dict(AudioContent, value, where)
        raise MessageError(f"{where}.type must be 'text' or 'audio', got {kind!r}")
    raise MessageError(f"{where} must be a string, TextContent, AudioContent or dict, got {type(value).__name__}")


def _from_dict(cls: type, value: dict, where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise MessageError(f"{where} has unknown field(s) {', '.join(unknown)}; {cls.__name__} has {sorted(names)}")
    try:
        return cls(**value)
    except (TypeError, MessageError) as e:  # TypeError: a required field is missing
        raise MessageError(f"{where}: {e}") from None
