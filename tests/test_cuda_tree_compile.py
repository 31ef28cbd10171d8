"""The tree kernel (``csrc/kernel_tree.cuh``) without a GPU: its constants against the Python side,
and an sm_90 compile with nvcc of every instantiation the backends launch (skipped without nvcc).

The compile goes through ``verify_kernel.cuh`` (what the cuda-cpp extension compiles) and through
``kernel_tree.cuh`` alone (what the cupy backend hands NVRTC); ptxas must report no spills and at
most the registers that 512-thread blocks allow.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess

import pytest
from specsample import Status
from specsample.backends import _cuda_build, _cuda_tree, _cupy_tree

CSRC = _cuda_build.csrc_dir()
TREE = (CSRC / "kernel_tree.cuh").read_text()
TYPES = ("float", "specsample::f16", "specsample::bf16")
SIG = (
    "(const void*, int, const specsample::i64*, const specsample::i64*, const void*, const void*, "
    "const float*, specsample::i64*, specsample::i64*, specsample::i64*, int*, specsample::i64, "
    "int, int, int, int, int, specsample::u64, specsample::u64, const specsample::i64*, "
    "const specsample::i64*, specsample::u64, int)"
)


def _constant(name: str) -> int:
    m = re.search(rf"constexpr (?:int|u32) {name} = (\w+);", TREE)
    assert m, f"{name} not found in kernel_tree.cuh"
    return int(m.group(1), 0)


def test_constants_match_the_python_side():
    assert _constant("kMaxTreeNodes") == _cuda_tree.MAX_TREE_NODES == _cuda_build.MAX_K
    assert _constant("kTreeThreads") == _cupy_tree.TREE_THREADS
    assert _constant("kTreeBadTree") == int(Status.BAD_TREE)
    assert _constant("kTreeRepeated") == int(Status.REPEATED_SIBLING)
    # 1024 slots of super-wave sums, a whole number of warps per block
    assert _constant("kTreeThreads") % 32 == 0 and _constant("kTreeSlots") >= 1


def test_tree_header_includes_no_system_header():
    """NVRTC compiles kernel_tree.cuh alone (cupy): only the kernel's own headers."""
    includes = re.findall(r'#include\s+([<"][^>"]+[>"])', TREE)
    want = ['"kernel_cluster.cuh"', '"kernel_common.cuh"', '"kernel_philox.cuh"']
    assert includes == want, includes


def test_op_schema_matches_the_binding():
    """The schema the binding registers is the one the Python side documents."""
    source = (CSRC / "verify_torch_tree.cu").read_text()
    m = re.search(r'm\.def\(\s*((?:"[^"]*"\s*)+)\);\s*}\s*TORCH_LIBRARY_IMPL\(specsample, CUDA, m\) '
                  r'{ m\.impl\("verify_tree"', source)  # fmt: skip
    assert m, "verify_tree's m.def not found in verify_torch_tree.cu"
    schema = "".join(re.findall(r'"([^"]*)"', m.group(1)))
    assert schema == _cuda_tree.TREE_OP_SCHEMA


def test_cluster_size_rule():
    """Blocks per request: 16 up to B = 4, then as many as one block per SM allows (132 SMs)."""
    pick = _cuda_tree.tree_cluster_size
    got = {B: pick(B, 132, True) for B in (1, 4, 5, 8, 16, 17, 33, 66, 67, 256)}
    assert got == {1: 16, 4: 16, 5: 8, 8: 8, 16: 8, 17: 4, 33: 4, 66: 2, 67: 1, 256: 1}
    assert pick(1, 132, False) == 1
    assert set(got.values()) <= set(_cuda_tree.TREE_CLUSTER_SIZES)
    # the C++ copy states the same rule
    source = (CSRC / "verify_torch_tree.cu").read_text()
    assert "if (B <= 4) return 16;" in source and "for (int cl = 8; cl > 1; cl /= 2)" in source


