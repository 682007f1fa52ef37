"""The prefix cache: a request that starts like an earlier one (same voice and reference clip) copies the
keys and values of the shared prefix instead of prefilling it, and generates exactly what it would without."""

from __future__ import annotations

import pytest
import torch

from higgs_audio import prefix_cache
from higgs_audio.checkpoint import load_model
from higgs_audio.engine import BatchDecoder, Request
from higgs_audio.prefix_cache import BLOCK
from higgs_audio.sampling import SamplingParams
from higgs_audio.text_tokenizer import TextTokenizer
from tests.engine.test_port_generation import PROMPT
from tests.helpers.eager_steps import use_eager_steps

TRANSCRIPT = "A reference line, read slowly and clearly, with a short pause after every comma, by one speaker."


@pytest.fixture(scope="module")
def setup(tiny_original):
    model, _, _ = load_model(tiny_original, device="cpu", dtype="float32")
    tok = TextTokenizer(tiny_original)
    ref = torch.randint(0, 1024, (8, 60), generator=torch.Generator().manual_seed(9))

    def request(text: str, seed: int, ref=ref) -> Request:
        ids = tok.encode(PROMPT.replace("A reference line.", TRANSCRIPT).replace("The text to speak.", text))
        return Request(ids, [ref], SamplingParams(temperature=0.9, seed=seed, max_new_tokens=12))

    return model, tok, request


def _generate(decoder: BatchDecoder, request: Request):
    """Generate ``request`` alone: its columns, the positions it reused and its merged prompt."""
    slot = decoder.add(request)
    reused, merged = decoder.streams[slot].reused, decoder.streams[slot].merged
    columns = []
    while slot in decoder.streams:
        columns += [e.column for e in decoder.step() if e.kind == "audio"]
    return torch.stack(columns), reused, merged


def _common_start(a, b) -> int:
    """Positions at which two merged prompts agree, from the start."""
    n = min(len(a.ids), len(b.ids))
    same = (a.ids[:n] == b.ids[:n]) & (a.codes[:n] == b.codes[:n]).all(-1)
    return int(same.int().cumprod(0).sum())


@pytest.mark.parametrize("mode", ["eager", "graphs", "chunked"])
def test_same_voice_reuses_the_shared_prefix_and_generates_the_same(setup, mode):
    """``graphs``: the static steps of the CUDA path; ``chunked``: the rest prefilled by ``step``."""
    model, tok, request = setup
    first, second = request("One sentence.", seed=1), request("A different, longer sentence to say.", seed=2)
    cached = BatchDecoder(model, tok, max_len=400, prefill_chunk=16 if mode == "chunked" else None)
    if mode == "graphs":
        use_eager_steps(cached)
    _, reused_first, merged_first = _generate(cached, first)
    columns, reused, merged = _generate(cached, second)
    fresh_decoder = BatchDecoder(model, tok, max_len=400, prefix_cache_mb=0)
    fresh, _, _ = _generate(fresh_decoder, second)

    shared = _common_start(merged_first, merged)
    assert shared > 3 * BLOCK  # the voice: system prompt, reference transcript and clip
    assert reused_first == 0 and reused == shared // BLOCK * BLOCK
    assert torch.equal(columns, fresh)
    # the copied keys and values are those a prefill computes (up to float rounding: other matmul shapes)
    n = len(merged.ids) - 1
    for copied, computed in ((cached.cache.k, fresh_decoder.cache.k), (cached.cache.v, fresh_decoder.cache.v)):
        torch.testing.assert_close(copied[:, 0, :, :n], computed[:, 0, :, :n], rtol=1e-5, atol=1e-5)


def test_a_different_clip_reuses_only_what_comes_before_it(setup):
    model, tok, request = setup
    decoder = BatchDecoder(model, tok, max_len=400)
    _generate(decoder, request("One sentence.", seed=1))
    other = torch.randint(0, 1024, (8, 60), generator=torch.Generator().manual_seed(10))
    clip_at = request("One sentence.", seed=1).ids.index(tok.token_id("<|AUDIO_OUT|>"))
    assert clip_at > BLOCK
    assert _generate(decoder, request("One sentence.", seed=1, ref=other))[1] == clip_at // BLOCK * BLOCK


def test_budget_keeps_a_prompts_first_blocks_and_drops_the_least_recently_used(setup):
    model, tok, request = setup
    probe = BatchDecoder(model, tok, max_len=400)
    _generate(probe, request("One sentence.", seed=1))
    assert len(probe.prefixes) == 3
    per_block = probe.prefixes.nbytes // len(probe.prefixes)

    decoder = BatchDecoder(model, tok, max_len=400, prefix_cache_mb=2.5 * per_block / 2**20)
    voice_a = request("One sentence.", seed=1)
    _generate(decoder, voice_a)
    assert len(decoder.prefixes) == 2 and decoder.prefixes.nbytes <= decoder.prefixes.max_bytes
    assert _generate(decoder, voice_a)[1] == 2 * BLOCK  # its first two blocks, not its last ones
    other = torch.randint(0, 1024, (8, 60), generator=torch.Generator().manual_seed(10))
    _generate(decoder, request("One sentence.", seed=1, ref=other))  # shares block 0; voice_a's block 1 goes
    assert _generate(decoder, voice_a)[1] == BLOCK
    with pytest.raises(ValueError, match="prefix_cache_mb must be 0"):
        BatchDecoder(model, tok, prefix_cache_mb=-1)


