"""What the two CUDA backends (``cuda-cpp`` and ``cupy``) share.

- where the kernel sources are (package data of ``specsample.csrc``) and a hash of them;
- the cheap availability checks (no build, no cupy import);
- the just-in-time build of the torch extension (``cuda-cpp``), cached in torch's extension
  directory, one build per (sources, GPU architecture);
- the automatic launch configuration (a Python copy of ``choose_config`` in
  ``csrc/launch_config.h``, kept equal over a whole grid by ``tests/test_launch_config.py``: the
  CuPy backend launches the same kernels the same way);
- a pure-Python Philox4x32-10 giving the uniforms the kernel draws, so tests can check the
  in-kernel random numbers against the float64 reference token for token.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from specsample.contract import Capabilities

KERNEL_HEADER = "verify_kernel.cuh"
TORCH_SOURCE = "verify_torch.cu"  # the binding's main file (specsample::verify, TORCH_LIBRARY)
# Every translation unit of the binding: ninja compiles them in parallel (csrc/torch_common.cuh)
TORCH_SOURCES = (
    TORCH_SOURCE,
    "verify_torch_block.cu",
    "verify_torch_serving.cu",
    "verify_torch_tree.cu",
    "verify_torch_tree_float.cu",
    "verify_torch_tree_half.cu",
    "verify_torch_tree_bfloat16.cu",
)
# The host headers they include besides the kernel's
HOST_HEADERS = ("launch_config.h", "torch_common.cuh", "torch_tree.cuh")
OP_NAME = "specsample::verify"
OP_SCHEMA = (
    "verify(Tensor draft_token_ids, Tensor? draft_probs, Tensor target_probs, Tensor? uniforms, "
    "Generator? generator, bool greedy, int cluster=0, int threads=0, int rows_per_step=0, "
    "int split=-1) -> (Tensor, Tensor, Tensor)"
)
MAX_K = 128  # kMaxK in verify_kernel.cuh

# What the shared kernel supports; cuda-cpp and cupy launch the same kernel, so they claim the same.
KERNEL_CAPABILITIES = Capabilities(
    modes=("random", "greedy"),
    dtypes=("float32", "float16", "bfloat16"),
    devices=("cuda",),
    needs_gpu=True,
    max_vocab=2**31 - 1,
    max_k=MAX_K,
    fused=True,
    launches_per_call=1,
    cuda_graphs=True,
    host_sync_free=True,
    status_flags=True,
    rules=("token", "block"),
    serving=True,  # verify_serving_kernel (csrc/kernel_serving.cuh)
    # verify_tree: csrc/kernel_tree.cuh (token rule) and csrc/kernel_traversal.cuh (traversal
    # rule, random mode), one launch per call; every tree.* check passes at the full level on sm_90
    tree_modes=("random", "greedy"),
    tree_sampling=("target_only", "with_replacement", "without_replacement"),
    tree_rules=("token", "traversal"),
)
MAX_STEP_ROWS = 16  # kMaxStepRows
CLUSTER_SIZES = (1, 2, 4, 8, 16)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
def csrc_dir() -> Path:
    """The directory holding the CUDA sources (works for regular and editable installs)."""
    return Path(str(importlib.resources.files("specsample.csrc")))


def source_path(name: str) -> Path:
    path = csrc_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"specsample CUDA source {name!r} not found in {csrc_dir()} (broken installation?)"
        )
    return path


def kernel_sources() -> tuple[str, ...]:
    """The kernel's headers: verify_kernel.cuh and the kernel_*.cuh parts it includes."""
    parts = sorted(p.name for p in csrc_dir().glob("kernel_*.cuh"))
    return (KERNEL_HEADER, *parts)


