import pytest
import torch

from higgs_audio.delay import add_delay_pattern, delay_state_from_column, delayed_to_codes, revert_delay_pattern

B, E = 1024, 1025


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
    from higgs_audio.engine import FrameAssembler

    g = torch.Generator().manual_seed(4)
    assembler = FrameAssembler(8, 1024)
    for frames in (3, 11):
        delayed = add_delay_pattern(torch.randint(0, 1024, (8, frames), generator=g), 1024, 1025)
        n = delayed.shape[1]
        got = [assembler.push(delayed[:, c], last=c == n - 1) for c in range(n)]
        got = torch.stack([f for f in got if f is not None], dim=1)
        assert torch.equal(got, delayed_to_codes(delayed, 1024))
