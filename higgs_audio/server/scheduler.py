"""The scheduler: one thread drives the engine's ``Runner`` (continuous batching) for the server.

Handlers build a ``Request`` (tokenising and encoding reference audio in their own worker thread), then
``submit`` it. The scheduler thread admits queued jobs into free slots before every step, so a new
request joins the running batch at the next step (its prompt prefilled ``--prefill-chunk`` positions per
step while others decode, so their audio keeps flowing); each job's completed code frames are handed to its
asyncio queue as they appear. Audio decoding happens in the handler, not here, so the decode loop never
waits on the codec. What stays here is the server's part: the queue, deadlines, metrics and the hand-off to
asyncio.

Only this thread touches the runner: a cancelled (client gone) or timed-out job is ended here, at the next
step boundary.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque

from higgs_audio.api import HiggsAudio
from higgs_audio.engine import Request, Stream
from higgs_audio.server.metrics import Metrics

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than the server accepts."""


class Job:
    """The server's side of one request: its deadline and the queue its handler reads; ``stream`` is the
    request's record (frames, text ids, how it ended, timings).

    Items put on ``items``: ``("frames", [tensor (K,), ...])``, ``("text", n)`` (n more ids in
    ``stream.text_ids``), ``("done", reason)`` or ``("error", exception)``; ``done`` and ``error`` are last.
    """

    def __init__(self, scheduler: Scheduler, stream: Stream, loop: asyncio.AbstractEventLoop, deadline: float,
                 request_id: str):
        self.scheduler, self.stream, self.loop = scheduler, stream, loop
        self.deadline, self.request_id = deadline, request_id
        self.items: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.finished = False

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
        self.api, self.runner, self.metrics = api, api.runner, metrics
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self._pending: deque[Job] = deque()
        self._live: dict[Stream, Job] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="higgs-scheduler", daemon=True)

    @property
    def max_batch(self) -> int:
        return self.runner.decoder.max_batch

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
        job = Job(self, Stream(request), asyncio.get_running_loop(), time.monotonic() + self.timeout_s,
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
            job.stream.error = RuntimeError("the server is shutting down")
            self._end(job, "error")

    def _reap(self) -> None:
        """End cancelled and timed-out jobs, queued or decoding."""
        now = time.monotonic()
        with self._cond:
            for job in list(self._pending):
                if job.cancelled or now > job.deadline:
                    self._pending.remove(job)
                    self._end(job, "cancelled" if job.cancelled else "timeout")
            self.metrics.queue_depth.set(len(self._pending))
        for job in list(self._live.values()):
            if job.cancelled or now > job.deadline:
                self._end(job, "cancelled" if job.cancelled else "timeout")
        self.metrics.active.set(len(self._live))

    def _admit(self) -> None:
        while self.runner.free_slots():
            with self._cond:
                if not self._pending:
                    break
                job = self._pending.popleft()
                self.metrics.queue_depth.set(len(self._pending))
            stream = job.stream
            try:
                self.runner.admit(stream)
            except Exception as e:  # noqa: BLE001 - e.g. a prompt longer than the cache; fails this job only
                stream.error = e
                self._end(job, "error")
                continue
            self._live[stream] = job
            self.metrics.prompt_positions.inc(stream.reused, source="prefix_cache")
            self.metrics.prompt_positions.inc(stream.prompt_len - 1 - stream.reused, source="prefilled")
        self.metrics.prefix_cache_bytes.set(self.runner.decoder.prefixes.nbytes)
        self.metrics.active.set(len(self._live))

    def _step(self) -> None:
        self.metrics.batch_size.observe(len(self._live))
        self.metrics.steps.inc()
        for update in self.runner.step():
            job = self._live[update.stream]
            if update.text:
                job._put("text", update.text)
            if update.frames:
                job._put("frames", update.frames)
            if update.ended:
                self._end(job, update.stream.reason)
        self.metrics.active.set(len(self._live))

    def _end(self, job: Job, reason: str) -> None:
        """End ``job`` with ``reason`` (its stream's, or cancelled/timeout/error) and tell its handler."""
        stream = job.stream
        self.runner.end(stream, reason)
        self._live.pop(stream, None)
        job.finished = True
        self.metrics.finished.inc(reason=stream.reason)
        self.metrics.audio_seconds.inc(len(stream.frames) / self.api.codec.frame_rate)
        if stream.error is not None:
            log.warning("request %s failed: %s", job.request_id, stream.error)
            job._put("error", stream.error)
        else:
            job._put("done", stream.reason)
