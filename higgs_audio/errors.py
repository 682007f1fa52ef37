"""Exceptions raised where bad input enters; each message names the problem and the fix."""


class HiggsAudioError(Exception):
    """Base class for every error this package raises on purpose."""


class CheckpointError(HiggsAudioError):
    """A model or codec checkpoint is missing, malformed or uses an option we do not implement."""


class AudioInputError(HiggsAudioError):
    """Audio given by the user cannot be read or used."""


class AudioTooLongError(AudioInputError, ValueError):
    """A clip is longer than the limit it was read under (for a reference voice: what the prompt can hold)."""