def test_tree_claims_are_what_the_gpu_conformance_run_proved():
    """Both modes, every draft sampling and both tree rules: each passed every tree.* check at
    the full level on an sm_90 GPU (a claim widened later needs that run again)."""
    caps = _cuda_build.KERNEL_CAPABILITIES
    assert caps.tree_modes == ("random", "greedy")
    assert caps.tree_sampling == ("target_only", "with_replacement", "without_replacement")
    assert caps.tree_rules == ("token", "traversal")


def _nvcc() -> str | None:
    return _cuda_build.find_nvcc() or shutil.which("nvcc")


def _compile(tmp_path, header: str, types: tuple[str, ...]) -> str:
    nvcc = _nvcc()
    lines = [f'#include "{header}"']
    for ctype in types:
        for has_p in ("false", "true"):
            for aligned in ("true", "false"):
                flags = f"{has_p}, {aligned}"
                lines.append(
                    f"template __global__ void specsample::verify_tree_kernel<{ctype}, {flags}>{SIG};"
                )
                for cl in _cuda_tree.TREE_CLUSTER_SIZES[1:]:
                    lines.append(
                        "template __global__ void "
                        f"specsample::verify_tree_cluster_kernel<{ctype}, {cl}, {flags}>{SIG};"
                    )
    src = tmp_path / "tree_wrapper.cu"
    src.write_text("\n".join(lines) + "\n")
    cmd = [nvcc, "-arch=sm_90", "-cubin", "-std=c++17", "-DSPECSAMPLE_CLUSTERS=1", f"-I{CSRC}",
           "-Xptxas", "-v", "-o", str(tmp_path / "tree.cubin"), str(src)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stderr


def _resources(log: str) -> list[tuple[int, int, int]]:
    """``(registers, spill stores, spill loads)`` of each tree kernel in a ptxas -v log."""
    found = []
    for block in log.split("Compiling entry function")[1:]:
        if "verify_tree" not in block.split("\n", 1)[0]:
            continue
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
        regs = re.search(r"Used (\d+) registers", block)
        assert spill and regs, block
        found.append((int(regs.group(1)), int(spill.group(1)), int(spill.group(2))))
    return found


# Each case takes one to two minutes on two cores: CI compiles float32 through the tree header
# alone; SPECSAMPLE_NVCC_FULL=1 adds every dtype through the extension's header.
_CASES = [("kernel_tree.cuh", ("float",))]
if os.environ.get("SPECSAMPLE_NVCC_FULL") == "1":
    _CASES += [("verify_kernel.cuh", (t,)) for t in TYPES]


@pytest.mark.slow
@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found (the CUDA toolkit compiles the kernel)")
@pytest.mark.parametrize(("header", "types"), _CASES)
def test_tree_kernel_compiles_for_sm90_without_spills(tmp_path, header, types):
    """Every instantiation (cluster size x draft probabilities x load path) of each dtype through
    the extension's header; float32 through the header alone."""
    found = _resources(_compile(tmp_path, header, types))
    assert len(found) == 4 * len(types) * len(_cuda_tree.TREE_CLUSTER_SIZES), found
    for regs, stores, loads in found:
        assert stores == 0 and loads == 0, found
        assert regs <= 128, found  # 512 threads per block: at most 128 registers each


# ---- the traversal kernel (csrc/kernel_traversal.cuh) ---------------------------------------------
TRAVERSAL = (CSRC / "kernel_traversal.cuh").read_text()


def test_traversal_header_includes_only_the_tree_kernel():
    """NVRTC compiles kernel_traversal.cuh alone (cupy): the tree kernel and nothing else."""
    includes = re.findall(r'#include\s+([<"][^>"]+[>"])', TRAVERSAL)
    assert includes == ['"kernel_tree.cuh"'], includes
    assert _cupy_tree.TREE_HEADER == "kernel_traversal.cuh"


def _traversal_wrapper(tmp_path, types: tuple[str, ...]):
    lines = ['#include "kernel_traversal.cuh"']
    for ctype in types:
        for aligned in ("true", "false"):
            lines.append(
                f"template __global__ void specsample::verify_traversal_kernel<{ctype}, {aligned}>{SIG};"
            )
    src = tmp_path / "traversal_wrapper.cu"
    src.write_text("\n".join(lines) + "\n")
    return src


@pytest.mark.slow
@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found (the CUDA toolkit compiles the kernel)")
def test_traversal_kernel_compiles_for_sm90_without_spills_or_double_fma(tmp_path):
    """Both load paths of every dtype through the header alone (what NVRTC compiles): no spills,
    at most 128 registers (512-thread blocks), and no fused multiply-add in double anywhere in the
    PTX, so every ``w * q - p`` is rounded twice, as the float64 reference rounds it."""
    src = _traversal_wrapper(tmp_path, TYPES)
    base = [_nvcc(), "-arch=sm_90", "-std=c++17", f"-I{CSRC}"]
    out = subprocess.run(
        [*base, "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "t.cubin"), str(src)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    found = []
    for block in out.stderr.split("Compiling entry function")[1:]:
        if "verify_traversal" not in block.split("\n", 1)[0]:
            continue
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
        regs = re.search(r"Used (\d+) registers", block)
        assert spill and regs, block
        found.append((int(regs.group(1)), int(spill.group(1)), int(spill.group(2))))
    assert len(found) == 2 * len(TYPES), found
    for regs, stores, loads in found:
        assert stores == 0 and loads == 0 and regs <= 128, found
    ptx = tmp_path / "t.ptx"
    out = subprocess.run([*base, "-ptx", "-o", str(ptx), str(src)], capture_output=True, text=True,
                         timeout=1200)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    text = ptx.read_text()
    assert "mul.rn.f64" in text and "fma.rn.f64" not in text


# ---- the cupy backend's tree modules (no GPU: a stand-in for cupy and NVRTC) ------------------------
def test_cupy_tree_modules_one_per_dtype_compiled_in_parallel(monkeypatch):
    """The tree kernels are compiled as one NVRTC program per dtype, all three at once, and every
    kernel the launcher can ask for is taken from its dtype's module (clusters above 8 allowed
    their non-portable size)."""
    import sys
    import threading
    import types
    from contextlib import nullcontext

    from specsample.backends import _nvrtc

    programs, attributes, threads = [], [], set()
    barrier = threading.Barrier(3, timeout=10)  # fails unless the three compile at once

    class Module:
        def __init__(self, names):
            self.names = names

        def get_function(self, lowered):
            assert lowered.startswith("lowered:") and lowered[8:] in self.names
            return types.SimpleNamespace(ptr=lowered)

    def compile_module(code, options, names, device_id):
        threads.add(threading.get_ident())
        programs.append(tuple(names))
        barrier.wait()
        return Module(names), {name: "lowered:" + name for name in names}

    cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(
            getDeviceProperties=lambda i: {"major": 9, "minor": 0, "multiProcessorCount": 132}
        ),
        Device=lambda i: nullcontext(),
        driver=types.SimpleNamespace(funcSetAttribute=lambda ptr, a, v: attributes.append(ptr)),
    )
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setattr(_nvrtc, "compile_module", compile_module)
    monkeypatch.setattr(_cupy_tree, "_modules", {})
    modules, kernels, num_sms, clusters = _cupy_tree._module(0)
    assert len(modules) == 3 and len(programs) == 3 and len(threads) == 3
    assert num_sms == 132 and clusters
    for names in programs:  # each program holds one dtype's kernels only
        ctypes = {name.split("<")[1].split(",")[0] for name in names}
        assert len(ctypes) == 1, ctypes
    sizes = _cuda_tree.TREE_CLUSTER_SIZES
    assert len(kernels) == 3 * (len(sizes) * 4 + 2)
    for dtype in _cupy_tree._KERNEL_TYPES:
        for cl, has_p, aligned in itertools.product(sizes, (False, True), (False, True)):
            assert (dtype, cl, has_p, aligned, False) in kernels
        assert (dtype, 1, True, True, True) in kernels and (dtype, 1, True, False, True) in kernels
    big = [key for key in kernels if key[1] > 8]
    assert sorted(attributes) == sorted(kernels[key].ptr for key in big) and big
