"""One launch configuration: the C++ choice (csrc/launch_config.h, used by cuda-cpp) and the Python
copy the CuPy backend uses (specsample.backends._cuda_build) agree on every shape of a grid.

launch_config.h is plain C++ (no CUDA, no torch), so the host's C++ compiler builds it into a small
program that prints its choices; no GPU is needed.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess

import pytest
from specsample.backends import _cuda_build

DRIVER = r"""
#include <cstdio>
#include "launch_config.h"
int main() {
  long long B, K, V, addr_q, addr_p;
  int greedy, sms, clusters, elem;
  while (std::scanf("%lld %lld %lld %d %d %d %d %lld %lld", &B, &K, &V, &greedy, &sms, &clusters,
                    &elem, &addr_q, &addr_p) == 9) {
    const specsample::LaunchConfig c =
        specsample::choose_config(B, K, V, greedy != 0, sms, clusters != 0, elem);
    const int split = specsample::choose_split(B, K, V, greedy != 0, sms, elem);
    const bool aligned = specsample::rows_aligned(V, elem, (uintptr_t)addr_q, (uintptr_t)addr_p,
                                                  greedy != 0);
    std::printf("%d %d %d %d %d\n", c.cluster, c.threads, c.rows_per_step, split, aligned ? 1 : 0);
  }
  return 0;
}
"""

# B = 0 returns before any launch choice is made (both launchers), so it is not in the grid.
BATCHES = (1, 2, 3, 4, 5, 8, 9, 15, 16, 17, 31, 32, 33, 64, 127, 128, 129, 256, 1024, 4096)
KS = (0, 1, 4, 8, 16, 100, 128)
VOCABS = (1, 7, 1000, 4099, 12288, 12289, 24576, 32000, 49152, 98304, 128256, 151936, 262144)
SMS = (1, 78, 114, 132)
ADDRS = ((4096, 8192), (4096, 0), (4100, 8192), (4096, 8196))


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler on this machine (c++, g++ or $CXX) to build launch_config.h")
    d = tmp_path_factory.mktemp("launch_config")
    (d / "driver.cpp").write_text(DRIVER)
    exe = d / "driver"
    subprocess.run(
        [
            cxx,
            "-std=c++17",
            "-O1",
            f"-I{_cuda_build.csrc_dir()}",
            str(d / "driver.cpp"),
            "-o",
            str(exe),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return exe


def test_cpp_and_python_choose_the_same_launch(driver):
    cases = list(itertools.product(BATCHES, KS, VOCABS, (0, 1), SMS, (0, 1), (2, 4), ADDRS))
    stdin = "".join(
        f"{B} {K} {V} {g} {sms} {cl} {elem} {aq} {ap}\n"
        for B, K, V, g, sms, cl, elem, (aq, ap) in cases
    )
    out = subprocess.run([str(driver)], input=stdin, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == len(cases)
    for (B, K, V, g, sms, cl, elem, (aq, ap)), line in zip(cases, lines, strict=True):
        want = (
            *_cuda_build.choose_config(B, K, V, bool(g), sms, bool(cl), elem),
            _cuda_build.choose_split(B, K, V, bool(g), sms, elem),
            int(_cuda_build.rows_aligned(V, elem, aq, ap, bool(g))),
        )
        got = tuple(int(x) for x in line.split())
        assert got == want, f"B={B} K={K} V={V} greedy={g} sms={sms} clusters={cl} elem={elem}"


def test_the_launcher_uses_the_shared_header():
    common = (_cuda_build.csrc_dir() / "torch_common.cuh").read_text()
    assert '#include "launch_config.h"' in common
    for name in _cuda_build.TORCH_SOURCES:
        text = (_cuda_build.csrc_dir() / name).read_text()
        assert '#include "torch_common.cuh"' in text or '#include "torch_tree.cuh"' in text, name
        assert "LaunchConfig choose_config(" not in text and "int choose_split(" not in text
    header = (_cuda_build.csrc_dir() / "launch_config.h").read_text()
    assert f"kLaunchMaxStepRows = {_cuda_build.MAX_STEP_ROWS};" in header
    assert f"kSplitMaxBytes = int64_t({_cuda_build.SPLIT_MAX_BYTES >> 20}) << 20" in header
