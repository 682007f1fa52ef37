"""The scheduler: one thread owns the engine's ``BatchDecoder`` and runs continuous batching.

Handlers build a ``Request`` (tokenising and encoding reference audio in their own worker thread), then
``submit`` it. The scheduler thread admits queued jobs into free slots before every step, so a new
request joins the running batch at the next step (its prompt prefilled ``--prefill-chunk`` positions per
step while others decode, so their audio keeps flowing); one ``step`` advances every active stream; each
job's completed code frames are handed to its asyncio queue as they appear. Audio decoding happens in
the handler, not here, so the decode loop never waits on the codec.

Only this thread touches the decoder: a cancelled (client gone) or timed-out job is released here, at the
next step boundary.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque

import torch

from higgs_audio.api import HiggsAudio, RunCollector
from higgs_audio.engine import FRAME_RATE, Request
from higgs_audio.server.metrics import Metrics

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than the server accepts."""


class Job:
    """One request's life in the scheduler, and the queue its handler reads.

    Items put on ``items``: ``("frames", [tensor (K,), ...])``, ``("text", [token ids])``,
    ``("done", reason)`` or ``("error", exception)``; ``done`` and ``error`` are last.
    """

    def __init__(self, scheduler: Scheduler, run: RunCollector, loop: asyncio.AbstractEventLoop, deadline: float,
                 request_id: str):
        self.scheduler, self.run, self.loop = scheduler, run, loop
        self.deadline, self.request_id = deadline, request_id
        self.items: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.finished = False
        self.slot: int | None = None

    def cancel(self) -> None:
        """Stop generating (the client went away); takes effect at the next step boundary."""
        if not self.finished:
            self.cancelled = True
            self.scheduler.wake()

    async def next(self) -> tuple[str, object]:
        return await self.items.get()

    def drain(self) -> list[tuple[str, object]]:
        """Every item already queued, without waiting."""
        out = []
        while not self.items.empty():
            out.append(self.items.get_nowait())
        return out

    def _put(self, kind: str, payload: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass


class Scheduler:
    def __init__(self, api: HiggsAudio, metrics: Metrics, *, max_queue: int, timeout_s: float):
        self.api, self.decoder, self.metrics = api, api.decoder, metrics
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self._pending: deque[Job] = deque()
        self._live: dict[int, Job] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="higgs-scheduler", daemon=True)

    @property
    def max_batch(self) -> int:
        return self.decoder.max_batch

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> dict:
        return {"queued": len(self._pending), "active": len(self._live), "max_batch": self.max_batch}

    def submit(self, request: Request, request_id: str = "-", *, continuing: bool = False) -> Job:
        """Queue ``request``; raises ``QueueFull`` when ``max_queue`` requests are already waiting.
        ``continuing``: the next chunk of a response already streaming, which goes first and is never
        refused (its listener would hear a gap, or lose the rest)."""
        job = Job(self, RunCollector(self.api, request), asyncio.get_running_loop(), time.monotonic() + self.timeout_s,
                  request_id)
        with self._cond:
            if continuing:
                self._pending.appendleft(job)
            elif len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are already waiting; retry later")
            else:
                self._pending.append(job)
            self.metrics.queue_depth.set(len(self._pending))
            self._cond.notify()
        return job

    # -- the thread ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._pending and not self._live:
                    self._cond.wait()
                if self._stopping:
                    break
            self._reap()
            self._admit()
            if self._live:
                self._step()
        for job in [*self._pending, *self._live.values()]:
            self._finish(job, "error", RuntimeError("the server is shutting down"))

    def _reap(self) -> None:
        """Drop cancelled and timed-out jobs, queued or decoding."""
        now = time.monotonic()
        with self._cond:
            for job in list(self._pending):
                if job.cancelled or now > job.deadline:
                    self._pending.remove(job)
                    self._finish(job, "done", "cancelled" if job.cancelled else "timeout")
            self.metrics.queue_depth.set(len(self._pending))
        for slot, job in list(self._live.items()):
            if job.cancelled or now > job.deadline:
                self.decoder.release(slot)
                del self._live[slot]
                self._finish(job, "done", "cancelled" if job.cancelled else "timeout")
        self.metrics.active.set(len(self._live))

    def _admit(self) -> None:
        while self.decoder.free_slots():
            with self._cond:
                if not self._pending:
                    break
                job = self._pending.popleft()
                self.metrics.queue_depth.set(len(self._pending))
            try:
                job.slot = job.run.start(self.decoder)
            except Exception as e:  # noqa: BLE001 - e.g. a prompt longer than the cache; fails this job only
                self._finish(job, "error", e)
                continue
            self._live[job.slot] = job
            stream = self.decoder.streams[job.slot]
            self.metrics.prompt_positions.inc(stream.reused, source="prefix_cache")
            self.metrics.prompt_positions.inc(stream.prompt_len - 1 - stream.reused, source="prefilled")
        self.metrics.prefix_cache_bytes.set(self.decoder.prefixes.nbytes)
        self.metrics.active.set(len(self._live))

    def _step(self) -> None:
        self.metrics.batch_size.observe(len(self._live))
        self.metrics.steps.inc()
        try:
            events = self.decoder.step()
        except Exception as e:  # noqa: BLE001 - a failed step fails its batch, not the server
            log.exception("decode step failed; failing %d request(s)", len(self._live))
            for slot, job in list(self._live.items()):
                self.decoder.release(slot)
                self._finish(job, "error", e)
            self._live.clear()
            return
        frames: dict[int, list[torch.Tensor]] = {}
        texts: dict[int, list[int]] = {}
        ended: list[int] = []
        for event in events:
            job = self._live.get(event.slot)
            if job is None:
                continue
            frame = job.run.on_event(event)
            if frame is not None:
                frames.setdefault(event.slot, []).append(frame)
            elif event.kind == "text":
                texts.setdefault(event.slot, []).append(event.token)
            elif event.kind == "done":
                ended.append(event.slot)
        for slot, ids in texts.items():
            self._live[slot]._put("text", ids)
        for slot, new in frames.items():
            self._live[slot]._put("frames", new)
        for slot in ended:
            job = self._live.pop(slot)
            self._finish(job, "done", job.run.reason)
        self.metrics.active.set(len(self._live))

    def _finish(self, job: Job, kind: str, payload: object) -> None:
        job.finished = True
        reason = payload if kind == "done" else "error"
        self.metrics.finished.inc(reason=str(reason))
        self.metrics.audio_seconds.inc(len(job.run.codes) / FRAME_RATE)
        if kind == "error":
            log.warning("request %s failed: %s", job.request_id, payload)
        job._put(kind, payload)