def sources_hash(*names: str) -> str:
    """SHA-256 (hex) over the named source files, in order."""
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode())
        h.update(source_path(name).read_bytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Availability (cheap: no build, no cupy import)
# --------------------------------------------------------------------------------------------
def torch_cuda_reason() -> str:
    """``""`` when torch can run CUDA kernels here, else why not."""
    import torch

    if torch.version.cuda is None:
        return "torch built without CUDA"
    try:
        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            return "no CUDA device"
    except Exception as exc:  # a broken driver install
        return f"no CUDA device ({type(exc).__name__}: {exc})"
    return ""


def find_nvcc() -> str | None:
    """Path of nvcc as torch's extension builder will find it (CUDA_HOME/CUDA_PATH, PATH, default)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            candidate = Path(home) / "bin" / "nvcc"
            if candidate.is_file():
                return str(candidate)
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def ninja_reason() -> str:
    if shutil.which("ninja"):
        return ""
    try:
        import ninja  # noqa: F401  (the PyPI package puts the binary next to the interpreter)

        return ""
    except ImportError:
        return "ninja not found (pip install ninja)"


# --------------------------------------------------------------------------------------------
# The torch extension (cuda-cpp)
# --------------------------------------------------------------------------------------------
_build_lock = threading.Lock()
_built_path: str | None = None


def device_arch() -> tuple[int, int]:
    import torch

    return torch.cuda.get_device_capability()


def arch_flags(major: int, minor: int) -> list[str]:
    """nvcc flags for exactly this device's architecture (sm_90 on Hopper), clusters from sm_90."""
    arch = f"{major}{minor}"
    flags = [f"-gencode=arch=compute_{arch},code=sm_{arch}"]
    if major >= 9:
        flags.append("-DSPECSAMPLE_CLUSTERS=1")
    return flags


#: nvcc flags of the torch extension. No ``-std=``: torch.utils.cpp_extension then adds the C++
#: standard torch itself was built with (C++20 in recent releases, whose headers refuse C++17), so
#: torch's headers compile here exactly as they did for its libraries.
CUDA_CFLAGS = ("-O3", "-lineinfo")


def torch_version() -> str:
    """The installed torch's version string (``2.11.0+cu130``)."""
    import torch

    return str(torch.__version__)


def extension_name(major: int, minor: int) -> str:
    """The extension's name: the architecture and a hash of every source file it is built from
    and of the nvcc flags, so a library of that name is exactly this build (and is loaded as it
    is, without running ninja, by :func:`build_extension`)."""
    h = hashlib.sha256(sources_hash(*kernel_sources(), *HOST_HEADERS, *TORCH_SOURCES).encode())
    h.update(" ".join((*CUDA_CFLAGS, *arch_flags(major, minor))).encode())
    # the headers, the C++ standard and the ABI come with torch: a library built against one torch
    # version is not loaded by another
    h.update(torch_version().encode())
    return f"specsample_verify_sm{major}{minor}_{h.hexdigest()[:12]}"


@contextlib.contextmanager
def _exclusive_build(build_dir: str) -> Iterator[None]:
    """Hold an OS file lock on ``build_dir`` for the build, and clear a stale torch build lock.

    torch marks a build in progress with a ``lock`` file that only a finished build removes: after
    a build is killed (Ctrl-C, a timeout) every later build waits on it forever. The OS releases
    this lock when its process dies, so while it is held no other specsample build is running in
    ``build_dir`` (the directory's name is specsample's own) and a ``lock`` file left there is
    stale. Without ``fcntl`` (Windows) torch's lock alone applies.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    os.makedirs(build_dir, exist_ok=True)
    with open(os.path.join(build_dir, "specsample-build.lock"), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"specsample: waiting for another specsample build in {build_dir}…",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # no locks on this file system: torch's lock alone applies
            yield
            return
        try:
            stale = os.path.join(build_dir, "lock")
            if os.path.exists(stale):
                os.remove(stale)
                print(
                    f"specsample: removed the lock of an interrupted build in {build_dir}",
                    file=sys.stderr,
                    flush=True,
                )
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_built(library: str) -> bool:
    """Load an extension library built earlier; False (and nothing loaded) when it cannot be
    loaded, e.g. a file cut short by an interrupted link, so that the caller rebuilds it."""
    import torch

    try:
        torch.ops.load_library(library)
    except (OSError, RuntimeError):
        return False
    return True


def build_extension(verbose: bool = False) -> str:
    """Build (first use only) and load the torch extension; return the shared library's path.

    Prints one line on stderr when it actually compiles. A compile error propagates with the
    compiler's output (torch includes it in the RuntimeError it raises).
    """
    global _built_path
    with _build_lock:
        if _built_path is not None:
            return _built_path
        from torch.utils import cpp_extension

        major, minor = device_arch()
        name = extension_name(major, minor)
        build_dir = cpp_extension._get_build_directory(name, verbose)
        library = os.path.join(build_dir, f"{name}.so")
        if os.path.exists(library) and _load_built(library):
            # built before for exactly these sources (the name holds their hash): no ninja run
            _built_path = library
            return _built_path
        if not os.path.exists(library):
            print(
                f"specsample: building the CUDA extension (first use only, sm_{major}{minor})…",
                file=sys.stderr,
                flush=True,
            )
        try:
            with _exclusive_build(build_dir):
                path = cpp_extension.load(
                    name=name,
                    sources=[str(source_path(source)) for source in TORCH_SOURCES],
                    extra_include_paths=[str(csrc_dir())],
                    extra_cflags=["-O3"],
                    extra_cuda_cflags=[*CUDA_CFLAGS, *arch_flags(major, minor)],
                    build_directory=build_dir,
                    is_python_module=False,
                    verbose=verbose,
                )
        except Exception as exc:
            raise RuntimeError(
                f"specsample: building the CUDA extension {name!r} failed; the compiler's output "
                f"is above or in the chained error:\n{exc}"
            ) from exc
        _built_path = str(path) if path else library
        return _built_path


# --------------------------------------------------------------------------------------------
# Launch configuration (copy of choose_config in csrc/launch_config.h; tests/test_launch_config.py)
# --------------------------------------------------------------------------------------------
def choose_config(
    B: int, K: int, V: int, greedy: bool, num_sms: int, clusters: bool, elem_bytes: int = 4
) -> tuple[int, int, int]:
    """``(cluster, threads, rows_per_step)`` for a call; identical to the C++ ``choose_config``.

    ``elem_bytes`` is the probability dtype's size (4 for float32, 2 for float16/bfloat16).
    """
    cluster, threads, rows = 1, 512, 1
    if clusters:
        if greedy:
            if B <= 16:
                cluster = 16
                if B > 4:
                    threads = 256
            else:
                # at most 48 KB of a row per block, clusters of up to 8 (see launch_config.h)
                while cluster < 8 and V * elem_bytes > cluster * 49152:
                    cluster *= 2
                threads = 256 if cluster >= 4 else 512
        elif B <= 8:
            cluster, threads = 16, 512 if B <= 4 else 256
        elif B <= 16:
            cluster, threads = 16, 128
        elif B <= 32:
            cluster, threads = 8, 256
        elif B < 128:
            cluster, threads = 4, 256
    if greedy and B <= 16 and cluster >= 4:
        rows = MAX_STEP_ROWS  # steps of n0, 2 n0, 4 n0, ... rows at small batch
    return cluster, threads, rows


SPLIT_MAX_BYTES = 3 << 20  # kSplitMaxBytes


def choose_split(B: int, K: int, V: int, greedy: bool, num_sms: int, elem_bytes: int = 4) -> int:
    """Greedy mode: chunks per row of the split kernel, or 0 for the cluster kernel.

    Identical to the C++ ``choose_split``: the split kernel reads every row of every request at
    once (about one block per SM) and serves only calls whose ``B * (K+1)`` rows together hold at
    most :data:`SPLIT_MAX_BYTES`.
    """
    rows = B * (K + 1)
    if not greedy or rows * V * elem_bytes > SPLIT_MAX_BYTES:
        return 0
    return max(1, num_sms // rows)


def rows_aligned(V: int, elem_bytes: int, q_ptr: int, p_ptr: int, greedy: bool) -> bool:
    """Whether a call takes the kernels' 16-byte load path; identical to the C++ launcher.

    Every kernel is built once per load path (the ``ALIGNED`` template argument): one 16-byte load
    per vector needs ``V * elem_bytes`` to be a multiple of 16 and the base pointer of every
    tensor the call streams on 16 bytes (``p_ptr`` 0: no draft probabilities; greedy mode never
    reads them). Any other call takes the element-wise path.
    """
    return (
        (V * elem_bytes) % 16 == 0 and q_ptr % 16 == 0 and (greedy or p_ptr == 0 or p_ptr % 16 == 0)
    )


def philox_increment(K: int) -> int:
    """Generator offset consumed by one call with K drafts: 4 * ceil((K+1)/4)."""
    return ((K + 1 + 3) // 4) * 4


# --------------------------------------------------------------------------------------------
# Philox4x32-10 in Python (tests; small sizes)
# --------------------------------------------------------------------------------------------
_M0, _M1, _W0, _W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
_MASK = 0xFFFFFFFF


def philox4x32_10(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, ...]:
    """Philox4x32 with 10 rounds (Salmon et al. 2011); Random123's known-answer vectors hold."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        c0, c1, c2, c3 = (
            ((p1 >> 32) ^ c1 ^ k0) & _MASK,
            p1 & _MASK,
            ((p0 >> 32) ^ c3 ^ k1) & _MASK,
            p0 & _MASK,
        )
        k0 = (k0 + _W0) & _MASK
        k1 = (k1 + _W1) & _MASK
    return c0, c1, c2, c3


def philox_uniform(seed: int, offset: int, subsequence: int, index: int) -> float:
    """The ``index``-th uniform of ``subsequence`` exactly as the kernel draws it."""
    n = offset + index
    ctr = n >> 2
    words = philox4x32_10(
        (ctr & _MASK, (ctr >> 32) & _MASK, subsequence & _MASK, (subsequence >> 32) & _MASK),
        (seed & _MASK, (seed >> 32) & _MASK),
    )
    return (words[n & 3] >> 8) * (1.0 / 16777216.0)


def philox_uniforms(seed: int, offset: int, batch_size: int, num_draft: int):
    """``[B, K+1]`` float32 CPU tensor: the uniforms a call with this (seed, offset) draws."""
    import torch

    rows = [
        [philox_uniform(seed, offset, b, i) for i in range(num_draft + 1)]
        for b in range(batch_size)
    ]
    return torch.tensor(rows, dtype=torch.float32).reshape(batch_size, num_draft + 1)
