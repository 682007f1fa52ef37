"""Higgs Audio V2 inference: expressive speech generation from Python, the command line and HTTP.

The stages, one module each: ``text`` (normalise, split long texts, speaker tags) -> ``voices`` (voice names,
clips, profiles -> reference codes) -> ``prompt`` (messages -> token ids with audio blocks) -> ``inputs`` (the
engine request) -> ``engine`` (prefill, batched decode, stop rules over ``model/``; ``runner`` drives it) ->
``output`` (delayed columns -> code frames -> waveform through ``codec/``) -> ``results`` / ``audio`` (files).
Faces: ``api`` (``HiggsAudio``), ``longform``, ``cli``, ``server/``.
"""

from higgs_audio.api import GenerationResult, HiggsAudio
from higgs_audio.errors import AudioInputError, AudioTooLongError, CheckpointError, HiggsAudioError
from higgs_audio.messages import AudioContent, ChatMLSample, Message, TextContent
from higgs_audio.sampling import SamplingParams
from higgs_audio.voices import VoiceProfile, VoiceRef

__all__ = [
    "AudioContent",
    "AudioInputError",
    "AudioTooLongError",
    "ChatMLSample",
    "CheckpointError",
    "GenerationResult",
    "HiggsAudio",
    "HiggsAudioError",
    "Message",
    "SamplingParams",
    "TextContent",
    "VoiceProfile",
    "VoiceRef",
]
