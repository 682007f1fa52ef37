"""CodecBatcher: streams' chunks handed in while a decode runs are decoded together, each as it would be alone."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from higgs_audio.codec import AudioCodec, StreamDecoder
from higgs_audio.server.metrics import Metrics
from higgs_audio.server.pipeline import CodecBatcher


@pytest.fixture(scope="module")
def codec(tiny_codec) -> AudioCodec:
    return AudioCodec.from_pretrained(tiny_codec)


def test_concurrent_pushes_share_codec_calls_and_decode_as_alone(codec, monkeypatch):
    calls = []
    real = StreamDecoder.push_many
    monkeypatch.setattr(StreamDecoder, "push_many", staticmethod(lambda d, c: calls.append(len(d)) or real(d, c)))
    g = torch.Generator().manual_seed(4)
    streams = [torch.randint(0, 1024, (8, 40), generator=g) for _ in range(3)]
    metrics = Metrics()
    batcher = CodecBatcher(codec, metrics)
    decoders = [codec.stream_decoder() for _ in streams]

    async def speak(i: int) -> np.ndarray:
        pieces = [await batcher.push(decoders[i], streams[i][:, at : at + 10]) for at in range(0, 40, 10)]
        return np.concatenate([*pieces, decoders[i].flush()])

    async def everyone():
        return await asyncio.gather(*(speak(i) for i in range(3)))

    waves = asyncio.run(everyone())
    assert max(calls) == 3 and sum(calls) == 12  # 12 chunks in fewer calls than chunks
    assert f"higgs_codec_batch_size_count {len(calls)}\n" in metrics.render()
    for wave, codes in zip(waves, streams):
        one_shot = codec.decode(codes)
        assert np.abs(wave - one_shot).max() <= 1e-4 * np.abs(one_shot).max()


def test_a_failed_decode_reaches_every_waiting_stream(codec, monkeypatch):
    monkeypatch.setattr(StreamDecoder, "push_many", staticmethod(lambda d, c: 1 / 0))
    batcher = CodecBatcher(codec)

    async def both():
        pushes = (batcher.push(codec.stream_decoder(), torch.zeros(8, 2, dtype=torch.long)) for _ in range(2))
        return await asyncio.gather(*pushes, return_exceptions=True)

    assert all(isinstance(r, ZeroDivisionError) for r in asyncio.run(both()))
    assert batcher._drainer is None  # the next push starts a new drain
