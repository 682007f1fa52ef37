import numpy as np
import pytest
import torch

from higgs_audio.errors import HiggsAudioError
from higgs_audio.messages import (
    AudioContent,
    ChatMLSample,
    Message,
    MessageError,
    TextContent,
    coerce_message,
    coerce_messages,
)


def test_reference_style_construction():
    audio = AudioContent("voice.wav")  # the reference's first positional field is audio_url
    assert audio.audio_url == "voice.wav" and audio.type == "audio" and audio.raw_audio is None
    assert (audio.offset, audio.duration, audio.row_id) == (None, None, None)
    sample = ChatMLSample(
        messages=[
            Message(role="system", content="Generate audio following instruction."),
            Message(role="user", content=[TextContent("Hi"), "there", audio]),
            Message(role="assistant", content=AudioContent(audio_url=""), recipient="bob"),
        ]
    )
    assert sample.start_index is None and sample.misc is None and sample.speaker is None
    assert [type(c) for c in sample.messages[1].contents()] == [TextContent, TextContent, AudioContent]
    assert sample.messages[1].contents()[1].text == "there"


def test_dicts_are_coerced_at_every_level():
    sample = ChatMLSample(
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "audio", "audio_url": "a.wav"}]},
            {"role": "assistant", "content": {"type": "audio", "raw_audio": "UklGRg=="}},
        ]
    )
    first, second = sample.messages
    assert isinstance(first, Message) and isinstance(first.content[1], AudioContent)
    assert first.content[0].text == "Hi"
    assert second.content.raw_audio == "UklGRg=="
    assert coerce_messages({"messages": [{"role": "user", "content": "x"}]})[0].content == "x"
    assert coerce_messages(({"role": "user", "content": "x"},))[0].role == "user"


@pytest.mark.parametrize(
    "value, pattern",
    [
        ({"role": "tool", "content": "x"}, r"messages\[0\].*role must be one of system, user, assistant; got 'tool'"),
        ({"role": "user", "content": "x", "speaker": "a"}, r"messages\[0\] has unknown field\(s\) speaker"),
        ({"role": "user"}, r"messages\[0\].*content"),
        ({"role": "user", "content": {"type": "video"}}, r"content.type must be 'text' or 'audio'"),
        ({"role": "user", "content": [{"type": "audio", "url": "a"}]}, r"content\[0\] has unknown field\(s\) url"),
        ({"role": "user", "content": [3]}, r"content\[0\] must be a string"),
        ({"role": "user", "content": "x", "recipient": "bob"}, r"recipient is only allowed on assistant"),
    ],
)
def test_bad_messages_name_the_field(value, pattern):
    with pytest.raises(MessageError, match=pattern):
        coerce_messages([value])


def test_message_error_is_a_package_error_and_a_value_error():
    with pytest.raises(HiggsAudioError):
        Message(role="narrator", content="x")
    with pytest.raises(ValueError):
        Message(role="narrator", content=AudioContent(codes=torch.zeros(8, 2, dtype=torch.long)))


def test_coerce_message_rejects_other_types():
    with pytest.raises(MessageError, match="must be a Message or a dict"):
        coerce_message("user: hi")
    with pytest.raises(MessageError, match="must be a ChatMLSample or a list"):
        coerce_messages("hi")


def test_audio_content_validation():
    with pytest.raises(MessageError, match="sample_rate"):
        AudioContent(array=np.zeros(100, dtype=np.float32))
    with pytest.raises(MessageError, match="codes must be an integer tensor"):
        AudioContent(codes=torch.zeros(8, 3))
    with pytest.raises(MessageError, match="codes must be an integer tensor"):
        AudioContent(codes=torch.zeros(3, dtype=torch.long))
    with pytest.raises(MessageError, match="type must be 'audio'"):
        AudioContent(type="text")
    with pytest.raises(MessageError, match="data must be bytes"):
        AudioContent(data="not bytes")
    with pytest.raises(MessageError, match="TextContent.text must be a string"):
        TextContent(text=None)


def test_audio_source_precedence():
    codes = torch.zeros(8, 2, dtype=torch.long)
    wave = np.zeros(10, dtype=np.float32)
    assert AudioContent(audio_url="a.wav", codes=codes).source == "codes"
    assert AudioContent(audio_url="a.wav", array=wave, sample_rate=16000).source == "array"
    assert AudioContent(audio_url="a.wav", data=b"RIFF").source == "data"
    assert AudioContent(audio_url="a.wav", raw_audio="UklGRg==").source == "raw_audio"
    assert AudioContent(audio_url="a.wav").source == "audio_url"
    for empty in (None, "", "placeholder"):
        assert AudioContent(audio_url=empty).source is None


def test_audio_content_compares_and_prints_without_touching_arrays():
    a = AudioContent(audio_url="x", codes=torch.zeros(8, 2, dtype=torch.long))
    b = AudioContent(audio_url="x", codes=torch.ones(8, 2, dtype=torch.long))
    assert a != b  # identity comparison: tensors are never compared element-wise
    assert "codes" not in repr(a)
