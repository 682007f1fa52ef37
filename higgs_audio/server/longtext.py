"""Long inputs of ``/v1/audio/speech``: spoken chunk after chunk, as ``higgs-audio speak --chunk paragraph``.

The text is split by ``longform``'s paragraph chunker; each chunk is its own scheduler job, queued when
the one before ends (ahead of other waiting requests: its listener is waiting), whose prompt carries the
voice and the last ``CONTEXT_CHUNKS`` chunks' text and codes (``longform.chunk_request``), so the voice
stays the same from chunk to chunk. Only those chunks' codes are kept: a chapter costs no more memory than
three chunks. The response decodes every chunk's
frames as one stream (``JobAudio`` with ``follow``).
"""

from __future__ import annotations

from higgs_audio.longform import ChunkResult, chunk_request, chunk_seed
from higgs_audio.output import stack_frames
from higgs_audio.prompt import build_context
from higgs_audio.server.scheduler import Job
from higgs_audio.server.service import Service, submit
from higgs_audio.text import speaker_tags, split_chunks

CHUNK_METHOD = "paragraph"
CONTEXT_CHUNKS = 2  # the CLI's --context-chunks default


class LongText:
    """The chunks of one input and the state carried from chunk to chunk."""

    def __init__(self, service: Service, pieces: list[str], context, seed: int | None, params: dict):
        self.service, self.pieces, self.context, self.seed = service, pieces, context, seed
        self.max_seconds = params.pop("max_audio_seconds", None)  # max_duration: of the whole text
        self.params = params
        self.spoken: list[ChunkResult] = []  # the last CONTEXT_CHUNKS chunks
        self.seconds = 0.0
        self.index = 0

    def build(self):
        """The engine request of the next chunk (run in a worker thread: it tokenises)."""
        i = self.index
        params = dict(self.params)
        if self.max_seconds is not None:
            params["max_audio_seconds"] = self.max_seconds - self.seconds
        seed = None if self.seed is None else chunk_seed(self.seed, i)
        request, _, _ = chunk_request(self.service.api, self.context, self.spoken, self.pieces[i], i, seed=seed,
                                      context_chunks=CONTEXT_CHUNKS, **params)
        return request

    async def follow(self, job: Job, request_id: str) -> Job | None:
        """Record the chunk ``job`` spoke; queue the next one, if any is left (and time for it)."""
        done = stack_frames(job.stream.frames, self.service.api.model.cfg.num_codebooks)
        self.spoken = [*self.spoken, ChunkResult(self.pieces[self.index], None, done, job.stream.reason, 0)]
        self.spoken = self.spoken[-CONTEXT_CHUNKS:]
        self.seconds += done.shape[1] / self.service.api.codec.frame_rate
        self.index += 1
        if self.index == len(self.pieces) or (self.max_seconds is not None and self.seconds >= self.max_seconds):
            return None
        return await submit(self.service, request_id, self.build, continuing=True)


def long_text(service: Service, text: str, *, voice, scene: str | None, system: str | None, params: dict,
              max_words: int, method: str | None = None) -> LongText | None:
    """A ``LongText`` when ``text`` makes more than one chunk (split by ``method``, default ``CHUNK_METHOD``,
    with ``max_words``), else None (it is spoken as one request)."""
    pieces = [p for p in split_chunks(text, method or CHUNK_METHOD, max_words, normalize=True) if p.strip()]
    if len(pieces) < 2:
        return None
    context = build_context(voices=voice, scene=scene, system=system, speaker_tags=speaker_tags(text))
    return LongText(service, pieces, context, params.pop("seed", None), params)
