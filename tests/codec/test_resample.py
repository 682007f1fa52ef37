"""Our torch windowed-sinc resampler against real torchaudio outputs stored in tests/fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from higgs_audio.codec.resample import resample

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def fixture_arrays():
    with np.load(FIXTURES / "resample_24k_to_16k.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("i", [0, 1, 2])
def test_matches_torchaudio_24k_to_16k(fixture_arrays, i):
    x, expected = fixture_arrays[f"x{i}"], fixture_arrays[f"y{i}"]
    out = resample(torch.from_numpy(x), 24000, 16000)
    assert out.dtype == torch.float32
    assert out.shape == expected.shape  # ceil(2T/3): 16000, 16001, 8230
    assert np.abs(out.numpy() - expected).max() <= 1e-5


def test_batched_and_2d_inputs_equal_1d(fixture_arrays):
    x = torch.from_numpy(fixture_arrays["x1"])
    single = resample(x, 24000, 16000)
    assert torch.equal(resample(x[None], 24000, 16000)[0], single)
    stacked = resample(torch.stack([x, 2 * x])[:, None], 24000, 16000)
    assert stacked.shape == (2, 1, 16001)
    assert torch.allclose(stacked[0, 0], single, atol=1e-7)
    assert torch.allclose(stacked[1, 0], 2 * single, atol=1e-6)


def test_other_rates_keep_a_band_limited_tone():
    sr_in, sr_out, f = 16000, 24000, 1000.0
    t = torch.arange(16000, dtype=torch.float64) / sr_in
    out = resample(torch.sin(2 * torch.pi * f * t), sr_in, sr_out)
    assert out.shape == (24000,)
    ref = torch.sin(2 * torch.pi * f * torch.arange(24000, dtype=torch.float64) / sr_out)
    # Away from the zero-padded edges the tone passes unchanged.
    assert (out[200:-200] - ref[200:-200]).abs().max() < 1e-3
    assert resample(t, 24000, 24000) is t


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        resample(torch.zeros(10), 0, 16000)
    with pytest.raises(TypeError, match="floating-point"):
        resample(torch.zeros(10, dtype=torch.long), 24000, 16000)
