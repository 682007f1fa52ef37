"""The generation engine: prefill, then batched cached decode with the reference's modes and stop rules.

One ``BatchDecoder`` owns the KV cache and every piece of mutable generation state. Streams (requests)
join with ``add`` (their prompt is prefilled into a free cache row, at once or ``prefill_chunk`` positions
per ``step`` so that running streams are not held up by a long prompt) and all active streams advance
together in ``step``: per-stream positions, delay-pattern counters and sampling settings are tensors, so
the hot path has no Python loop over streams apart from light bookkeeping of emitted tokens.

Modes per stream (spec §5.1): TEXT (the input is a text token: sample the text head), AUDIO_INIT (the
input is ``<|audio_out_bos|>``: its logits are ignored and the all-bos column is emitted) and
AUDIO_IN_PROGRESS (the input is the previous audio column: sample the audio head, then RAS and the
delay-pattern constraints). A prompt that ends with ``<|audio_out_bos|>`` gets its all-bos column
appended before prefill, which saves the AUDIO_INIT forward pass.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from higgs_audio import sampling
from higgs_audio.config import ModelConfig
from higgs_audio.cuda_graphs import CapturedSteps
from higgs_audio.delay import FrameAssembler, add_delay_pattern, apply_delay_constraints
from higgs_audio.model.higgs import HiggsAudioModel, MergedInput, merge_placeholders
from higgs_audio.model.transformer import KVCache
from higgs_audio.prefix_cache import BLOCK, PrefixCache
from higgs_audio.sampling import SamplingParams
from higgs_audio.text_tokenizer import SpecialTokens, TextTokenizer

log = logging.getLogger(__name__)


@dataclass
class Request:
    """A prompt (token ids with single audio placeholders) and its audio blocks, in placeholder order."""

    ids: list[int]
    audio: list[torch.Tensor]  # raw (K, T) codes; the delay pattern is added here
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class Event:
    """What one step produced for one stream."""

    slot: int
    kind: str  # "text" | "audio" | "done"
    token: int | None = None  # kind == "text"
    column: torch.Tensor | None = None  # kind == "audio": the raw delayed column (K,), on the CPU
    last: bool = False  # kind == "audio": this column ends its audio segment
    reason: str | None = None  # kind == "done": "stop" | "length" | "max_audio" | "no_text_head"


def _check_token_ids(tokens: SpecialTokens, cfg: ModelConfig) -> None:
    """The audio token ids config.json declares must be the tokenizer's."""
    declared = {
        "audio_in_token_idx": tokens.audio_in,
        "audio_out_token_idx": tokens.audio_out,
        "audio_out_bos_token_id": tokens.audio_out_bos,
        "audio_eos_token_id": tokens.audio_eos,
    }
    for key, value in declared.items():
        if key in cfg.token_ids and cfg.token_ids[key] != value:
            raise ValueError(
                f"config.json says {key}={cfg.token_ids[key]} but the tokenizer maps it to {value}: "
                "the tokenizer files do not belong to this model"
            )


@dataclass(eq=False)
class Stream:
    """One request from admission to its end, the one record of it: the engine's bookkeeping while it holds a
    slot and what it produced. The decoder fills ``text_ids``; ``runner.Runner`` the frames, timings and end;
    the faces read them."""

    request: Request
    slot: int | None = None
    merged: MergedInput | None = None  # the prompt with its audio blocks in place (set when it joins)
    prefilled: int = 0  # prompt positions already in the cache (all but the last one make it complete)
    reused: int = 0  # of which copied from the prefix cache
    decoding: bool = False  # prefilled and loaded into its slot
    # The slot's next input, mirrored from SlotState on the host so that a step needs no sync to choose its kind
    # and attention length: its position, and whether it is an audio column.
    position: int = 0
    audio_next: bool = False
    forced_audio: bool = False  # the prompt ends with <|audio_out_bos|> and its all-bos column
    segment_columns: int = 0  # columns of the current audio segment so far (for the runaway guard)
    steps_left: int = 0  # decode steps before max_new_tokens or the cache length is reached
    guard_columns: int | None = None
    text_ids: list[int] = field(default_factory=list)  # sampled text tokens, <|audio_eos|> after each segment
    assembler: FrameAssembler | None = None
    frames: list[torch.Tensor] = field(default_factory=list)  # completed (K,) code frames, on the CPU
    steps: int = 0  # decode steps that produced a text token or an audio column
    reason: str = "length"  # how it ended: stop | length | max_audio | no_text_head | cancelled | timeout | error
    error: BaseException | None = None
    t0: float | None = None  # admitted
    t_prefill: float | None = None  # prompt prefilled
    t_first: float | None = None  # first audio frame complete
    t_end: float | None = None

    @property
    def prompt_len(self) -> int:
        return 0 if self.merged is None else len(self.merged.ids)

    @property
    def prefilling(self) -> bool:
        return not self.decoding


