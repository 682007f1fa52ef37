import pytest
import torch

from higgs_audio.delay import (
    FrameAssembler,
    add_delay_pattern,
    apply_delay_constraints,
    delay_state_from_column,
    delayed_to_codes,
    revert_delay_pattern,
)

B, E = 1024, 1025
K = 8


def test_add_delay_pattern_matches_spec_layout():
    codes = torch.tensor([[10, 20], [11, 21], [12, 22]])  # K=3, T=2
    expected = torch.tensor(
        [
            [B, 10, 20, E, E, E],
            [B, B, 11, 21, E, E],
            [B, B, B, 12, 22, E],
        ]
    )
    assert torch.equal(add_delay_pattern(codes, B, E), expected)


def test_add_delay_pattern_shape_and_rows_for_eight_codebooks():
    codes = torch.randint(0, 1024, (8, 5))
    delayed = add_delay_pattern(codes, B, E)
    assert delayed.shape == (8, 5 + 8 + 1)
    for k in range(8):
        row = delayed[k].tolist()
        assert row == [B] * (k + 1) + codes[k].tolist() + [E] * (8 - k)


def test_empty_codes_give_only_markers():
    delayed = add_delay_pattern(torch.zeros(8, 0, dtype=torch.long), B, E)
    assert delayed.shape == (8, 9)
    assert delayed_to_codes(delayed, 1024).shape == (8, 0)


@pytest.mark.parametrize("t", [1, 2, 7, 30])
def test_round_trip(t):
    codes = torch.randint(0, 1024, (8, t))
    delayed = add_delay_pattern(codes, B, E)
    reverted = revert_delay_pattern(delayed)
    assert reverted.shape == (8, t + 2)
    assert torch.equal(reverted[:, 0], torch.full((8,), B))
    assert torch.equal(reverted[:, -1], torch.full((8,), E))
    assert torch.equal(delayed_to_codes(delayed, 1024), codes)


def test_batched_equals_per_item():
    codes = torch.randint(0, 1024, (3, 8, 6))
    delayed = add_delay_pattern(codes, B, E)
    assert delayed.shape == (3, 8, 15)
    for i in range(3):
        assert torch.equal(delayed[i], add_delay_pattern(codes[i], B, E))
        assert torch.equal(revert_delay_pattern(delayed)[i], revert_delay_pattern(delayed[i]))
    assert torch.equal(delayed_to_codes(delayed, 1024), codes)


def test_markers_inside_audio_are_clipped_to_last_code():
    codes = torch.randint(0, 1024, (8, 4))
    delayed = add_delay_pattern(codes, B, E)
    delayed[0, 2] = E  # row 0, frame 1 (a data cell) sampled as eos
    delayed[3, 5] = B  # row 3, frame 1
    out = delayed_to_codes(delayed, 1024)
    assert out[0, 1] == 1023 and out[3, 1] == 1023
    assert out[1, 1] == codes[1, 1]


@pytest.mark.parametrize("n", [0, 1, 5, 8, 9])
def test_too_short_segments_give_no_frames(n):
    delayed = torch.full((8, n), B)
    assert delayed_to_codes(delayed, 1024).shape == (8, 0)


def test_ten_columns_give_one_frame():
    delayed = add_delay_pattern(torch.tensor([[7]] * 8), B, E)
    assert delayed.shape[1] == 10
    assert delayed_to_codes(delayed, 1024).tolist() == [[7]] * 8


def test_delay_state_from_column():
    columns = torch.tensor(
        [
            [B] * 8,  # the first column of a segment
            [5, 5, 5, B, B, B, B, B],  # three codebooks started
            [5] * 8,  # ramp finished
            [5, 5, E, 5, E, 5, 5, 5],  # countdown started at row 2 (the lowest eos)
        ]
    )
    num_delay, remaining = delay_state_from_column(columns, B, E)
    assert num_delay.tolist() == [0, 3, 8, 8]
    assert remaining.tolist() == [-1, -1, -1, 5]


def test_frame_assembler_streams_exactly_the_trimmed_codes_of_a_segment():
    """Frames emitted column by column equal delayed_to_codes of the whole segment (spec §5.4 example:
    eos on row 0 at column 4, last column 11, frames 1..3 kept), also across two segments."""

    g = torch.Generator().manual_seed(4)
    assembler = FrameAssembler(8, 1024)
    for frames in (3, 11):
        delayed = add_delay_pattern(torch.randint(0, 1024, (8, frames), generator=g), 1024, 1025)
        n = delayed.shape[1]
        got = [assembler.push(delayed[:, c], last=c == n - 1) for c in range(n)]
        got = torch.stack([f for f in got if f is not None], dim=1)
        assert torch.equal(got, delayed_to_codes(delayed, 1024))


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
