#!/usr/bin/env bash
# Device script of the cuda-cpp / cupy backends: toolchain facts, install, build, exactness checks,
# tests, the timing grid, and (optionally) the conformance suite. Everything lands under $OUT.
#   bash scripts/gpu_cuda.sh [kernel_bench.py args...]
# Env: SPECSAMPLE_CONFORM=1 also runs `specsample conform --level full` on both backends;
#      SPECSAMPLE_NCU=1 profiles one B=1 and one B=256 call with Nsight Compute.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=/tmp/torch_ext MAX_JOBS=16 CUPY_CACHE_DIR=/tmp/cupy_cache
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  nvcc --version | tail -2
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.get_device_capability())"
  python3 -c "import cupy; print('cupy', cupy.__version__, 'nvrtc', cupy.cuda.nvrtc.getVersion())"
  python3 -c "import triton; print('triton', triton.__version__)"
  python3 -c "from cuda.bindings import driver as d; print('CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED =', int(d.CUfunction_attribute.CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED))" || true
} 2>&1 | tee "$OUT/env.txt"

if ! python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1; then
  echo "pip install -e failed; see pip.log"; tail -5 "$OUT/pip.log"
fi
python3 -c "import specsample, specsample.backends; print('specsample', specsample.__version__, specsample.__file__)"
python3 -m specsample list

python3 scripts/kernel_bench.py --out "$OUT/kernel_bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
rc=${PIPESTATUS[0]}

timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_cpp.py tests/test_cupy.py 2>&1 | tail -15 | tee "$OUT/pytest.log"

if [ "${SPECSAMPLE_CONFORM:-0}" = 1 ]; then
  timeout 300 python3 -m specsample conform --level full --backend cuda-cpp --backend cupy -q \
    --json "$OUT/conform.json" 2>&1 | tail -40 | tee "$OUT/conform.log"
fi

if [ "${SPECSAMPLE_NCU:-0}" = 1 ]; then
  timeout 200 ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section SourceCounters \
    --section LaunchStats -k regex:verify --launch-count 2 python3 scripts/ncu_target.py > "$OUT/ncu.txt" 2>&1
  grep -E "verify_|Duration|Elapsed Cycles|SM Active|Stall|stall|Warp Cycles" "$OUT/ncu.txt" | head -60
fi
# short tables last
grep -E "^\| |^best |^device|copy:|us/call|graph replay|checks:|FAIL|errors:" "$OUT/bench.log" | tail -80
exit $rc