@dataclass
class SlotState:
    """Every slot's decode state, one row per slot, so that a step updates all slots with tensor operations.
    CUDA graphs capture these tensors: they are updated in place, never replaced."""

    pos: torch.Tensor  # the position of the next input
    next_id: torch.Tensor  # the next input's token id
    next_codes: torch.Tensor  # (B, K) the next input's audio column
    next_audio: torch.Tensor  # the next input is an audio column
    init: torch.Tensor  # the next input is <|audio_out_bos|>: emit the all-bos column (AUDIO_INIT)
    active: torch.Tensor  # the slot decodes
    num_delay: torch.Tensor  # delay-pattern state of the current audio segment (delay.apply_delay_constraints)
    remaining: torch.Tensor
    history: torch.Tensor  # (B, K, HISTORY) the last audio-out columns, for RAS; -1 where none
    seed: torch.Tensor  # sampling: keyed RNG (seed, counter) and the request's settings
    counter: torch.Tensor
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    ras_window: torch.Tensor
    ras_repeat: torch.Tensor

    @staticmethod
    def allocate(max_batch: int, num_codebooks: int, history: int, device: torch.device) -> SlotState:
        zeros = lambda dtype=torch.long: torch.zeros(max_batch, dtype=dtype, device=device)  # noqa: E731
        return SlotState(
            pos=zeros(), next_id=zeros(), next_codes=torch.zeros(max_batch, num_codebooks, dtype=torch.long,
                                                                 device=device),
            next_audio=zeros(torch.bool), init=zeros(torch.bool), active=zeros(torch.bool), num_delay=zeros(),
            remaining=zeros() - 1, history=torch.full((max_batch, num_codebooks, history), -1, dtype=torch.long,
                                                      device=device),
            seed=zeros(), counter=zeros(), temperature=zeros(torch.float32), top_k=zeros(),
            top_p=zeros(torch.float64) + 1, ras_window=zeros(), ras_repeat=zeros(),
        )

    def load(self, slot: int, pos: int, next_id: int, next_codes: torch.Tensor, next_audio: bool,
             history: torch.Tensor, seed: int, p: SamplingParams) -> None:
        """Start ``slot`` decoding from this input, with a fresh delay-pattern state and RNG counter."""
        self.pos[slot], self.next_id[slot], self.next_codes[slot] = pos, next_id, next_codes
        self.next_audio[slot], self.init[slot] = next_audio, False
        self.num_delay[slot], self.remaining[slot], self.history[slot] = 0, -1, history
        self.seed[slot], self.counter[slot] = seed, 0
        self.temperature[slot], self.top_k[slot], self.top_p[slot] = p.temperature, p.top_k or 0, p.top_p
        self.ras_window[slot] = p.ras_window
        self.ras_repeat[slot] = p.ras_max_repeat if p.ras_window > 0 else 0
        self.active[slot] = True


