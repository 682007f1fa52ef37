"""Higgs Audio V2 inference: expressive speech generation from Python, the command line and HTTP."""

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
