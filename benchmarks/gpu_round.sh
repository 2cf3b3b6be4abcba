#!/usr/bin/env bash
# The GPU measurements issue 18 still needs, as one command for a lent GPU machine
# (the device tool's `run`, 15 minutes of device time in all):
#
#     bash benchmarks/gpu_round.sh            # results under $OUT (default benchmarks/out/gpu)
#
# 1. bench_overhead.py --device cuda: a Lanczos step's own work where the product costs
#    nothing (launches, reads to the host), the start vector, a kept product's extra.
# 2. bench_overhead.py --tables kernels at 10^8: which kernels a step's own work spends.
# 3. bench_scale.py --device cuda, spectorch alone, every family at every size: the
#    GPU table of docs/benchmarks.md ("On a GPU") with the current code.
# With the peers importable (PYTHONPATH) a fourth command adds them at 10^4-10^6.
#
# Each command's output goes to a log under $OUT, and bench_scale.py's results file
# too (it resumes: a rerun after a timeout measures only the rows not yet in).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.log"
$PY benchmarks/bench_overhead.py --device cuda 2>&1 | tee "$OUT/overhead.log"
$PY benchmarks/bench_overhead.py --device cuda --tables kernels --sizes 1e8 --steps 8 2>&1 | tee "$OUT/kernels.log"
$PY benchmarks/bench_scale.py --device cuda --out "$OUT/scale" --peers "" 2>&1 | tee "$OUT/scale.log"
if $PY -c "import hessian_eigenthings, pyhessian, curvlinops" 2>/dev/null; then
    $PY benchmarks/bench_scale.py --device cuda --out "$OUT/scale-peers" --sizes 1e4,1e5,1e6 2>&1 | tee "$OUT/scale-peers.log"
fi
