#!/usr/bin/env bash
# The triton backend on a GPU machine: its GPU tests, then the checks and the benchmark grid of
# scripts/triton_bench.py. Needs torch and triton there; installs nothing (specsample is put on the
# path through a folder of links, so no pip is needed).
# Usage (repo root): bash scripts/gpu_triton.sh [OUTDIR] [extra args for triton_bench.py]
# Writes OUTDIR/triton_tests.log, OUTDIR/triton_bench.log and OUTDIR/triton_bench.json.
set -uo pipefail
out=${1:-${OUT:-.}}
shift || true
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
if ! python3 -c "import specsample" 2>/dev/null; then
  sp=$(mktemp -d)
  mkdir "$sp/specsample"
  for f in "$PWD"/core/*.py; do ln -s "$f" "$sp/specsample/"; done
  for d in backends csrc conformance reports; do ln -s "$PWD/$d" "$sp/specsample/$d"; done
  export PYTHONPATH="$sp${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 scripts/triton_bench.py --json "$out/triton_bench.json" "$@" 2>&1 | tee "$out/triton_bench.log"
bench=${PIPESTATUS[0]}
# The tests with the heuristic configuration (tuning each new shape would only cost compilations).
SPECSAMPLE_TRITON_AUTOTUNE=0 python3 -m pytest -q -p no:cacheprovider tests/test_triton.py \
  -k "not interpreter_suite" 2>&1 | tee "$out/triton_tests.log"
tests=${PIPESTATUS[0]}
if [ -n "${NCU:-}" ]; then  # NCU=1: an Nsight Compute profile of the B=64, K=8, V=128256 cell
  ncu_bin=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
  SPECSAMPLE_TRITON_AUTOTUNE=0 timeout 240 "$ncu_bin" -k regex:verify_kernel -s 3 -c 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
    --section Occupancy --section LaunchStats python3 scripts/triton_bench.py --ncu-target \
    2>&1 | tee "$out/triton_ncu.log" | tail -n 120
fi
echo "tests exit $tests, bench exit $bench"
exit $(( tests || bench ))
