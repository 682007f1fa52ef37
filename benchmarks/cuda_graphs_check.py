"""On a CUDA machine: the decode step captured with torch.compile + CUDA graphs gives the eager step's
streams (fp32, so the comparison can be exact), and how much faster it is.

    python benchmarks/cuda_graphs_check.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from higgs_audio.checkpoint import load_model  # noqa: E402
from higgs_audio.engine import BatchDecoder, Request, SamplingParams  # noqa: E402
from higgs_audio.text_tokenizer import TextTokenizer  # noqa: E402
from tests.helpers.tiny_model import write_original  # noqa: E402

PROMPT = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nSay something.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>"
)


def run(model, tok, compile: bool, streams: int = 4, steps: int = 120):
    decoder = BatchDecoder(model, tok, max_batch=streams, max_len=512, compile=compile)
    ids = tok.encode(PROMPT)
    for i in range(streams):
        decoder.add(Request(ids, [], SamplingParams(temperature=0.8, seed=i, max_new_tokens=steps)))
    columns = {i: [] for i in range(streams)}
    times = []
    while decoder.streams:
        torch.cuda.synchronize()
        t = time.perf_counter()
        events = decoder.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        for e in events:
            if e.kind == "audio":
                columns[e.slot].append(e.column.cpu())
    steady = sorted(times[10:])[len(times[10:]) // 2]
    return {k: torch.stack(v) for k, v in columns.items()}, steady


def main() -> None:
    assert torch.cuda.is_available(), "needs a CUDA device"
    with tempfile.TemporaryDirectory() as d:
        directory = write_original(Path(d) / "tiny")
        model, _, _ = load_model(directory, device="cuda", dtype="float32")
        tok = TextTokenizer(directory)
        eager, t_eager = run(model, tok, compile=False)
        graphs, t_graphs = run(model, tok, compile=True)
    same = all(torch.equal(eager[k], graphs[k]) for k in eager)
    print(f"CUDA graphs streams equal eager: {same}; median step eager {t_eager * 1e3:.2f} ms, "
          f"graphs {t_graphs * 1e3:.2f} ms (x{t_eager / t_graphs:.1f})")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
