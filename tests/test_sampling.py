import math

import pytest
import torch

from higgs_audio.sampling import (
    SALT_AUDIO,
    SALT_RAS,
    SALT_TEXT,
    keyed_uniform,
    ras,
    sample,
    warp,
)

B, E = 1024, 1025
K = 8


def _params(temperature, top_k, top_p):
    return (
        torch.tensor(temperature, dtype=torch.float32),
        torch.tensor(top_k, dtype=torch.long),
        torch.tensor(top_p, dtype=torch.float64),
    )


def _kept(scores):
    return torch.isfinite(scores).sum(dim=-1)


# ---------------------------------------------------------------- warpers


def test_warp_matches_transformers_warpers_per_stream():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    settings = [(0.7, 50, 0.95), (1.0, 0, 0.8), (1.3, 7, 1.0), (0.3, 0, 0.5), (1.0, 1, 0.99)]
    logits = torch.randn(len(settings), K, 1026) * 3
    ours = warp(logits, *_params(*zip(*settings)))
    for b, (t, k, p) in enumerate(settings):
        expected = logits[b].clone()
        if t != 1.0:
            expected = TemperatureLogitsWarper(t)(None, expected)
        if k:
            expected = TopKLogitsWarper(k)(None, expected)
        if p < 1.0:
            expected = TopPLogitsWarper(p)(None, expected)
        assert torch.equal(ours[b], expected), (t, k, p)


def test_top_k_one_keeps_only_the_argmax():
    logits = torch.randn(2, K, 1026)
    scores = warp(logits, *_params([1.0, 1.0], [1, 1], [1.0, 1.0]))
    assert _kept(scores).eq(1).all()
    assert torch.equal(scores.argmax(-1), logits.argmax(-1))


def test_top_k_keeps_ties_with_the_kth_value():
    logits = torch.tensor([[[3.0, 1.0, 3.0, 2.0]]])
    scores = warp(logits, *_params([1.0], [1], [1.0]))
    assert torch.isfinite(scores).tolist() == [[[True, False, True, False]]]


def test_top_p_one_keeps_everything_even_underflowing_probabilities():
    logits = torch.tensor([[[0.0, -200.0, -300.0, 5.0]]])  # softmax of the small ones underflows to 0
    scores = warp(logits, *_params([1.0], [0], [1.0]))
    assert torch.equal(scores, logits)


def test_tiny_top_p_keeps_just_the_top_one():
    logits = torch.randn(3, K, 1026)
    scores = warp(logits, *_params([1.0, 0.5, 2.0], [0, 0, 0], [1e-9, 1e-9, 1e-9]))
    assert _kept(scores).eq(1).all()
    assert torch.equal(scores.argmax(-1), logits.argmax(-1))


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().view(1, 1, 4)
    assert _kept(warp(logits, *_params([1.0], [0], [0.7]))).item() == 2
    assert _kept(warp(logits, *_params([1.0], [0], [0.9]))).item() == 3


def test_temperature_scales_and_zero_means_unscaled():
    logits = torch.randn(2, 1, 100)
    scores = warp(logits, *_params([0.5, 0.0], [0, 0], [1.0, 1.0]))
    assert torch.allclose(scores[0], logits[0] / 0.5)
    assert torch.equal(scores[1], logits[1])


# ---------------------------------------------------------------- keyed generator


def test_keyed_uniform_range_and_moments():
    u = keyed_uniform(torch.tensor([0, 1, -7, 2**40]), torch.tensor([0, 5, 9, 2**35]), SALT_AUDIO, (64, 1024))
    assert u.shape == (4, 64, 1024) and u.dtype == torch.float32
    assert u.min() > 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005
    assert abs(u.var().item() - 1 / 12) < 0.002
    counts = torch.histc(u, bins=16, min=0, max=1)
    expected = u.numel() / 16
    assert ((counts - expected).abs() / expected).max() < 0.03


def test_keyed_uniform_is_reproducible_and_batch_independent():
    seed, counter = torch.tensor([7, 123, 7]), torch.tensor([3, 3, 4])
    batch = keyed_uniform(seed, counter, SALT_TEXT, (5, 33))
    alone = keyed_uniform(torch.tensor([123]), torch.tensor([3]), SALT_TEXT, (5, 33))
    assert torch.equal(batch[1], alone[0])
    assert torch.equal(batch, keyed_uniform(seed, counter, SALT_TEXT, (5, 33)))


def test_keyed_uniform_differs_across_seed_counter_and_salt():
    def draw(seed, counter, salt):
        return keyed_uniform(torch.tensor([seed]), torch.tensor([counter]), salt, 20000)[0]

    base = draw(1, 0, SALT_AUDIO)
    for other in (draw(2, 0, SALT_AUDIO), draw(1, 1, SALT_AUDIO), draw(1, 0, SALT_RAS), draw(1 + 2**32, 0, SALT_AUDIO)):
        assert not torch.equal(base, other)
        corr = torch.corrcoef(torch.stack([base, other]))[0, 1].item()
        assert abs(corr) < 0.03


