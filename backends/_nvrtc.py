"""NVRTC compilation for the ``cupy`` backend, with float32 subnormals kept.

CuPy's ``RawModule`` appends ``-ftz=true`` after the caller's options, and NVRTC honours the last
occurrence, so every float32 instruction of a kernel compiled that way flushes subnormal inputs and
results to zero. The kernels must read probabilities as the float64 reference does: a row whose
weights are all below 1.2e-38 is not a zero row, and the argmax of subnormal weights is not a tie
at index 0. So this module compiles through CuPy's NVRTC entry point
(``cupy.cuda.compiler.compile_using_nvrtc``, which adds no ``-ftz``) with ``-ftz=false`` spelled
out, and keeps its own on-disk cache (NVRTC takes seconds for all the kernel variants; every
worker process of a fuzz campaign or conformance run would pay them).

The cache lives in CuPy's kernel cache folder (``CUPY_CACHE_DIR``, default ``~/.cupy/kernel_cache``),
one file per (source, options, kernel names, NVRTC version, compute capability), written
atomically and checked against its recorded digest when read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# The float semantics every kernel of this project assumes (NVRTC's defaults, stated so that no
# caller-side default can change them).
FLOAT_OPTIONS = ("-ftz=false", "-prec-div=true", "-prec-sqrt=true")
_MAGIC = b"SSNVRTC1"


def compile_module(
    code: str, options: Sequence[str], names: Sequence[str], device_id: int
) -> tuple[Any, dict[str, str]]:
    """Compile ``code`` for ``device_id`` and load it.

    Args:
        code: CUDA C++ source (may ``#include`` files found through ``-I`` options).
        options: NVRTC options; :data:`FLOAT_OPTIONS` are appended (they win over any earlier
            ``-ftz``/``-prec-*`` option).
        names: kernel name expressions (template instantiations) to compile and look up.
        device_id: the CUDA device to compile for (its compute capability) and to load on.

    Returns:
        ``(module, lowered)``: the loaded ``cupy.cuda.function.Module`` and a dict from each
        name expression to its lowered (mangled) name, for ``module.get_function``.
    """
    import cupy
    from cupy.cuda import compiler, function

    opts = tuple(options) + FLOAT_OPTIONS
    with cupy.cuda.Device(device_id) as device:
        key = _cache_key(code, opts, names, cupy.cuda.nvrtc.getVersion(), device.compute_capability)
        path = cache_dir() / f"specsample-{key}.bin"
        cached = _read(path)
        if cached is None:
            with _compile_lock(path):
                cached = _read(path)  # another process may have compiled it meanwhile
                if cached is None:
                    cached = _compile(code, opts, names, compiler, function)
                    _write(path, *cached)
        image, lowered = cached
        module = function.Module()
        module.load(image)
    missing = [n for n in names if n not in lowered]
    if missing:
        raise RuntimeError(f"NVRTC returned no lowered name for {missing[:3]}")
    return module, lowered


def _compile(code: str, opts: Sequence[str], names: Sequence[str], compiler: Any, function: Any):
    """``(cubin image, lowered names)`` of ``code`` by NVRTC (PTX is linked to a cubin)."""
    image, lowered = compiler.compile_using_nvrtc(code, tuple(opts), name_expressions=list(names))
    image = image if isinstance(image, bytes) else image.encode()
    if not image.startswith(b"\x7fELF"):  # PTX (NVRTC cannot emit this arch's cubin)
        link = function.LinkState()
        link.add_ptr_data(image, "specsample.ptx")
        image = link.complete()
    return image, dict(lowered or {})


@contextlib.contextmanager
def _compile_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s lock file (across processes): the worker processes of
    a conformance run or fuzz campaign start together, and without it each compiles the same
    module at once (minutes of CPU for the tree kernels' instantiations) instead of reading the
    first one's cache entry. Where the file cannot be locked, the compile goes on unlocked."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_suffix(".lock"), "a")
    except (ImportError, OSError):
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def cache_dir() -> Path:
    """CuPy's kernel cache folder: ``CUPY_CACHE_DIR``, else ``~/.cupy/kernel_cache`` (CuPy's own
    default; not every CuPy version exposes a function for it)."""
    return Path(os.environ.get("CUPY_CACHE_DIR") or Path.home() / ".cupy" / "kernel_cache")


def _cache_key(code: str, options: Sequence[str], names: Sequence[str], nvrtc: Any, cc: str) -> str:
    blob = json.dumps([code, list(options), list(names), list(nvrtc), cc], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def _read(path: Path) -> tuple[bytes, dict[str, str]] | None:
    """The cached image and lowered names, or None when absent or damaged."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head = len(_MAGIC) + 4
    if len(data) < head or not data.startswith(_MAGIC):
        return None
    (n,) = struct.unpack("<I", data[len(_MAGIC) : head])
    try:
        meta = json.loads(data[head : head + n])
    except ValueError:
        return None
    image = data[head + n :]
    if not isinstance(meta, dict) or meta.get("sha256") != hashlib.sha256(image).hexdigest():
        return None
    lowered = meta.get("lowered")
    return (image, lowered) if isinstance(lowered, dict) else None


def _write(path: Path, image: bytes, lowered: dict[str, str]) -> None:
    """Publish one cache entry atomically; a failure to write only costs the next compile."""
    meta = json.dumps({"sha256": hashlib.sha256(image).hexdigest(), "lowered": lowered}).encode()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
            tmp = handle.name
            handle.write(_MAGIC + struct.pack("<I", len(meta)) + meta + image)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
