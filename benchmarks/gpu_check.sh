#!/usr/bin/env bash
# The prepared GPU check (issue #21's list), one device run of at most 9 minutes on an H100/H200:
#   1. the CUDA tests (the CUDA-graph decode step gives the eager step's streams; bf16, int8 and int4 agree with
#      fp32; the prefix cache feeds the captured steps; the codec runs on its own CUDA stream), all on the
#      fused-projection model;
#   2. the generation benchmark from CUDA graphs for bf16, int8 and int4 at 1 and 16 streams, the transformers
#      port in the same run: frames/s, first-audio time (first frame, same voice), peak memory;
#   3. the per-kernel profile of one eager decode step (the kernels a graph replays), top 10 by device time;
#   4. the codec benchmark on CUDA (streaming decode of 16 streams at once);
#   then, while the 9 minutes allow: torch.compile before capture (fuse=True) against the plain captured step,
#   and one full-size LoRA training step. Results land in $OUT (or ./gpu-results).
#
# The machine has no network: the packages it may lack (soundfile, soxr; llama-models for the tests' text
# tokenizer; cffi and pycparser for soundfile; peft for the training step) travel as wheels in .whl/ when present
# (see benchmarks/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"; mkdir -p "$out"
budget=540  # seconds for the whole script
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
left() { echo $((budget - SECONDS)); }
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
torch.cuda.get_device_name())" 2>&1 | tee "$out/env.txt"
timeout 90 python3 -m pytest -q -s -p no:cacheprovider -k cuda \
    tests/engine/test_port_generation.py tests/engine/test_prefix_cache.py tests/model/test_quantize.py \
    tests/codec/test_streaming.py 2>&1 | tee "$out/tests.txt"
timeout 240 python3 benchmarks/generate.py --device cuda --compile --configs bf16,int8,int4 \
    --streams 1,16 --frames 150 --cache-dir /tmp/bench --plot "$out/generate.png" 2>&1 | tee "$out/generate.txt"
timeout 80 python3 benchmarks/profile_step.py --device cuda --cache-dir /tmp/bench --steps 1 --top 10 \
    2>&1 | tee "$out/profile.txt"
timeout 80 python3 benchmarks/codec.py --device cuda --seconds 10 --repeats 3 --streams 16 \
    --plot "$out/codec.png" 2>&1 | tee "$out/codec.txt"
# compiling takes minutes (1 and 16 streams, below and at the cache's length): only with the time for it
if [ "$(left)" -gt 200 ]; then
    timeout $(($(left) - 20)) python3 benchmarks/generate.py --device cuda --compile --configs bf16,bf16-fused \
        --skip-port --streams 1,16 --frames 150 --cache-dir /tmp/bench --plot none 2>&1 | tee "$out/generate-fused.txt"
fi
# one LoRA training step, full size, 8 clips of 10 s with gradient checkpointing: does it fit a 24 GB GPU?
if [ "$(left)" -gt 100 ]; then
    timeout $(($(left) - 10)) python3 benchmarks/train.py --device cuda --clips 8 --gradient-checkpointing \
        --cache-dir /tmp/bench 2>&1 | tee "$out/train.txt"
fi
echo "gpu_check: $SECONDS s" | tee -a "$out/env.txt"
