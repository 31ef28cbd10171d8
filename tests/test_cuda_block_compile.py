"""The block-verification kernel (csrc/kernel_block.cuh) compiles for an H100 (sm_90) without a GPU.

``nvcc -cubin`` compiles a wrapper that includes ``csrc/verify_kernel.cuh`` exactly as NVRTC sees it
(no system header, ``-DSPECSAMPLE_CLUSTERS=1``), instantiating the block kernels of every dtype,
load path and cluster size the backends launch, and the split kernel of every dtype and load path;
ptxas must report no spills, and at most 128 registers per thread for the cluster kernels
(``__launch_bounds__(512, 1)``; the split kernel's 256 threads allow 255). A second test compiles
every translation unit of the torch binding (``csrc/verify_torch*.cu``; ``verify_torch_block.cu``
holds the ``specsample::verify_block`` op) against the installed torch's headers and links them.
Both skip, saying why, where nvcc (or the headers) are missing, as on CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from specsample.backends import _cuda_build

TYPES = ("float", "specsample::f16", "specsample::bf16")


def _nvcc() -> str:
    nvcc = _cuda_build.find_nvcc() or shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found (the offline sm_90 compile needs the CUDA toolkit)")
    return nvcc


def _instantiations() -> str:
    lines = ['#include "verify_kernel.cuh"']
    params = "SPECSAMPLE_KERNEL_PARAMS"
    for t in TYPES:
        for aligned in ("true", "false"):
            lines.append(
                f"template __global__ void specsample::verify_block_kernel<{t}, {aligned}>({params});"
            )
            for cl in _cuda_build.CLUSTER_SIZES[1:]:
                lines.append(
                    "template __global__ void specsample::verify_block_cluster_kernel"
                    f"<{t}, {cl}, {aligned}>({params});"
                )
            lines.append(
                f"template __global__ void specsample::verify_block_split_kernel<{t}, {aligned}>"
                f"({params}, int, double*, specsample::u32*);"
            )
    return "\n".join(lines) + "\n"


def test_block_kernel_compiles_for_sm90_without_spills(tmp_path: Path):
    nvcc = _nvcc()
    src = tmp_path / "block.cu"
    src.write_text(_instantiations())
    cmd = [
        nvcc,
        "-arch=sm_90",
        "-cubin",
        "-std=c++17",
        "-DSPECSAMPLE_CLUSTERS=1",
        f"-I{_cuda_build.csrc_dir()}",
        "-Xptxas",
        "-v",
        str(src),
        "-o",
        str(tmp_path / "block.cubin"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    log = res.stderr
    kernels = re.findall(r"Compiling entry function '(\w*verify_block\w*)'", log)
    assert len(kernels) == len(TYPES) * 2 * (len(_cuda_build.CLUSTER_SIZES) + 1), kernels
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", log)]
    registers = [int(n) for n in re.findall(r"Used (\d+) registers", log)]
    assert len(spills) == len(kernels) and len(registers) == len(kernels), log[-4000:]
    assert max(spills) == 0, log[-4000:]
    limits = [255 if "split" in name else 128 for name in kernels]
    assert all(r <= lim for r, lim in zip(registers, limits, strict=True)), registers


@pytest.mark.parametrize(
    "arch, defines",
    [
        ("sm_90", ("-DSPECSAMPLE_CLUSTERS=1", "-DSPECSAMPLE_BLOCK_PREFETCH_BYTES=0")),
        ("sm_90", ("-DSPECSAMPLE_CLUSTERS=1", "-DSPECSAMPLE_BLOCK_WAVE=1")),
        ("sm_90", ("-DSPECSAMPLE_CLUSTERS=1", "-DSPECSAMPLE_BLOCK_SPLIT_ROWS=3")),
        ("sm_90", ("-DSPECSAMPLE_CLUSTERS=1", "-DSPECSAMPLE_BLOCK_PICK_VECS=1")),
        ("sm_80", ()),
    ],
    ids=["no-prefetch", "wave-1", "split-rows-3", "pick-vecs-1", "sm_80-no-clusters"],
)
def test_block_kernel_variants_compile(tmp_path: Path, arch: str, defines: tuple[str, ...]):
    """The knobs' non-default values, and the one-block kernel for a GPU without clusters."""
    nvcc = _nvcc()
    src = tmp_path / "variant.cu"
    lines = ['#include "verify_kernel.cuh"']
    for t in ("float", "specsample::bf16"):
        lines.append(
            f"template __global__ void specsample::verify_block_kernel<{t}, true>"
            "(SPECSAMPLE_KERNEL_PARAMS);"
        )
        lines.append(
            f"template __global__ void specsample::verify_block_split_kernel<{t}, false>"
            "(SPECSAMPLE_KERNEL_PARAMS, int, double*, specsample::u32*);"
        )
        if defines:
            lines.append(
                f"template __global__ void specsample::verify_block_cluster_kernel<{t}, 8, false>"
                "(SPECSAMPLE_KERNEL_PARAMS);"
            )
    src.write_text("\n".join(lines) + "\n")
    cmd = [nvcc, f"-arch={arch}", "-cubin", "-std=c++17", *defines]
    cmd += [
        f"-I{_cuda_build.csrc_dir()}",
        "-Xptxas",
        "-v",
        str(src),
        "-o",
        str(tmp_path / "v.cubin"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert max(int(n) for n in re.findall(r"(\d+) bytes spill stores", res.stderr)) == 0


def _torch_include() -> Path:
    torch = pytest.importorskip("torch")
    inc = Path(torch.__file__).parent / "include"
    if not (inc / "ATen" / "cuda" / "CUDAGeneratorImpl.h").is_file():
        pytest.skip("this torch ships no CUDA headers")
    return inc


# The CUDA math libraries' headers the torch CUDA headers include for types the binding never
# uses; the toolkit on a build machine may lack them, so the test declares just those types.
_STUBS = {
    "cublas_v2.h": "typedef struct cublasContext* cublasHandle_t;\ntypedef int cublasStatus_t;\n",
    "cublasLt.h": "typedef struct cublasLtContext* cublasLtHandle_t;\n",
    "cusparse.h": "typedef struct cusparseContext* cusparseHandle_t;\ntypedef int cusparseStatus_t;\n",
    "cusolver_common.h": "typedef int cusolverStatus_t;\n",
    "cusolverDn.h": '#include "cusolver_common.h"\n'
    "typedef struct cusolverDnContext* cusolverDnHandle_t;\n",
    "c10/cuda/impl/cuda_cmake_macros.h": "",
}


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("SPECSAMPLE_NVCC_FULL") != "1",
    reason="set SPECSAMPLE_NVCC_FULL=1: 7-10 minutes of nvcc on two cores (specsample build "
    "compiles the same files on every GPU machine)",
)
def test_torch_binding_compiles_for_sm90(tmp_path: Path):
    """Every translation unit of the binding (every op) compiles for sm_90 against the installed
    torch's headers, and the objects link together: no symbol defined twice, none of specsample's
    left undefined (torch's and CUDA's stay undefined until the extension is loaded)."""
    nvcc = _nvcc()
    inc = _torch_include()
    stubs = tmp_path / "stubs"
    for name, text in _STUBS.items():
        path = stubs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    objects = []
    for source in _cuda_build.TORCH_SOURCES:
        obj = tmp_path / source.replace(".cu", ".o")
        cmd = [
            nvcc,
            "-arch=sm_90",
            "-std=c++17",
            "-DSPECSAMPLE_CLUSTERS=1",
            "-D_GLIBCXX_USE_CXX11_ABI=1",
            f"-I{_cuda_build.csrc_dir()}",
            f"-I{stubs}",
            f"-I{inc}",
            f"-I{inc / 'torch' / 'csrc' / 'api' / 'include'}",
            "-c",
            str(_cuda_build.source_path(source)),
            "-o",
            str(obj),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"{source}: {res.stderr[-4000:]}"
        objects.append(str(obj))
    # a relocatable link of all of them: a symbol defined twice fails it, and no specsample
    # symbol may stay undefined (the tree launches of each dtype come from their own file)
    ld = shutil.which("ld")
    if ld is None:
        pytest.skip("ld not found (the link check needs binutils)")
    linked = tmp_path / "binding.o"
    res = subprocess.run([ld, "-r", *objects, "-o", str(linked)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    nm = subprocess.run(["nm", "-C", "-u", str(linked)], capture_output=True, text=True)
    assert nm.returncode == 0, nm.stderr
    assert not [line for line in nm.stdout.splitlines() if "specsample::" in line], nm.stdout
