"""The built-in scenes (the reference's scene prompts) and reading a scene option: a name, a file or words."""

from __future__ import annotations

from higgs_audio.errors import UsageError, did_you_mean
from higgs_audio.options import text_or_file

# The reference's examples/scene_prompts, byte for byte (spec §7.2): the model hears every token.
SCENES = {
    "quiet_indoor": "Audio is recorded from a quiet room.",
    "reading_blog": (
        "In this audio, the person is reading a blog post aloud. The content is informative and engaging, with "
        "the speaker using a clear, conversational tone to make the material feel more approachable. The pacing "
        "is moderate, allowing listeners to absorb the information, and the tone shifts slightly to emphasize "
        "key points. The speaker occasionally pauses for effect, ensuring each section flows smoothly, as they "
        "guide the listener through the post's main ideas."
    ),
}
NO_SCENE = "none"


def scene_text(value: str | None) -> str | None:
    """A scene name, a text file, or the scene described in words; ``none`` for no scene."""
    if value is None or value == NO_SCENE:
        return None
    if value in SCENES:
        return SCENES[value]
    text = text_or_file(value, "scene")
    if text == value.strip() and not any(c.isspace() for c in text):
        raise UsageError(f"unknown scene {value!r}{did_you_mean(value, SCENES)} (see 'higgs-audio scenes'; "
                         "a scene described in words needs more than one word)")
    return text
