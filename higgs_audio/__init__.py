"""Higgs Audio V2 inference: expressive speech generation from Python, the command line and HTTP."""

from higgs_audio.errors import AudioInputError, CheckpointError, HiggsAudioError

__all__ = ["AudioInputError", "CheckpointError", "HiggsAudioError"]
