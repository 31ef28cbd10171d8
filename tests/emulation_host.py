"""Build and feed the host programs of tests/cuda_emulation/ (a kernel's CUDA source compiled by
the host C++ compiler with ``cuda_host.h`` standing in for the CUDA built-ins)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import torch
from specsample.backends import _cuda_build

HERE = Path(__file__).parent / "cuda_emulation"
CXX = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def build_host_program(source: str, out_dir: Path, *flags: str) -> Path:
    """Compile ``tests/cuda_emulation/<source>`` into ``out_dir``; the compiler's errors on failure."""
    exe = out_dir / Path(source).stem
    result = subprocess.run(
        [
            CXX or "c++", "-std=c++17", "-O1", "-w", *flags, f"-I{_cuda_build.csrc_dir()}",
            f"-I{HERE}", str(HERE / source), "-o", str(exe),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return exe


def write_tensor(directory: Path, name: str, t: torch.Tensor) -> None:
    """``<directory>/<name>.bin``: the tensor's raw bytes (bfloat16 as its 16-bit pattern)."""
    raw = t.contiguous()
    if raw.dtype == torch.bfloat16:
        raw = raw.view(torch.int16)
    (directory / f"{name}.bin").write_bytes(raw.numpy().tobytes())
