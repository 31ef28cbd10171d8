#!/usr/bin/env bash
# The project's end-of-issue GPU check, in two device calls (one call cannot hold both within its
# 10-minute limit: the full conformance level of six backends alone took more than 400 s on an H100):
#   bash scripts/gpu_final.sh conform   # install, GPU tests, full conformance of every backend
#   bash scripts/gpu_final.sh bench     # install, `specsample run --no-conformance` (benchmark + report)
# Logs land in $OUT (the report tarred); a short table prints last.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$(mktemp -d)}
stage=${1:?usage: gpu_final.sh conform|bench}
python3 -m pip install -q --no-deps --no-build-isolation -e . ./examples/specsample-numpy >"$OUT/pip.log" 2>&1 || { tail "$OUT/pip.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv >"$OUT/env.txt"
python3 -c "import torch, triton, cupy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'cupy', cupy.__version__)" >>"$OUT/env.txt" 2>&1
specsample build 2>&1 | tail -1
case "$stage" in
conform)
  timeout 200 python3 -m pytest -q -p no:cacheprovider -k "not interpreter_suite" tests/test_torch_backends.py \
    tests/test_validation.py tests/test_cuda_cpp.py tests/test_cupy.py tests/test_reports_gpu.py >"$OUT/pytest.log" 2>&1
  tail -3 "$OUT/pytest.log"
  for b in cuda-cpp cupy triton torch-vectorized torch-compile torch-loop; do
    timeout 300 specsample conform --level full --backend "$b" --json "$OUT/conform-$b.json" -q >>"$OUT/conform.log" 2>&1
    echo "$b: exit $?" | tee -a "$OUT/conform.log"
  done
  ;;
bench)
  timeout -s INT 540 specsample run --no-conformance --out "$OUT/report" --no-progress >"$OUT/run.log" 2>&1
  echo "specsample run exit: $?" | tee -a "$OUT/run.log"
  tar -czf "$OUT/report.tar.gz" -C "$OUT" report && rm -rf "$OUT/report"
  tail -60 "$OUT/run.log"
  ;;
esac