def test_out_of_memory_while_storing_stops_storing_and_serves_the_request(setup, monkeypatch, caplog):
    model, tok, request = setup
    decoder = BatchDecoder(model, tok, max_len=400)
    real_block, made = prefix_cache._Block, []

    def block(*tensors):
        made.append(1)
        if len(made) == 2:  # the device has no room for the second block's copies
            raise torch.OutOfMemoryError("no room")
        return real_block(*tensors)

    monkeypatch.setattr(prefix_cache, "_Block", block)
    columns, _, _ = _generate(decoder, request("One sentence.", seed=1))
    assert len(columns) == 12 and "out of memory for the prefix cache" in caplog.text
    assert len(decoder.prefixes) == 1 and decoder.prefixes.max_bytes == decoder.prefixes.nbytes
    assert _generate(decoder, request("One sentence.", seed=1))[1] == BLOCK


def test_blocks_kept_on_disk_serve_a_later_decoder(setup, tmp_path, caplog):
    """A second decoder (a later process) with the same folder copies the voice from disk; a damaged file is
    a cache miss and is removed; the folder stays within its budget."""
    model, tok, request = setup
    folder = tmp_path / "prefixes"
    first = BatchDecoder(model, tok, max_len=400, prefix_cache_dir=folder)
    _generate(first, request("One sentence.", seed=1))
    files = sorted(folder.glob("*.safetensors"))
    assert len(files) == len(first.prefixes) == 3

    second = request("A different, longer sentence to say.", seed=2)
    columns, reused, merged = _generate(BatchDecoder(model, tok, max_len=400, prefix_cache_dir=folder), second)
    fresh, _, _ = _generate(BatchDecoder(model, tok, max_len=400, prefix_cache_mb=0), second)
    assert reused == 3 * BLOCK and torch.equal(columns, fresh)

    damaged = folder / f"{prefix_cache._digests(merged, 3 * BLOCK)[1].hex()}.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    assert _generate(BatchDecoder(model, tok, max_len=400, prefix_cache_dir=folder), second)[1] == BLOCK
    assert f"removing unusable prefix cache file {damaged}" in caplog.text

    tight = BatchDecoder(model, tok, max_len=400, prefix_cache_dir=tmp_path / "tight")
    tight.prefixes.disk_max_bytes = 2 * files[0].stat().st_size
    _generate(tight, request("One sentence.", seed=1))
    assert len(list((tmp_path / "tight").glob("*.safetensors"))) == 2


def test_prefill_passes_end_at_the_last_whole_block(setup, monkeypatch):
    """A fresh prompt is prefilled as a later request that copies its blocks would be: the whole blocks in one
    pass, the rest in another, so both compute the same keys and values (kernels round differently for other
    row counts). Without a prefix cache it is one pass."""
    model, tok, request = setup
    passes = []
    real = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, x, audio, positions, *args, **kwargs:
                        passes.append((int(positions[0, 0]), int(positions[0, -1]) + 1))
                        or real(self, x, audio, positions, *args, **kwargs))
    first = request("One sentence.", seed=1)
    for mb in (512, 0):
        passes.clear()
        decoder = BatchDecoder(model, tok, max_len=400, prefix_cache_mb=mb)
        last = decoder.streams[decoder.add(first)].prompt_len - 1
        boundary = last // BLOCK * BLOCK
        assert passes == ([(0, boundary), (boundary, last)] if mb else [(0, last)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_copied_prefix_feeds_the_cuda_graphs(tiny_original):
    """On CUDA with ``compile=True`` the captured steps read the cache rows the copy wrote."""
    model, _, _ = load_model(tiny_original, device="cuda", dtype="float32")
    tok = TextTokenizer(tiny_original)
    ref = torch.randint(0, 1024, (8, 60), generator=torch.Generator().manual_seed(9))

    def request(text: str, seed: int) -> Request:
        ids = tok.encode(PROMPT.replace("A reference line.", TRANSCRIPT).replace("The text to speak.", text))
        return Request(ids, [ref], SamplingParams(temperature=0.9, seed=seed, max_new_tokens=12))

    cached = BatchDecoder(model, tok, max_len=400, compile=True)
    _generate(cached, request("One sentence.", seed=1))
    columns, reused, _ = _generate(cached, request("Another one, a little longer.", seed=2))
    fresh, _, _ = _generate(BatchDecoder(model, tok, max_len=400, compile=True, prefix_cache_mb=0),
                            request("Another one, a little longer.", seed=2))
    assert reused >= 3 * BLOCK and torch.equal(columns.cpu(), fresh.cpu())


def test_prefix_folder_names_the_cpu_kernels(tiny_original, tiny_codec, tmp_path, monkeypatch):
    """Keys and values kept on disk by one build of our CPU kernels (or torch's) are not read by another: the
    int8 kernels differ in rounding, and a cached prefix must equal the one the model would compute now."""
    from higgs_audio.api import HiggsAudio
    from higgs_audio.model import cpu_kernels

    def folder(version):
        monkeypatch.setattr(cpu_kernels, "version", lambda: version)
        api = HiggsAudio.from_pretrained(tiny_original, tiny_codec, device="cpu", prefix_cache_dir=tmp_path)
        return api.decoder.prefixes.directory

    assert folder("torch") == folder("torch") != folder("cpu_kernels-0123")
    assert folder("torch").parent == tmp_path


def test_prefix_folder_names_the_prefill_dtype(tiny_original, tiny_codec, tmp_path, monkeypatch):
    """A CPU with native bf16 prefills in bf16 (other keys and values than fp32's): its cached prompts are kept
    apart from an fp32-prefilling machine's sharing the same folder."""
    from higgs_audio import checkpoint
    from higgs_audio.api import HiggsAudio

    def folder(native_bf16):
        monkeypatch.setattr(checkpoint, "cpu_has_native_bf16", lambda: native_bf16)
        api = HiggsAudio.from_pretrained(tiny_original, tiny_codec, device="cpu", prefix_cache_dir=tmp_path)
        return api.decoder.prefixes.directory

    assert folder(False) == folder(False) != folder(True)
