"""Streaming decode equals the one-shot decode; the decoder's receptive field is what the codec reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import higgs_audio.codec.codec as codec_module

FRAMES = 53


@pytest.fixture(scope="module")
def codes() -> torch.Tensor:
    return torch.randint(0, 1024, (8, FRAMES), generator=torch.Generator().manual_seed(7))


def _stream(codec, codes: torch.Tensor, sizes: list[int]) -> list[np.ndarray]:
    decoder = codec.stream_decoder()
    pieces, at = [], 0
    for size in sizes:
        pieces.append(decoder.push(codes[:, at : at + size]))
        at += size
    assert at == codes.shape[1]
    pieces.append(decoder.flush())
    return pieces


@pytest.mark.parametrize("chunk", [1, 10, 25])
def test_chunks_concatenate_to_the_one_shot_decode(tiny_codec, codes, chunk):
    sizes = [chunk] * (FRAMES // chunk) + ([FRAMES % chunk] if FRAMES % chunk else [])
    pieces = _stream(tiny_codec, codes, sizes)
    assert all(p.dtype == np.float32 and p.ndim == 1 and len(p) % 960 == 0 for p in pieces)
    streamed = np.concatenate(pieces)
    one_shot = tiny_codec.decode(codes)
    assert streamed.shape == one_shot.shape == (FRAMES * 960,)  # no gap, no repeated sample
    assert np.abs(streamed - one_shot).max() <= 1e-3
    assert np.abs(streamed - one_shot).max() <= 1e-4 * np.abs(one_shot).max()  # in fact float rounding only


def test_irregular_chunks_and_reuse_after_flush(tiny_codec, codes):
    one_shot = tiny_codec.decode(codes)
    decoder = tiny_codec.stream_decoder()
    for _ in range(2):  # flush resets the decoder for a new stream
        pieces = [decoder.push(codes[:, a:b]) for a, b in ((0, 3), (3, 3), (3, 30), (30, 31), (31, FRAMES))]
        pieces.append(decoder.flush())
        assert np.abs(np.concatenate(pieces) - one_shot).max() <= 1e-4 * np.abs(one_shot).max()
    assert decoder.flush().shape == (0,)


def test_frames_are_released_after_the_lookahead(tiny_codec, codes):
    """A frame is final once decoder_lookahead_frames later frames have arrived, not before."""
    lookahead = tiny_codec.decoder_lookahead_frames
    decoder = tiny_codec.stream_decoder()
    released = 0
    for n in range(1, FRAMES + 1):
        released += len(decoder.push(codes[:, n - 1 : n])) // 960
        assert released == max(0, n - lookahead)
    assert len(decoder.flush()) // 960 == lookahead


def test_receptive_field_is_what_the_codec_reports(tiny_codec, codes):
    """Changing the codes of frame k changes exactly output frames k - lookahead .. k + context."""
    context, lookahead = tiny_codec.decoder_context_frames, tiny_codec.decoder_lookahead_frames
    # Derived from the architecture (see AcousticDecoder.context_frames): the k7 input conv reaches 3 frames,
    # the first transposed conv about 1, the residual units (dilations 1, 3, 9 -> 39 samples each side at
    # 200, 1000, 4000, 8000, 24000 Hz) about 6.3; about 10.4 frames in all, so 10 whole frames each side.
    assert (context, lookahead) == (10, 10)
    k = 26
    changed = codes.clone()
    changed[:, k] = (changed[:, k] + 1) % 1024
    diff = np.abs(tiny_codec.decode(codes) - tiny_codec.decode(changed)).reshape(FRAMES, 960).max(axis=1)
    touched = np.nonzero(diff)[0]
    assert touched.min() == k - lookahead and touched.max() == k + context


def test_push_rejects_batches_and_bad_codes(tiny_codec):
    decoder = tiny_codec.stream_decoder()
    with pytest.raises(ValueError, match="one stream"):
        decoder.push(torch.zeros(2, 8, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 1024\)"):
        decoder.push(torch.full((8, 2), 1025))


def test_streams_pushed_together_decode_as_alone_in_one_batch(tiny_codec, monkeypatch):
    """Four streams joining at different times, with irregular first chunks, then 10-frame chunks: those whose
    states match step as one batch, and each stream still gets its own one-shot decode."""
    batches = []
    real = codec_module.step_together
    monkeypatch.setattr(codec_module, "step_together", lambda states, latent: batches.append(len(states))
                        or real(states, latent))
    g = torch.Generator().manual_seed(3)
    streams = [torch.randint(0, 1024, (8, n), generator=g) for n in (47, 53, 30, 41)]
    plans = [[7, 10, 10, 10, 10], [3, 10, 10, 10, 10, 10], [0, 0, 10, 10, 10], [0, 1, 10, 10, 10, 10]]
    decoders = [tiny_codec.stream_decoder() for _ in streams]
    pieces = [[] for _ in streams]
    at = [0] * len(streams)
    for step in range(max(map(len, plans))):
        chunks = []
        for i, plan in enumerate(plans):
            size = plan[step] if step < len(plan) else 0
            chunks.append(streams[i][:, at[i] : at[i] + size])
            at[i] += size
        for i, wave in enumerate(codec_module.StreamDecoder.push_many(decoders, chunks)):
            pieces[i].append(wave)
    assert at == [s.shape[1] for s in streams]
    assert batches and max(batches) == 4  # from the fourth step every stream stepped in one batch
    for i, (decoder, codes) in enumerate(zip(decoders, streams)):
        streamed = np.concatenate([*pieces[i], decoder.flush()])
        one_shot = tiny_codec.decode(codes)
        assert streamed.shape == one_shot.shape
        assert np.abs(streamed - one_shot).max() <= 1e-4 * np.abs(one_shot).max(), i


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_codec_queues_on_its_own_stream(tiny_codec_dirs, tiny_codec, codes, monkeypatch):
    """On a GPU the codec's kernels queue on a CUDA stream of its own, so a server's streaming decode runs beside
    the model's steps on the default stream; its results wait for its own work only, and equal the CPU's."""
    from higgs_audio.codec import AudioCodec

    codec = AudioCodec.from_pretrained(tiny_codec_dirs[0], device="cuda")
    streams = []
    latent = codec.model.latent
    monkeypatch.setattr(codec.model, "latent", lambda c: streams.append(torch.cuda.current_stream()) or latent(c))
    busy = torch.randn(2048, 2048, device="cuda")
    for _ in range(50):  # the default stream has work queued while the codec runs
        busy = (busy @ busy).tanh()
    streamed = np.concatenate(_stream(codec, codes, [10] * 5 + [3]))
    whole = codec.decode(codes)
    assert streams and all(s == codec._cuda_stream != torch.cuda.default_stream() for s in streams)
    expected = tiny_codec.decode(codes)
    for wave in (streamed, whole):
        assert np.abs(wave - expected).max() <= 1e-3 * np.abs(expected).max()
