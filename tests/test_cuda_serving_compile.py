"""The serving kernels (``csrc/kernel_serving.cuh``, ``csrc/kernel_serving_split.cuh``) compile for
an H100 (sm_90) without a GPU.

The GPU tests (tests/test_cuda_serving.py) prove its arithmetic where a device exists; here nvcc
takes ``verify_kernel.cuh``, as NVRTC sees it (no system header, clusters on), to a cubin for every
element type, so a compile break fails on any machine with the CUDA toolkit. ptxas must report no
register spills (the one-block kernel's 16 per-thread radix digit totals live in registers; the
split kernel keeps eight 16-byte loads in flight per thread) and at most 128 registers (512
threads per block). Skipped where
nvcc is missing (CI has none).
"""

from __future__ import annotations

import re
import subprocess

import pytest
from specsample.backends import _cuda_build, _cupy_serving

NVCC = _cuda_build.find_nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit not installed)")

_SIGNATURE = (
    "const void*, int, const i64*, const {t}*, const {t}*, const float*, const i64*, const float*, "
    "const int*, const float*, const i64*, const i64*, u64, u64, const i64*, const i64*, u64, int, "
    "i64*, i64*, int*, i64, int, int, int, int, int, int"
)


def _wrapper() -> str:
    lines = [f'#include "{_cuda_build.KERNEL_HEADER}"', "namespace specsample {"]
    for name in _cupy_serving.kernel_names().values():
        ctype = name[name.index("<") + 1 : -1].removeprefix("specsample::")
        lines.append(
            f"template __global__ void verify_serving_kernel<{ctype}>("
            + _SIGNATURE.format(t=ctype)
            + ");"
        )
        lines.append(
            f"template __global__ void verify_serving_split_kernel<{ctype}>("
            + _SIGNATURE.format(t=ctype)
            + ", u64*, u32*, u32*, int);"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def test_serving_kernel_compiles_for_sm90_without_spills(tmp_path):
    source = tmp_path / "serving.cu"
    source.write_text(_wrapper())
    result = subprocess.run(
        [
            NVCC, "-arch=sm_90", "-cubin", "-std=c++17", "-DSPECSAMPLE_CLUSTERS=1",
            f"-I{_cuda_build.csrc_dir()}", "-Xptxas", "-v", str(source),
            "-o", str(tmp_path / "serving.cubin"),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stderr
    entries = re.findall(r"Compiling entry function '(\w+)'", log)
    assert sum("verify_serving_kernel" in e for e in entries) == 3, entries
    assert sum("verify_serving_split_kernel" in e for e in entries) == 3, entries
    spills = [int(s) for s in re.findall(r"(\d+) bytes spill stores", log)]
    assert spills and max(spills) == 0, log[-4000:]
    registers = [int(r) for r in re.findall(r"Used (\d+) registers", log)]
    assert registers and max(registers) <= 128, registers  # 512 threads per block fit an SM
