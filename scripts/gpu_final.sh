#!/usr/bin/env bash
# The project's end-of-issue GPU checks, one stage per device call (each ends inside the call's
# 10-minute limit). The whole job (full conformance of every backend + the standard grid + the
# report) is one `specsample run`, which scripts/gpu_run.sh runs past a single call; these stages
# are for checking parts of it:
#   bash scripts/gpu_final.sh tests                          # the project's GPU tests
#   bash scripts/gpu_final.sh conform cuda-cpp cupy triton   # full conformance of some backends
#   bash scripts/gpu_final.sh bench                          # specsample run --no-conformance: benchmark + report
# Logs land in $OUT (the report tarred); a short summary prints last.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$(mktemp -d)}
stage=${1:?usage: gpu_final.sh tests|conform BACKEND...|bench}
shift
python3 -m pip install -q --no-deps --no-build-isolation -e . ./examples/specsample-numpy >"$OUT/pip.log" 2>&1 || { tail "$OUT/pip.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv >"$OUT/env.txt"
python3 -c "import torch, triton, cupy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'cupy', cupy.__version__)" >>"$OUT/env.txt" 2>&1
specsample build 2>&1 | tail -1
case "$stage" in
tests)
  timeout 540 python3 -m pytest -q -p no:cacheprovider tests/test_torch_backends.py tests/test_validation.py \
    tests/test_cuda_cpp.py tests/test_cupy.py tests/test_triton.py tests/test_reports_gpu.py \
    --deselect tests/test_triton.py::test_interpreter_suite >"$OUT/pytest.log" 2>&1  # CPU path: CI runs it
  tail -15 "$OUT/pytest.log"
  ;;
conform)
  for b in "$@"; do
    timeout 500 specsample conform --level full --backend "$b" --json "$OUT/conform-$b.json" -q >>"$OUT/conform.log" 2>&1
    echo "$b: exit $?" >>"$OUT/conform.log"
  done
  cat "$OUT/conform.log"
  ;;
bench)
  timeout -s INT 540 specsample run --no-conformance --out "$OUT/report" --no-progress >"$OUT/run.log" 2>&1
  echo "specsample run exit: $?" | tee -a "$OUT/run.log"
  tar -czf "$OUT/report.tar.gz" -C "$OUT" report && rm -rf "$OUT/report"
  tail -60 "$OUT/run.log"
  ;;
*)
  echo "unknown stage $stage" >&2; exit 2 ;;
esac
