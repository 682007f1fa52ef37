#!/usr/bin/env bash
# The prepared GPU check (issue #7), sized for one device run of <= 10 minutes on an H100/H200:
# the CUDA path and CUDA graphs (the compiled decode step against the eager one), then the generation and codec benchmarks with
# the transformers port measured in the same run. Results land in $OUT (or ./gpu-results).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"; mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" 2>/dev/null || pip install -q torch
pip install -q --no-deps llama-models==0.3.0
pip install -q -e '.[dev]'
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
# CUDA graphs: the compiled static decode step must produce the eager step's streams on the GPU.
python benchmarks/cuda_graphs_check.py 2>&1 | tail -3 | tee "$out/cuda_graphs.txt"
python benchmarks/generate.py --device cuda --compile --configs bf16,int8,int4 --streams 1,16 --frames 200 \
    --cache-dir /tmp/bench 2>&1 | tee "$out/generate.txt"
python benchmarks/codec.py --device cuda --seconds 30 --repeats 5 2>&1 | tee "$out/codec.txt"