# ---------------------------------------------------------------- sampling


def test_greedy_is_argmax_whatever_the_seed():
    scores = torch.randn(3, K, 1026)
    for seed in (0, 1, 99):
        ids = sample(scores, torch.ones(3, dtype=torch.bool), torch.full((3,), seed), torch.zeros(3), SALT_AUDIO)
        assert torch.equal(ids, scores.argmax(-1))


def test_sample_follows_the_distribution_and_never_picks_removed_entries():
    probs = torch.tensor([0.6, 0.3, 0.1, 0.0])
    scores = probs.log().view(1, 1, 4).expand(4000, 1, 4)  # one stream per draw
    ids = sample(scores, torch.zeros(4000, dtype=torch.bool), torch.full((4000,), 5), torch.arange(4000), SALT_AUDIO)
    freq = torch.bincount(ids.flatten(), minlength=4).float() / 4000
    assert freq[3] == 0
    assert torch.allclose(freq[:3], probs[:3], atol=0.03)


def test_sample_is_batch_independent():
    torch.manual_seed(1)
    scores = torch.randn(4, K, 1026)
    seed, counter = torch.tensor([10, 11, 12, 13]), torch.tensor([0, 4, 4, 9])
    greedy = torch.zeros(4, dtype=torch.bool)
    together = sample(scores, greedy, seed, counter, SALT_AUDIO)
    for b in range(4):
        alone = sample(scores[b : b + 1], greedy[b : b + 1], seed[b : b + 1], counter[b : b + 1], SALT_AUDIO)
        assert torch.equal(together[b], alone[0])


def test_different_seeds_give_different_draws():
    scores = torch.zeros(1, K, 1026)
    greedy = torch.zeros(1, dtype=torch.bool)
    a = sample(scores, greedy, torch.tensor([1]), torch.tensor([0]), SALT_AUDIO)
    b = sample(scores, greedy, torch.tensor([2]), torch.tensor([0]), SALT_AUDIO)
    assert not torch.equal(a, b)


# ---------------------------------------------------------------- RAS


def _peaked_logits(batch, token):
    """Raw logits whose softmax puts all mass on ``token``: a redraw is predictable."""
    logits = torch.full((batch, K, 1026), -math.inf)
    logits[..., token] = 0.0
    return logits


def test_ras_resamples_rows_that_repeat_in_the_window():
    candidate = torch.full((1, K), 5)
    history = torch.full((1, K, 7), 9)
    history[0, 0, [1, 4]] = 5  # row 0: candidate seen twice
    history[0, 3, 2] = 5  # row 3: seen once
    out = ras(candidate, _peaked_logits(1, 77), history, torch.tensor([2]), torch.tensor([0]), torch.tensor([0]))
    assert out[0, 0] == 77
    assert torch.equal(out[0, 1:], candidate[0, 1:])


def test_ras_leaves_a_column_without_repeats_unchanged():
    candidate = torch.arange(K).view(1, K)
    history = torch.full((1, K, 7), 500)
    out = ras(candidate, _peaked_logits(1, 77), history, torch.tensor([2]), torch.tensor([0]), torch.tensor([0]))
    assert torch.equal(out, candidate)


def test_ras_disabled_per_stream_and_padding_never_counts():
    candidate = torch.full((2, K), 5)
    history = torch.full((2, K, 4), 5)
    out = ras(candidate, _peaked_logits(2, 77), history, torch.tensor([0, 2]), torch.zeros(2), torch.zeros(2))
    assert torch.equal(out[0], candidate[0])  # max_repeat 0: off
    assert out[1].eq(77).all()
    padded = torch.full((1, K, 4), -1)
    padded[0, :, -1] = 5  # one real occurrence, three pads
    out = ras(candidate[:1], _peaked_logits(1, 77), padded, torch.tensor([2]), torch.zeros(1), torch.zeros(1))
    assert torch.equal(out, candidate[:1])


def test_ras_redraw_comes_from_raw_logits_and_is_reproducible():
    torch.manual_seed(3)
    raw = torch.randn(1, K, 1026)
    candidate = torch.full((1, K), 5)
    history = torch.full((1, K, 7), 5)
    args = (candidate, raw, history, torch.tensor([2]), torch.tensor([4]), torch.tensor([8]))
    first, second = ras(*args), ras(*args)
    assert torch.equal(first, second)
    assert torch.equal(first, sample(raw, torch.zeros(1, dtype=torch.bool), args[4], args[5], SALT_RAS))


# ---------------------------------------------------------------- delay constraints


@pytest.mark.parametrize("salt", [SALT_TEXT, SALT_AUDIO])
def test_text_rows_use_the_same_machinery(salt):
    scores = torch.randn(2, 1, 500)
    ids = sample(scores, torch.tensor([True, False]), torch.tensor([3, 3]), torch.tensor([1, 1]), salt)
    assert ids.shape == (2, 1) and ids[0, 0] == scores[0, 0].argmax()
