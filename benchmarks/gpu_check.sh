#!/usr/bin/env bash
# The checks that need a GPU, as one script for a lent CUDA machine (no network there): the CUDA tests,
# then the side-by-side benchmark on the GPU. Packages missing on that machine travel as wheels in .whl/.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi -L; nproc
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider -m cuda tests/e2e 2>&1 | tee "$OUT/cuda_tests.log"
timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/bench_merge.py --preset 1.1b --runs 1 --device cuda \
    --methods "${BENCH_METHODS:-linear,ties,dare_ties}" --workdir /tmp/bench 2>&1 | tee "$OUT/bench_cuda.log"
