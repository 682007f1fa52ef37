#!/usr/bin/env bash
# The prepared GPU check (issue #7), one device run of under 10 minutes on an H100/H200: the CUDA tests
# (the CUDA-graph decode step gives the eager step's streams; bf16, int8 and int4 agree with fp32; the prefix
# cache feeds the captured steps), then the generation benchmark: bf16 and int4 from CUDA graphs with the
# transformers port in the same run, then bf16 with and without the step compiled by torch.compile. Results
# land in $OUT (or ./gpu-results). The codec's GPU figures (benchmarks/README.md) are not rerun here: with
# time left, `python3 benchmarks/codec.py --device cuda --seconds 10 --repeats 3 --streams 16`.
#
# The machine has no network: the packages it may lack (soundfile, soxr; llama-models for the tests' text
# tokenizer; cffi and pycparser for soundfile) travel as wheels in .whl/ when present (see benchmarks/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"; mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
torch.cuda.get_device_name())" 2>&1 | tee "$out/env.txt"
timeout 90 python3 -m pytest -q -s -p no:cacheprovider -k cuda \
    tests/engine/test_port_generation.py tests/engine/test_prefix_cache.py tests/model/test_quantize.py 2>&1 | tee "$out/tests.txt"
timeout 200 python3 benchmarks/generate.py --device cuda --compile --configs bf16,int4 \
    --streams 1,16 --frames 150 --cache-dir /tmp/bench 2>&1 | tee "$out/generate.txt"
# one LoRA training step, full size, 8 clips of 10 s with gradient checkpointing: step time, frames/s, peak
# memory (does it fit a 24 GB GPU?); needs peft (and accelerate, psutil) from .whl/
timeout 120 python3 benchmarks/train.py --device cuda --clips 8 --gradient-checkpointing \
    --cache-dir /tmp/bench 2>&1 | tee "$out/train.txt"
# torch.compile before capture (fuse=True), against the plain captured step in the same run; compiling takes
# minutes (four compilations: 1 and 16 streams, below and at the cache's length), so it runs last
timeout 260 python3 benchmarks/generate.py --device cuda --compile --configs bf16,bf16-fused --skip-port \
    --streams 1,16 --frames 150 --cache-dir /tmp/bench 2>&1 | tee "$out/generate-fused.txt"
