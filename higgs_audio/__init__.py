"""Higgs Audio V2 inference: expressive speech generation from Python, the command line and HTTP.

The stages, one module each: ``text`` (normalise, split long texts, speaker tags) -> ``voices`` (voice names,
clips, profiles -> reference codes) -> ``prompt`` (messages -> token ids with audio blocks) -> ``inputs`` (the
engine request) -> ``engine`` (prefill, batched decode, stop rules over ``model/``; ``runner`` drives it) ->
``output`` (delayed columns -> code frames -> waveform through ``codec/``) -> ``results`` -> ``formats`` (audio
files and streams). Beside them: ``delay`` and ``sampling`` (pure tensor rules of the engine), ``audio`` (reading,
resampling, loudness), ``checkpoint`` (the one loader), ``cache`` (per-user folders, fingerprints).
Faces: ``api`` (``HiggsAudio``), ``longform``, ``cli``, ``server/``, ``cluster/``; ``train/`` fine-tunes.
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
