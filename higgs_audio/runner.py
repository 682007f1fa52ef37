"""The one driver of a ``BatchDecoder``: admits streams into free slots, steps, routes each step's events to
their ``Stream`` records (text ids, completed code frames, timings, the end) and frees the slots of streams
that end, are cancelled or fail. The API runs it under its lock; the server's scheduler in its own thread.
One thread drives a runner at a time."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from higgs_audio.delay import FrameAssembler
from higgs_audio.engine import BatchDecoder, Stream

log = logging.getLogger(__name__)


@dataclass
class Update:
    """What one step brought one stream."""

    stream: Stream
    frames: list[torch.Tensor] = field(default_factory=list)  # (K,) code frames completed, on the CPU
    text: int = 0  # new text ids: the last ``text`` of ``stream.text_ids``
    ended: bool = False  # ``stream.reason`` says how; ``stream.error`` is set when a step failed


class Runner:
    def __init__(self, decoder: BatchDecoder):
        self.decoder = decoder
        self.live: dict[int, Stream] = {}  # slot -> stream

    def free_slots(self) -> int:
        return self.decoder.free_slots()

    def admit(self, stream: Stream) -> None:
        """Take ``stream`` into a free slot (its prompt is prefilled now or over the next steps); raises what
        ``BatchDecoder.add`` raises for a request it refuses (a ``ValueError`` for a bad one)."""
        cfg = self.decoder.cfg
        stream.t0 = time.perf_counter()
        stream.assembler = FrameAssembler(cfg.num_codebooks, cfg.codebook_size)
        self.live[self.decoder.add(stream)] = stream
        if not stream.prefilling:  # else its first event marks the end of its (chunked) prefill
            stream.t_prefill = time.perf_counter()

    def step(self) -> list[Update]:
        """One decode step of every live stream; an update for each stream it brought something. A failed step
        ends every live stream with ``reason`` "error" and the exception in ``error``."""
        text_before = {slot: len(s.text_ids) for slot, s in self.live.items()}
        try:
            events = self.decoder.step()
        except Exception as e:  # noqa: BLE001 - a failed step fails its batch, not the caller's other work
            log.exception("decode step failed; failing %d request(s)", len(self.live))
            failed = list(self.live.values())
            for s in failed:
                s.error = e
                self.end(s, "error")
            return [Update(s, ended=True) for s in failed]
        updates: dict[int, Update] = {}
        for event in events:
            s = self.live[event.slot]
            update = updates.setdefault(event.slot, Update(s))
            if s.t_prefill is None:
                s.t_prefill = time.perf_counter()
            if event.kind == "audio":
                frame = s.assembler.push(event.column, last=event.last)
                if frame is not None:
                    if s.t_first is None:
                        s.t_first = time.perf_counter()
                    s.frames.append(frame)  # events carry CPU columns
                    update.frames.append(frame)
            elif event.kind == "done":  # the decoder has freed its slot
                del self.live[event.slot]
                s.reason, s.t_end, update.ended = event.reason, time.perf_counter(), True
            s.steps += event.kind != "done"
        for slot, update in updates.items():
            update.text = len(update.stream.text_ids) - text_before[slot]
        return list(updates.values())

    def end(self, stream: Stream, reason: str) -> None:
        """End ``stream`` now with ``reason`` (cancelled, timeout, ...), freeing its slot if it holds one; a
        stream that already ended keeps its end."""
        if stream.t_end is not None:
            return
        if stream.slot is not None and self.live.get(stream.slot) is stream:
            self.decoder.release(stream.slot)
            del self.live[stream.slot]
        stream.reason, stream.t_end = reason, time.perf_counter()
