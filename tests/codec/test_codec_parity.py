"""Parity with transformers' HiggsAudioV2TokenizerModel on identical random weights, tiny and full size, fp32.

Codes must be identical where both implementations pad the same way (T mod 960 outside [119, 632) for clips
of at least 2000 samples); where they differ the reference pads 320 samples and the port 480 (spec 10.13).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from higgs_audio.codec import AudioCodec
from tests.codec.signals import noise, speech_like, tone_after_silence
from tests.helpers.tiny_codec import FULL, load_port, write_checkpoints

# Lengths (samples at 24 kHz) where neither implementation pads the acoustic input: T mod 960 is 0, 700, 920.
TINY_SIGNALS = {
    "speech": speech_like(48700),
    "noise": noise(38400),
    "tone": tone_after_silence(43100),
}
FULL_SIGNALS = {
    "speech": speech_like(24700),
    "noise": noise(24000),
    "tone": tone_after_silence(23000),
}


def _pads_the_same(n: int) -> bool:
    return not 119 <= n % 960 < 632


def _port_codes(port, wave: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return port.encode(torch.from_numpy(wave)[None, None], return_dict=False)[0]


def _port_decode(port, codes: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return port.decode(codes[None], return_dict=False)[0, 0].numpy()


def _check_parity(ours: AudioCodec, port, signals: dict[str, np.ndarray]) -> None:
    for name, wave in signals.items():
        assert _pads_the_same(len(wave)), name
        codes = ours.encode(wave, 24000)
        assert codes.shape == (8, (len(wave) + 841) // 960), name
        assert codes.dtype == torch.long
        assert torch.equal(codes, _port_codes(port, wave)), name
        # Sanity of the random reference: real quantisation, not one code repeated.
        assert all(len(set(row.tolist())) > 3 for row in codes), name
        decoded = ours.decode(codes)
        assert decoded.dtype == np.float32 and decoded.shape == (codes.shape[1] * 960,)
        assert np.abs(decoded - _port_decode(port, codes)).max() <= 1e-4, name


def test_tiny_codes_and_waveforms_equal_the_port(tiny_codec, tiny_port):
    _check_parity(tiny_codec, tiny_port, TINY_SIGNALS)


def test_tiny_decode_of_arbitrary_codes_equals_the_port(tiny_codec, tiny_port):
    codes = torch.randint(0, 1024, (8, 37), generator=torch.Generator().manual_seed(3))
    ours = tiny_codec.decode(codes)
    assert ours.shape == (37 * 960,)
    assert np.abs(ours - _port_decode(tiny_port, codes)).max() <= 1e-4
    batch = tiny_codec.decode(torch.stack([codes, codes.flip(-1)]))
    assert batch.shape == (2, 37 * 960)
    assert np.abs(batch[1] - _port_decode(tiny_port, codes.flip(-1))).max() <= 1e-4


@pytest.mark.parametrize("length", [2100, 24000 + 119, 24000 + 300, 24000 + 631, 48000 + 500])
def test_reference_padding_where_the_port_differs(tiny_codec, tiny_port, length):
    """The reference re-encodes with 320 zero samples each side; the port uses 480. Our frame count is the
    reference's floor((T + 841) / 960), and our codes equal the port's once its padding is set to 320."""
    wave = speech_like(length, seed=length)
    assert not _pads_the_same(length)
    codes = tiny_codec.encode(wave, 24000)
    assert codes.shape[1] == (length + 841) // 960
    assert not torch.equal(codes, _port_codes(tiny_port, wave))  # the port's 480-sample rule differs
    tiny_port.pad = 320
    try:
        assert torch.equal(codes, _port_codes(tiny_port, wave))
    finally:
        tiny_port.pad = 480


def test_frame_count_formula_for_every_length(tiny_codec):
    """floor((T + 841) / 960) frames for every T from one frame on (checked over three hops, from the conv
    arithmetic), and encode returns what num_frames predicts."""
    for n in range(960, 960 * 4):
        assert tiny_codec.num_frames(n) == (n + 841) // 960, n
    for n in (960, 1079, 1080, 2000, 5000):
        assert tiny_codec.encode(noise(n), 24000).shape == (8, (n + 841) // 960)


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    """Full-size random weights (HuBERT-base, 64/1024-wide DAC) in both formats; deleted afterwards."""
    root = tmp_path_factory.mktemp("full-codec")
    original, transformers_dir = write_checkpoints(root, FULL, seed=1)
    ours = AudioCodec.from_pretrained(original)
    port = load_port(transformers_dir)
    shutil.rmtree(root)  # 1.6 GB on disk; both models hold their weights in RAM now
    yield ours, port
    del ours, port


def test_full_size_codes_and_waveforms_equal_the_port(full_size):
    ours, port = full_size
    assert ours.config.hubert.num_layers == 12 and ours.config.decoder_dim == 1024
    torch.set_num_threads(2)  # worth it at this size; the autouse fixture restores the count
    _check_parity(ours, port, FULL_SIGNALS)
