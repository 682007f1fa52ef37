"""Request bodies: OpenAI's fields with OpenAI's names and defaults, then our extras.

Unknown fields are ignored, as OpenAI clients send fields added to the API after this was written.
Response bodies are plain dicts in OpenAI's shape (see app.py).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from higgs_audio.formats import STREAMED
from higgs_audio.sampling import describe

AudioFormat = Literal[STREAMED]  # type: ignore[valid-type]
CHAT_PCM = "pcm16"  # the chat API's name for raw pcm
ChatAudioFormat = Literal[tuple(CHAT_PCM if f == "pcm" else f for f in STREAMED)]  # type: ignore[valid-type]
SEED_MAX = 2**63 - 1


def _voice_id(value):
    """openai >= 2 sends a custom voice as ``{"id": NAME}``; it means the same as ``NAME``."""
    if isinstance(value, dict) and set(value) == {"id"}:
        return value["id"]
    return value


VoiceName = Annotated[str, BeforeValidator(_voice_id)]


class SamplingOptions(BaseModel):
    """Our extras shared by every generating route, each a ``SamplingParams`` field by name; unset ones take
    its defaults."""

    model_config = ConfigDict(extra="ignore")

    temperature: float | None = Field(None, ge=0, le=5, description=describe("temperature"))
    top_p: float | None = Field(None, gt=0, le=1, description=describe("top_p"))
    top_k: int | None = Field(None, ge=0, le=100_000, description=describe("top_k"))
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description=describe("seed"))


class AudioOptions(SamplingOptions):
    response_format: AudioFormat = Field("mp3", description="pcm is raw s16le mono at 24 kHz")
    speed: float = Field(1.0, ge=0.25, le=4.0, description="tempo change without pitch change")
    stream_format: Literal["audio", "sse"] = Field(
        "audio", description="audio: the file's bytes as they are encoded; sse: speech.audio.delta events"
    )
    stream: bool = Field(True, description="false: send the whole file at once, with its length")
    scene: str | None = Field(None, description="scene description, e.g. 'Audio is recorded from a quiet room.'")
    max_new_tokens: int | None = Field(None, ge=1, description="capped by the server's --max-new-tokens")
    max_duration: float | None = Field(None, gt=0, le=3600, description="seconds: stop audio that runs longer")


class SpeechRequest(AudioOptions):
    model: str | None = Field(None, description="the served model name or an alias (see /v1/models); unset: it")
    input: str = Field(min_length=1, description="the text to speak; long texts are spoken paragraph by paragraph")
    voice: VoiceName | None = Field(
        None,
        description="a voice-library name, 'profile:NAME' or 'profile:<description>', or {\"id\": NAME}; OpenAI's "
        "built-in names (alloy, ...) that are not in the library mean 'let the model choose'",
    )
    instructions: str | None = Field(None, description="used as the scene description when scene is not set")
    reference_audio: str | None = Field(None, description="a voice to clone: base64 of an audio file or a data: URI")
    reference_text: str | None = Field(None, description="the words spoken in reference_audio")
    speakers: dict[Annotated[str, Field(pattern=r"^SPEAKER\d+$")], str] | None = Field(
        None,
        description="a voice per [SPEAKERn] tag of a dialogue, each as 'voice' takes it, e.g. "
        "{'SPEAKER0': 'belinda', 'SPEAKER1': 'profile:a deep, calm male voice'}",
    )
    system: str | None = Field(
        None, description="a system prompt in place of the default one, e.g. an interpreter's instruction"
    )
    chunk: Literal["sentence", "paragraph", "word", "speaker"] | None = Field(
        None, description="where an input longer than the server's --chunk-words is cut into chunks: at sentence "
        "ends, at paragraph ends (unset: this), every --chunk-words words; or at every speaker turn, whatever its length"
    )


class GenerationRequest(AudioOptions):
    response_format: AudioFormat = "wav"
    text: str = Field(min_length=1)
    voice_profile: str | None = Field(
        None, description="a profile or voice name from the voice library, or a description of the speaker"
    )


class InputAudio(BaseModel):
    data: str = Field(description="base64 of an audio file")
    format: str = "wav"


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class AudioPart(BaseModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[Union[TextPart, AudioPart], Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class ChatAudio(BaseModel):
    voice: VoiceName | None = None
    format: ChatAudioFormat = "wav"


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(SamplingOptions):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    modalities: list[Literal["text", "audio"]] = Field(["text", "audio"])
    audio: ChatAudio | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
