"""The one engine driver (runner.Runner) on the tiny checkpoints: what it records per stream, ending streams early,
and a failed step failing its batch without leaving slots taken."""

from __future__ import annotations

import pytest
import torch

from higgs_audio.engine import BatchDecoder, Stream
from higgs_audio.output import stack_frames


def _streams(api, n: int, **params) -> list[Stream]:
    return [Stream(api.request(f"Sentence number {i}.", seed=i, temperature=1.0, **params)) for i in range(n)]


def test_the_record_holds_what_generate_returns(tiny_api):
    stream = _streams(tiny_api, 1, max_new_tokens=30)[0]
    runner = tiny_api.runner
    runner.admit(stream)
    seen = []
    while stream.t_end is None:
        for update in runner.step():
            seen += update.frames
    alone = tiny_api.generate("Sentence number 0.", seed=0, temperature=1.0, max_new_tokens=30)
    assert torch.equal(stack_frames(stream.frames, 8), alone.codes) and len(seen) == len(stream.frames) > 0
    assert (stream.reason, stream.steps, stream.prompt_len) == (alone.finish_reason, alone.usage["completion_tokens"],
                                                                alone.usage["prompt_tokens"])
    assert stream.t0 <= stream.t_prefill <= stream.t_first <= stream.t_end


def test_ending_a_stream_frees_its_slot_and_keeps_its_first_end(tiny_api):
    runner, decoder = tiny_api.runner, tiny_api.decoder
    keep, cancel = _streams(tiny_api, 2, max_new_tokens=20)
    runner.admit(keep)
    runner.admit(cancel)
    for _ in range(3):
        runner.step()
    runner.end(cancel, "cancelled")
    assert cancel.slot not in decoder.streams and cancel.reason == "cancelled"
    while keep.t_end is None:
        assert all(update.stream is keep for update in runner.step())
    runner.end(keep, "timeout")  # it already ended
    assert keep.reason == "length" and not runner.live and decoder.free_slots() == decoder.max_batch


def test_a_failed_step_fails_every_live_stream_and_frees_their_slots(tiny_api, monkeypatch):
    real, calls = BatchDecoder.step, []

    def flaky(self):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(self)

    monkeypatch.setattr(BatchDecoder, "step", flaky)
    runner, decoder = tiny_api.runner, tiny_api.decoder
    streams = _streams(tiny_api, 2, max_new_tokens=20)
    for s in streams:
        runner.admit(s)
    updates = [runner.step() for _ in range(3)][-1]
    assert [u.stream for u in updates] == streams and all(u.ended for u in updates)
    assert all(s.reason == "error" and str(s.error) == "boom" for s in streams)
    assert not runner.live and decoder.free_slots() == decoder.max_batch
    # the API raises the error, and leaves no slot taken by the batch's other requests
    calls.clear()
    with pytest.raises(RuntimeError, match="boom"):
        tiny_api.generate_batch([dict(text=f"Sentence {i}.", max_new_tokens=20) for i in range(3)])
    assert not runner.live and decoder.free_slots() == decoder.max_batch
