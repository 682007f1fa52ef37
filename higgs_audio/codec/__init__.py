"""The Higgs Audio V2 audio codec: 24 kHz audio <-> 8 codebooks at 25 frames per second."""

from higgs_audio.codec.codec import AudioCodec, StreamDecoder
from higgs_audio.codec.config import CodecConfig

__all__ = ["AudioCodec", "CodecConfig", "StreamDecoder"]