class BatchDecoder:
    """Prefill and batched decode of up to ``max_batch`` streams of at most ``max_len`` positions each."""

    HISTORY = 64  # longest RAS window supported
    KV_BUCKET = 256  # attention length granularity of the decode steps replayed from CUDA graphs

    def __init__(
        self,
        model: HiggsAudioModel,
        tokenizer: TextTokenizer,
        max_batch: int = 1,
        max_len: int = 4096,
        compile: bool = False,
        fuse: bool = False,
        prefill_chunk: int | None = None,
        prefix_cache_mb: float = 512,
        prefix_cache_dir: str | os.PathLike | None = None,
        frame_rate: float | None = None,
    ):
        """``compile``: replay the decode step from CUDA graphs (CUDA only). Shapes are then kept static: every slot
        takes part in each step and attention spans whole ``KV_BUCKET`` blocks. Elsewhere it is ignored with a
        warning: torch.compile made a CPU decode step twice as slow (benchmarks/README.md). ``fuse`` (with
        ``compile``): compile the all-audio step with torch.compile (inductor) before capturing it, so that its
        many small kernels (norms, RoPE, sampling) fuse; minutes of compiling when the decoder is made, and not
        yet measured on a GPU (``benchmarks/gpu_check.sh`` does).
        ``prefill_chunk``: while other streams are decoding, prefill a joining prompt this many positions
        per ``step`` instead of all at once in ``add`` (a bounded pause for them, not a whole prompt's).
        ``prefix_cache_mb``: memory for the keys and values of past prompts, reused by requests that start the
        same way (the same voice); 0 turns it off. ``prefix_cache_dir``: also keep them in this folder, which
        must belong to this model and compute dtype, for later processes. ``frame_rate``: the codec's audio frames
        per second, which turns a request's ``max_audio_seconds`` into columns (needed only by such requests)."""
        if fuse and not compile:
            raise ValueError("fuse=True needs compile=True: it fuses the step that CUDA graphs replay")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be at least 1, got {prefill_chunk}")
        if prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb must be 0 (off) or more, got {prefix_cache_mb}")
        directory = Path(prefix_cache_dir).expanduser() if prefix_cache_dir is not None and prefix_cache_mb else None
        self.prefixes = PrefixCache(int(prefix_cache_mb * 2**20), directory)
        self.prefill_chunk, self.frame_rate = prefill_chunk, frame_rate
        self.model, self.cfg, self.tokenizer = model, model.cfg, tokenizer
        self.tokens = SpecialTokens.of(tokenizer)
        _check_token_ids(self.tokens, self.cfg)
        param = next(model.parameters())
        self.device, self.dtype = param.device, model.compute_dtype or param.dtype
        self.max_batch, self.max_len = max_batch, max_len
        k, dev = self.cfg.num_codebooks, self.device
        self.bos, self.eos = self.cfg.audio_stream_bos_id, self.cfg.audio_stream_eos_id
        self.cache = KVCache.allocate(self.cfg, max_batch, max_len, self.dtype, dev)
        self.slots = SlotState.allocate(max_batch, k, self.HISTORY, dev)
        self.streams: dict[int, Stream] = {}
        self._graphs = None
        self._pending: list[Event] = []  # events produced by add(), reported by the next step()
        if compile and self.device.type == "cuda":
            self._use_graphs(CapturedSteps(), fuse="inductor" if fuse else None)
        elif compile:
            log.warning("compile speeds up decoding on CUDA only; on %s the decode step runs eagerly", self.device)

    @torch.inference_mode()
    def _use_graphs(self, graphs: CapturedSteps, fuse=None) -> None:
        """Decode from CUDA graphs: the all-audio step for every attention-length bucket is captured now, while
        no stream decodes (the capture's warm-up run changes only the state of idle slots, which ``_activate``
        resets); text and mixed steps capture their forward pass when first met. ``fuse``: a torch.compile
        backend that compiles the all-audio step first, whole, with the attention length symbolic: one
        compilation serves every bucket shorter than the cache, a second the whole cache."""
        self._graphs = graphs
        step = self._audio_step_all
        if fuse is not None:
            step = torch.compile(step, backend=fuse, fullgraph=True, dynamic=True)
        n, dev = self.max_batch, self.device
        self._x_in = torch.zeros(n, 1, self.cfg.hidden_size, dtype=self.dtype, device=dev)
        self._positions_in = torch.zeros(n, 1, dtype=torch.long, device=dev)
        self._audio_in = torch.zeros(n, 1, dtype=torch.bool, device=dev)
        ends = range(self.KV_BUCKET, self.max_len + self.KV_BUCKET, self.KV_BUCKET)  # one length in each bucket
        for kv_len in sorted({self._bucket(n) for n in ends}):
            self._graphs.capture(("audio", kv_len), lambda kv_len=kv_len: step(kv_len))

    def _bucket(self, kv_len: int) -> int:
        """The attention length a static step uses for ``kv_len`` positions: whole ``KV_BUCKET`` blocks."""
        return min(-(-kv_len // self.KV_BUCKET) * self.KV_BUCKET, self.max_len)

    def _audio_step_all(self, kv_len: int) -> torch.Tensor:
        """An all-audio decode step of every slot as device work alone, so that one CUDA graph holds it, sampling
        included: idle slots compute too, on state that ``_activate`` resets, writing the cache's unused last
        position. Returns (max_batch, K + 1): every slot's column, then 1 where it ends its segment (one tensor,
        so that one copy hands a step's output to the host)."""
        positions = torch.where(self.slots.active, self.slots.pos, self.max_len - 1)[:, None]
        x = self.model.embed(self.slots.next_id[:, None], self.slots.next_codes[:, None], True)
        h = self.model(x, True, positions, self.cache, kv_len=kv_len)[:, 0]
        column, finished = self._sample_audio(slice(None), h)  # views and copies: no gathers or scatters
        self.slots.pos += self.slots.active
        self.slots.counter += self.slots.active
        return torch.cat((column, finished[:, None]), dim=1)

    # -- joining --------------------------------------------------------------------------------

    def free_slots(self) -> int:
        return self.max_batch - len(self.streams)

    def add(self, request: Request | Stream) -> int:
        """Take ``request`` (or a new ``Stream`` record of one) into a free slot and return the slot. Its prompt
        is prefilled here, or with ``prefill_chunk`` in the following steps; it decodes from the step after its
        prefill."""
        if not self.free_slots():
            raise RuntimeError("no free slot: wait for a stream to finish")
        stream = request if isinstance(request, Stream) else Stream(request)
        request = stream.request
        p, t, k = request.params, self.tokens, self.cfg.num_codebooks
        if p.ras_window > self.HISTORY:
            raise ValueError(f"ras_window {p.ras_window} is larger than the supported {self.HISTORY}")
        if p.max_audio_seconds is not None and self.frame_rate is None:
            raise ValueError("max_audio_seconds needs the codec's frame rate: make the BatchDecoder with frame_rate")
        ids, blocks = list(request.ids), []
        for codes in request.audio:
            if codes.dim() != 2 or codes.shape[0] < k:
                raise ValueError(f"audio codes must have shape ({k}, T), got {tuple(codes.shape)}")
            blocks.append(add_delay_pattern(codes[:k].long().cpu(), self.bos, self.eos))
        forced_audio = bool(ids) and ids[-1] == t.audio_out_bos
        bos_column = torch.full((k, 1), self.bos, dtype=torch.long)
        if forced_audio:
            ids.append(t.audio_out)
            blocks.append(bos_column)
        elif self.model.text_head is None:
            raise ValueError("this checkpoint has no text head: the prompt must end with <|audio_out_bos|>")
        merged = merge_placeholders(ids, blocks, t.audio_in, t.audio_out, k)
        n = len(merged.ids)
        if n + 1 > self.max_len:
            raise ValueError(f"the prompt needs {n} positions but the cache holds {self.max_len}")
        slot = next(i for i in range(self.max_batch) if i not in self.streams)
        stream.slot, stream.merged, stream.forced_audio = slot, merged, forced_audio
        if p.max_audio_seconds is not None:
            stream.guard_columns = int(p.max_audio_seconds * self.frame_rate) + k + 1
        self.streams[slot] = stream
        stream.prefilled = stream.reused = self.prefixes.reuse(merged, n - 1, self._row(slot))
        if self.prefill_chunk is None:
            self._prefill(slot, stream, stream.prompt_len)
        return slot

    def _prefill(self, slot: int, s: Stream, budget: int) -> int:
        """Prefill up to ``budget`` more prompt positions of ``s``; once done, the stream decodes from the next
        step. Returns the positions prefilled."""
        merged, dev = s.merged, self.device
        last = s.prompt_len - 1  # all but the last position: the last one is this stream's first decode input
        # With a prefix cache, the positions after the last whole block get a pass of their own, as in a later
        # request that copies the blocks: the same prompt then computes the same keys and values either way
        # (kernels round differently for other row counts), so a seeded request repeats its audio exactly.
        boundary = last // BLOCK * BLOCK if self.prefixes.max_bytes else 0
        done = 0
        while done < budget and s.prefilled < last:
            start = s.prefilled
            end = min(start + budget - done, last)
            if start < boundary < end:
                end = boundary
            audio = merged.audio[None, start:end].to(dev)
            x = self.model.embed(merged.ids[None, start:end].to(dev), merged.codes[None, start:end].to(dev), audio)
            positions = torch.arange(start, end, device=dev)[None]
            self.model(x, audio, positions, self._row(slot), kv_len=end, keys_values_only=True)
            s.prefilled, done = end, done + end - start
        if s.prefilled == last:
            self.prefixes.store(merged, last, self._row(slot))
            self._activate(slot, s)
        return done

    def _activate(self, slot: int, stream: Stream) -> None:
        """Load a fully prefilled stream's decode state into its slot."""
        p, k, dev = stream.request.params, self.cfg.num_codebooks, self.device
        n, merged = stream.prompt_len, stream.merged
        # max_new_tokens counts the audio start too, as in the reference; the cache ends at max_len.
        stream.steps_left = min(p.max_new_tokens - stream.forced_audio, self.max_len - n)
        if stream.forced_audio:
            stream.segment_columns = 1
            self._pending.append(Event(slot, "audio", column=merged.codes[-1]))
        # RAS looks back over every audio-out column, prompt blocks included (spec §5.3).
        out_cols = merged.codes[merged.audio_out].t().to(dev)
        hist = torch.full((k, self.HISTORY), -1, dtype=torch.long, device=dev)
        if out_cols.shape[1]:
            last = out_cols[:, -self.HISTORY :]
            hist[:, self.HISTORY - last.shape[1] :] = last
        seed = p.seed if p.seed is not None else int(torch.randint(0, 2**62, (1,)))
        self.slots.load(slot, n - 1, merged.ids[-1], merged.codes[-1].to(dev), bool(merged.audio[-1]), hist, seed, p)
        stream.decoding, stream.position, stream.audio_next = True, n - 1, bool(merged.audio[-1])

    def release(self, slot: int) -> None:
        """Forget a stream (finished or cancelled); its slot is free for the next ``add``."""
        self.streams.pop(slot, None)
        self.slots.active[slot] = False
        self._pending = [e for e in self._pending if e.slot != slot]

    def _row(self, slot: int) -> KVCache:
        c = self.cache
        return KVCache(c.k[:, slot : slot + 1], c.v[:, slot : slot + 1], c.audio[slot : slot + 1])

    # -- one decode step for every active stream ---------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[Event]:
        """Advance every decoding stream by one token or audio column, after prefilling joining prompts:
        ``prefill_chunk`` positions of the oldest while others decode, all of them when none is."""
        joining = [(slot, s) for slot, s in self.streams.items() if s.prefilling]
        decoding = len(joining) < len(self.streams)
        budget = self.prefill_chunk if decoding else self.max_len  # max_len: every prompt whole
        for slot, s in joining:
            if budget <= 0:
                break
            budget -= self._prefill(slot, s, budget)
        if all(s.prefilling for s in self.streams.values()):
            events, self._pending = self._pending, []
            return events
        hi = self.max_batch if self._graphs is not None else max(self.streams) + 1
        live = [s for s in self.streams.values() if s.decoding]
        kinds = {s.audio_next for s in live}
        audio_sel = kinds.pop() if len(kinds) == 1 else self.slots.next_audio[:hi, None]
        kv_len = max(s.position for s in live) + 1
        if self._graphs is not None:  # a bounded number of captured shapes
            kv_len = self._bucket(kv_len)
        events, self._pending = self._pending, []
        if self._graphs is not None and audio_sel is True:
            # The step's one sync: its columns and their segment ends, copied to the host together (a copy even
            # on the host: the next replay overwrites the graph's output).
            out = self._graphs.replay(("audio", kv_len)).to("cpu", copy=True)
            events += self._audio_events([(s.slot, out[s.slot, :-1], bool(out[s.slot, -1])) for s in live])
        else:
            events += self._step(hi, audio_sel, kv_len)
        done = {e.slot for e in events if e.kind == "done"}
        for slot, s in self.streams.items():
            if s.prefilling:
                continue
            s.position += 1
            s.steps_left -= 1
            if s.steps_left <= 0 and slot not in done:
                events.append(Event(slot, "done", reason="length"))
        for e in events:
            if e.kind == "done":
                self.release(e.slot)
        return events

    def _step(self, hi: int, audio_sel, kv_len: int) -> list[Event]:
        """A decode step of slots ``:hi`` around the model's forward pass (eager, or replayed from a CUDA graph)."""
        active, is_audio = self.slots.active[:hi], self.slots.next_audio[:hi]
        # Rows not decoding (free, or a prompt being prefilled) write to the cache's last position, which no
        # stream uses: add() leaves room for it.
        positions = torch.where(active, self.slots.pos[:hi], self.max_len - 1)[:, None]
        cache = KVCache(self.cache.k[:, :hi], self.cache.v[:, :hi], self.cache.audio[:hi])
        x = self.model.embed(self.slots.next_id[:hi, None], self.slots.next_codes[:hi, None], audio_sel)
        h = self._forward(x, audio_sel, positions, cache, kv_len)
        events = []
        audio_rows = (active & is_audio).nonzero()[:, 0]
        init_rows = (active & self.slots.init[:hi]).nonzero()[:, 0]
        text_rows = (active & ~is_audio & ~self.slots.init[:hi]).nonzero()[:, 0]
        if len(audio_rows):
            column, finished = self._sample_audio(audio_rows, h[audio_rows])
            events += self._audio_events(list(zip(audio_rows.tolist(), column.cpu(), finished.tolist())))
        if len(init_rows):
            events += self._start_audio(init_rows)
        if len(text_rows):
            events += self._text_step(text_rows, h[text_rows])
        self.slots.pos[:hi] += active
        self.slots.counter[:hi] += active
        return events

    def _forward(self, x, audio_sel, positions, cache: KVCache, kv_len: int) -> torch.Tensor:
        """The model's last hidden states (B, H) for one position per row: eager, or with CUDA graphs the forward
        pass alone replayed, captured the first time a text or mixed step meets this attention length (its
        warm-up writes the same keys and values as the replay that follows)."""
        if self._graphs is None:
            return self.model(x, audio_sel, positions, cache, kv_len=kv_len)[:, 0]
        kind = "mixed" if isinstance(audio_sel, torch.Tensor) else audio_sel
        self._x_in.copy_(x)
        self._positions_in.copy_(positions)
        if kind == "mixed":
            self._audio_in.copy_(audio_sel)
        key = (kind, kv_len)
        if key not in self._graphs:
            audio = self._audio_in if kind == "mixed" else kind
            self._graphs.capture(key, lambda: self.model(self._x_in, audio, self._positions_in, cache, kv_len)[:, 0])
        return self._graphs.replay(key)

    def _sample_audio(self, rows: torch.Tensor | slice, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample the next column of audio ``rows`` from their hidden states and advance their delay-pattern
        state, as device work alone. Returns the columns and which of them end a segment."""
        logits = self.model.audio_logits(h)
        slots = self.slots
        scores = sampling.warp(logits, slots.temperature[rows], slots.top_k[rows], slots.top_p[rows])
        seed, counter = slots.seed[rows], slots.counter[rows]
        column = sampling.sample(scores, slots.temperature[rows] == 0, seed, counter, sampling.SALT_AUDIO)
        window = torch.arange(self.HISTORY, device=self.device) >= (self.HISTORY - slots.ras_window[rows])[:, None]
        history = slots.history[rows].masked_fill(~window[:, None, :], -1)
        column = sampling.ras(column, logits, history, slots.ras_repeat[rows], seed, counter)
        column, slots.num_delay[rows], slots.remaining[rows], finished = apply_delay_constraints(
            column, slots.num_delay[rows], slots.remaining[rows], self.bos, self.eos
        )
        slots.history[rows] = torch.cat([slots.history[rows, :, 1:], column[:, :, None]], dim=-1)
        slots.next_codes[rows] = column
        slots.next_audio[rows] = ~finished
        slots.next_id[rows] = torch.where(finished, self.tokens.audio_eos, self.tokens.audio_out)
        return column, finished

    def _audio_events(self, columns: list[tuple[int, torch.Tensor, bool]]) -> list[Event]:
        """Events for sampled columns, given as (slot, column, whether it ends the segment)."""
        events = []
        for slot, column, last in columns:
            s = self.streams[slot]
            s.segment_columns += 1
            s.audio_next = not last  # as _sample_audio's next_audio
            events.append(Event(slot, "audio", column=column, last=last))
            if last:
                s.text_ids.append(self.tokens.audio_eos)
                s.segment_columns = 0
            elif s.guard_columns is not None and s.segment_columns >= s.guard_columns:
                log.warning(
                    "stream %d: audio ran past its %.1f s limit without ending; stopping (raise "
                    "max_audio_seconds if the text really needs longer)",
                    slot,
                    s.request.params.max_audio_seconds,
                )
                events.append(Event(slot, "done", reason="max_audio"))
        return events

    def _start_audio(self, rows: torch.Tensor) -> list[Event]:
        """AUDIO_INIT: the input was ``<|audio_out_bos|>``; emit the all-bos column."""
        k = self.cfg.num_codebooks
        column = torch.full((len(rows), k), self.bos, dtype=torch.long)
        self.slots.init[rows] = False
        self.slots.next_audio[rows] = True
        self.slots.next_codes[rows] = self.bos
        self.slots.next_id[rows] = self.tokens.audio_out
        self.slots.num_delay[rows], self.slots.remaining[rows] = 0, -1
        self.slots.history[rows] = torch.cat([self.slots.history[rows, :, 1:], self.slots.next_codes[rows, :, None]],
                                             dim=-1)
        events = []
        for i, slot in enumerate(rows.tolist()):
            self.streams[slot].segment_columns, self.streams[slot].audio_next = 1, True
            events.append(Event(slot, "audio", column=column[i]))
        return events

    def _text_step(self, rows: torch.Tensor, h: torch.Tensor) -> list[Event]:
        if self.model.text_head is None:
            return [Event(slot, "done", reason="no_text_head") for slot in rows.tolist()]
        logits, slots = self.model.text_logits(h)[:, None], self.slots
        scores = sampling.warp(logits, slots.temperature[rows], slots.top_k[rows], slots.top_p[rows])
        greedy = slots.temperature[rows] == 0
        tokens = sampling.sample(scores, greedy, slots.seed[rows], slots.counter[rows], sampling.SALT_TEXT)[:, 0]
        slots.next_id[rows] = tokens
        slots.init[rows] = tokens == self.tokens.audio_out_bos
        events = []
        for slot, token in zip(rows.tolist(), tokens.tolist()):
            s = self.streams[slot]
            s.text_ids.append(token)
            events.append(Event(slot, "text", token=token))
            if token in self.tokens.stops or self._hit_stop_string(s):
                events.append(Event(slot, "done", reason="stop"))
        return events

    def _hit_stop_string(self, s: Stream) -> bool:
        stops = s.request.params.stop
        if not stops:
            return False
        longest = max(len(x) for x in stops)
        tail = self.tokenizer.decode(s.text_ids[-longest:])
        return any(x in tail for x in stops)

