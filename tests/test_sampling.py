import math

import pytest
import torch

from higgs_audio.delay import delayed_to_codes
from higgs_audio.sampling import (
    SALT_AUDIO,
    SALT_RAS,
    SALT_TEXT,
    apply_delay_constraints,
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


def _run_segment(sampled_columns, num_delay=0, remaining=-1):
    """Feed columns 1.. of one segment through the constraints; column 0 is the all-bos column."""
    state = (torch.tensor([num_delay]), torch.tensor([remaining]))
    columns, finished = [torch.full((K,), B)], []
    for col in sampled_columns:
        out, nd, rem, fin = apply_delay_constraints(col.view(1, K), *state, B, E)
        state = (nd, rem)
        columns.append(out[0])
        finished.append(bool(fin[0]))
        if fin[0]:
            break
    return torch.stack(columns, dim=1), finished, state


def _parse(table, sampled):
    """Spec-style table rows ("B s s E ...") -> tensor; s/x cells take the sampled value."""
    rows = []
    for k, line in enumerate(table):
        cells = line.split()
        rows.append([B if c == "B" else E if c == "E" else int(sampled[k, j]) for j, c in enumerate(cells)])
    return torch.tensor(rows)


def test_end_countdown_reproduces_the_worked_example():
    # T = 3 real frames; codebook 0 samples eos at column 4 (spec §5.4).
    sampled = torch.arange(12).view(1, 12) * 10 + torch.arange(K).view(K, 1) + 100  # distinct per cell
    sampled[0, 4] = E
    table = [
        "B s s s E E E E E E E E",
        "B B s s s x E E E E E E",
        "B B B s s s x E E E E E",
        "B B B B s s s x E E E E",
        "B B B B B s s s x E E E",
        "B B B B B B s s s x E E",
        "B B B B B B B s s s x E",
        "B B B B B B B B s s s x",
    ]
    delayed, finished, state = _run_segment([sampled[:, j] for j in range(1, 12)])
    assert torch.equal(delayed, _parse(table, sampled))
    assert finished == [False] * 10 + [True]  # column 11 carries <|audio_eos|>
    assert [s.item() for s in state] == [0, -1]  # state reset for the next segment
    codes = delayed_to_codes(delayed, 1024)
    assert codes.shape == (K, 3)
    assert torch.equal(codes, torch.stack([sampled[k, k + 1 : k + 4] for k in range(K)]))


def test_eos_first_on_a_later_row_forces_lower_rows_and_ends_sooner():
    sampled = torch.full((K, 20), 7)
    sampled[3, 10] = E  # first eos on row 3 at column 10, after the ramp
    delayed, finished, _ = _run_segment([sampled[:, j] for j in range(1, 20)])
    assert delayed[:4, 10].eq(E).all() and delayed[4:, 10].eq(7).all()
    assert len(finished) == 14 and finished[-1]  # ends 7 - 3 = 4 columns later, at column 14
    for m in range(1, 5):  # the countdown forces rows 0 .. K - remaining - 1 = 0 .. 2 + m
        assert delayed[: 3 + m, 10 + m].eq(E).all()
        assert delayed[3 + m :, 10 + m].eq(7).all()


def test_lowest_eos_row_wins():
    column = torch.tensor([[7, 7, E, 7, 7, E, 7, 7]])
    out, nd, rem, fin = apply_delay_constraints(column, torch.tensor([7]), torch.tensor([-1]), B, E)
    assert out[0].tolist() == [E, E, E, 7, 7, E, 7, 7]
    assert rem.item() == 8 - 2 - 1 and not fin.item()


def test_eos_on_the_last_row_finishes_at_once():
    column = torch.tensor([[7] * 7 + [E]])
    out, nd, rem, fin = apply_delay_constraints(column, torch.tensor([7]), torch.tensor([-1]), B, E)
    assert out[0].eq(E).all() and fin.item()
    assert (nd.item(), rem.item()) == (0, -1)


def test_start_ramp_forces_bos_on_later_rows():
    sampled = torch.full((K, 9), 7)
    delayed, finished, state = _run_segment([sampled[:, j] for j in range(1, 9)])
    for col in range(1, 9):
        assert delayed[:col, col].eq(7).all() and delayed[col:, col].eq(B).all()
    assert not any(finished) and state[0].item() == 7


def test_batched_streams_match_single_stream_runs_and_inactive_streams_are_untouched():
    torch.manual_seed(4)
    columns = torch.randint(0, 1024, (3, K))
    columns[1, 2] = E
    num_delay, remaining = torch.tensor([2, 7, 7]), torch.tensor([-1, -1, 3])
    active = torch.tensor([True, True, False])
    out, nd, rem, fin = apply_delay_constraints(columns, num_delay, remaining, B, E, active=active)
    for b in range(2):
        single = apply_delay_constraints(columns[b : b + 1], num_delay[b : b + 1], remaining[b : b + 1], B, E)
        assert torch.equal(out[b], single[0][0])
        assert (nd[b], rem[b], fin[b]) == (single[1][0], single[2][0], single[3][0])
    assert torch.equal(out[2], columns[2]) and (nd[2].item(), rem[2].item(), fin[2].item()) == (7, 3, False)


@pytest.mark.parametrize("salt", [SALT_TEXT, SALT_AUDIO])
def test_text_rows_use_the_same_machinery(salt):
    scores = torch.randn(2, 1, 500)
    ids = sample(scores, torch.tensor([True, False]), torch.tensor([3, 3]), torch.tensor([1, 1]), salt)
    assert ids.shape == (2, 1) and ids[0, 0] == scores[0, 0].argmax()
