"""``cupy``: the ``cuda-cpp`` kernel source compiled at run time by NVRTC through CuPy.

Same kernel (``csrc/verify_kernel.cuh``, included through NVRTC's include path and instantiated
through ``name_expressions``), different host side: this backend isolates what the launch path
costs. torch tensors cross as raw device pointers (what DLPack and ``__cuda_array_interface__``
carry; no copy, no per-call capsule), the launch goes on torch's current stream, and the torch
generator's Philox ``(seed, offset)`` feed the in-kernel Philox exactly as in ``cuda-cpp``, so the
same generator state gives the same tokens in both backends.

CuPy users need no torch on the kernel path: :func:`verify_cupy` takes CuPy arrays. See
docs/backends/cupy.md.
"""

from __future__ import annotations

import importlib.util
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from specsample.contract import Backend, VerifyInputs, VerifyOutput

from . import _cuda_block, _cuda_build, _nvrtc

# torch dtype name / CuPy dtype name -> the kernel's element type
_KERNEL_TYPES = {"float32": "float", "float16": "specsample::f16", "bfloat16": "specsample::bf16"}
# CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED (CUDA driver API enum CUfunction_attribute)
_CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 14

_lock = threading.Lock()
_modules: dict[int, _Module] = {}


def _cpp_bool(flag: bool) -> str:
    return "true" if flag else "false"


class _Module:
    """The compiled module of one device (float32 subnormals kept: ``_nvrtc``), its kernels and
    launch facts."""

    def __init__(
        self,
        device_id: int,
        extra_options: tuple[str, ...] = (),
        only: Callable[[tuple[str, int, bool, bool]], bool] | None = None,
    ) -> None:
        """Compile the kernels for ``device_id``; ``extra_options`` adds NVRTC options (``-D``
        knobs), ``only`` keeps the kernels whose key ``(dtype, cluster, greedy, aligned)`` it
        accepts (tools and tests that A/B a knob need a few kernels, not all of them)."""
        import cupy

        with cupy.cuda.Device(device_id):
            props = cupy.cuda.runtime.getDeviceProperties(device_id)
            self.major, self.minor = int(props["major"]), int(props["minor"])
            self.num_sms = int(props["multiProcessorCount"])
            self.clusters = self.major >= 9
            digest = _cuda_build.sources_hash(*_cuda_build.kernel_sources())
            # The hash is part of the code string so that CuPy's on-disk cache (keyed by code and
            # options, not by included files) recompiles when a header changes.
            code = (
                f"// specsample verify kernel, sources sha256 {digest}\n"
                f'#include "{_cuda_build.KERNEL_HEADER}"\n'
            )
            options = ["-std=c++17", f"-I{_cuda_build.csrc_dir()}"]
            if self.clusters:
                options.append("-DSPECSAMPLE_CLUSTERS=1")
            options.extend(extra_options)
            # (dtype, cluster, greedy, aligned) -> name; one kernel per mode and load path
            self.names: dict[tuple[str, int, bool, bool], str] = {}
            for dtype, ctype in _KERNEL_TYPES.items():
                for greedy, aligned in itertools.product((False, True), (False, True)):
                    flags = f"{_cpp_bool(greedy)}, {_cpp_bool(aligned)}"
                    self.names[(dtype, 1, greedy, aligned)] = (
                        f"specsample::verify_kernel<{ctype}, {flags}>"
                    )
                    if self.clusters:
                        for cl in _cuda_build.CLUSTER_SIZES[1:]:
                            self.names[(dtype, cl, greedy, aligned)] = (
                                f"specsample::verify_cluster_kernel<{ctype}, {cl}, {flags}>"
                            )
                    if greedy:  # cluster 0: the greedy split kernel
                        self.names[(dtype, 0, True, aligned)] = (
                            f"specsample::verify_greedy_split_kernel<{ctype}, {_cpp_bool(aligned)}>"
                        )
            if only is not None:
                self.names = {key: name for key, name in self.names.items() if only(key)}
            self.module, self.lowered = _nvrtc.compile_module(
                code, options, list(self.names.values()), device_id
            )
            self.kernels: dict[tuple[str, int, bool, bool], object] = {}

    def kernel(self, dtype: str, cluster: int, greedy: bool, aligned: bool):
        """The compiled kernel for one dtype, cluster size (0: greedy split), mode and load path."""
        key = (dtype, cluster, greedy, aligned)
        kern = self.kernels.get(key)
        if kern is None:
            import cupy

            kern = self.module.get_function(self.lowered[self.names[key]])
            if cluster > 8:
                cupy.cuda.driver.funcSetAttribute(
                    kern.ptr, _CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1
                )
            self.kernels[key] = kern
        return kern


def _module(device_id: int) -> _Module:
    mod = _modules.get(device_id)
    if mod is None:
        with _lock:
            mod = _modules.get(device_id)
            if mod is None:
                mod = _modules[device_id] = _Module(device_id)
    return mod


_streams: dict[tuple[int, int], object] = {}
_workspaces: dict[tuple[int, int], list] = {}


def _split_workspace(device_id: int, stream_ptr: int, n_keys: int, n_counters: int):
    """The split kernel's workspace on one (device, stream): ``(keys ptr, counters ptr)``.

    Keys are uint64 per (request, row, chunk); counters uint32 per request, zeroed once when
    allocated (on the stream, before the kernel) and reset by each request's last block, so every
    call ordered by the stream finds them zero (as in the cuda-cpp binding).
    """
    import cupy

    with _lock:
        ws = _workspaces.setdefault((device_id, stream_ptr), [None, None])
        with cupy.cuda.Device(device_id), _external_stream(stream_ptr, device_id):
            if ws[0] is None or ws[0].size < n_keys:
                ws[0] = cupy.empty(max(n_keys, 4096), dtype=cupy.uint64)
            if ws[1] is None or ws[1].size < n_counters:
                ws[1] = cupy.zeros(max(n_counters, 64), dtype=cupy.uint32)
        return ws[0].data.ptr, ws[1].data.ptr


def _stream_is_capturing(stream_ptr: int) -> bool:
    """Whether the stream is being captured into a CUDA graph (capture-safe query)."""
    import cupy

    try:
        return cupy.cuda.runtime.streamIsCapturing(stream_ptr) != 0
    except (AttributeError, cupy.cuda.runtime.CUDARuntimeError):
        # an older CuPy, or the legacy stream while another stream captures: assume capture,
        # the safe choice (the cluster kernel)
        return True


class _StreamHandle:
    """A raw ``cudaStream_t`` under the CUDA stream protocol, for ``cupy.cuda.Stream.from_external``."""

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.ptr)


def _external_stream(ptr: int, device_id: int):
    """A cached CuPy stream object for torch's stream ``ptr`` on device ``device_id``.

    CuPy 14 deprecates ``ExternalStream`` for ``Stream.from_external`` (the stream protocol);
    older CuPy has only the former.
    """
    stream = _streams.get((ptr, device_id))
    if stream is None:
        import cupy

        from_external = getattr(cupy.cuda.Stream, "from_external", None)
        if from_external is None:
            stream = cupy.cuda.ExternalStream(ptr, device_id)
        else:
            with cupy.cuda.Device(device_id):
                stream = from_external(_StreamHandle(ptr))
        _streams[(ptr, device_id)] = stream
    return stream


def _elem_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def _launch_split(
    mod,
    device_id,
    stream_ptr,
    dtype,
    ids_ptr,
    ids64,
    q_ptr,
    tokens_ptr,
    num_ptr,
    status_ptr,
    B,
    K,
    V,
    chunks,
) -> None:
    """Launch the greedy split kernel (``verify_greedy_split_kernel``) with its workspace."""
    import cupy
    import numpy as np

    units = B * (K + 1) * chunks
    keys_ptr, count_ptr = _split_workspace(device_id, stream_ptr, units, B)
    args = (
        np.uint64(ids_ptr),
        np.uint64(q_ptr),
        np.uint64(tokens_ptr),
        np.uint64(num_ptr),
        np.uint64(status_ptr),
        np.int64(V),
        np.int32(B),
        np.int32(K),
        np.int32(1 if ids64 else 0),
        np.int32(chunks),
        np.uint64(keys_ptr),
        np.uint64(count_ptr),
    )
    kern = mod.kernel(
        dtype, 0, True, _cuda_build.rows_aligned(V, _elem_bytes(dtype), q_ptr, 0, True)
    )
    # 256 threads: more than K (every draft id has a thread in the combining block)
    with cupy.cuda.Device(device_id), _external_stream(stream_ptr, device_id):
        kern((units,), (256,), args)


def _launch(
    device_id: int,
    stream_ptr: int,
    dtype: str,
    ids_ptr: int,
    ids64: bool,
    p_ptr: int,
    q_ptr: int,
    u_ptr: int,
    tokens_ptr: int,
    num_ptr: int,
    status_ptr: int,
    B: int,
    K: int,
    V: int,
    greedy: bool,
    seed: int = 0,
    offset: int = 0,
    seed_ptr: int = 0,
    offset_ptr: int = 0,
    captured: bool = False,
    cluster: int = 0,
    threads: int = 0,
    rows_per_step: int = 0,
    split: int = -1,
    module: _Module | None = None,
) -> None:
    """Launch one verify kernel on ``stream_ptr``; every tensor argument is a device pointer.

    ``split`` (greedy): -1 automatic (the split kernel at the smallest batches, unless a cluster
    configuration is given or the stream is capturing), 0 off, N > 0 the split kernel with N chunks.
    """
    import numpy as np

    mod = module if module is not None else _module(device_id)
    elem_bytes = _elem_bytes(dtype)
    if split < -1:
        raise ValueError(f"split must be -1 (automatic), 0 (off) or a chunk count, got {split}")
    chunks = 0
    if greedy:
        if split > 0:
            chunks = split
        elif split < 0 and not (cluster or threads or rows_per_step):
            chunks = _cuda_build.choose_split(B, K, V, True, mod.num_sms, elem_bytes)
        if chunks and _stream_is_capturing(stream_ptr):
            chunks = 0
    if chunks:
        _launch_split(
            mod,
            device_id,
            stream_ptr,
            dtype,
            ids_ptr,
            ids64,
            q_ptr,
            tokens_ptr,
            num_ptr,
            status_ptr,
            B,
            K,
            V,
            chunks,
        )
        return
    auto = _cuda_build.choose_config(B, K, V, greedy, mod.num_sms, mod.clusters, elem_bytes)
    cl = cluster or auto[0]
    nt = threads or auto[1]
    rows = rows_per_step or auto[2]
    if cl > 1 and not mod.clusters:
        raise ValueError("thread-block clusters need compute capability 9.0 or newer")
    if cl not in _cuda_build.CLUSTER_SIZES:
        raise ValueError(f"cluster must be one of {_cuda_build.CLUSTER_SIZES}, got {cl}")
    aligned = _cuda_build.rows_aligned(V, elem_bytes, q_ptr, p_ptr, greedy)
    kern = mod.kernel(dtype, cl, greedy, aligned)
    args = (
        np.uint64(ids_ptr),
        np.uint64(p_ptr),
        np.uint64(q_ptr),
        np.uint64(u_ptr),
        np.uint64(tokens_ptr),
        np.uint64(num_ptr),
        np.uint64(status_ptr),
        np.int64(V),
        np.int32(B),
        np.int32(K),
        np.int32(1 if ids64 else 0),
        np.int32(1 if greedy else 0),
        np.int32(min(rows, _cuda_build.MAX_STEP_ROWS)),
        np.uint64(seed & 0xFFFFFFFFFFFFFFFF),
        np.uint64(offset & 0xFFFFFFFFFFFFFFFF),
        np.uint64(seed_ptr),
        np.uint64(offset_ptr),
        np.uint64(0),
        np.int32(1 if captured else 0),
    )
    import cupy

    if cupy.cuda.runtime.getDevice() != device_id:
        with cupy.cuda.Device(device_id), _external_stream(stream_ptr, device_id):
            kern((B * cl,), (nt,), args)
    else:
        with _external_stream(stream_ptr, device_id):
            kern((B * cl,), (nt,), args)


# --------------------------------------------------------------------------------------------
# CuPy-only entry point
# --------------------------------------------------------------------------------------------
def verify_cupy(
    draft_token_ids,
    draft_probs,
    target_probs,
    *,
    mode: str = "random",
    uniforms=None,
    seed: int = 0,
    offset: int = 0,
):
    """Verify with CuPy arrays only (no torch on this path).

    Args:
        draft_token_ids: ``[B, K]`` int32/int64 ``cupy.ndarray``.
        draft_probs: ``[B, K, V]`` float32/float16 ``cupy.ndarray``, or None (deterministic drafter).
        target_probs: ``[B, K+1, V]``, same dtype.
        mode: ``"random"`` or ``"greedy"``.
        uniforms: ``[B, K+1]`` float32 in [0, 1), or None to draw in-kernel from (seed, offset).
        seed, offset: Philox key and counter offset. One call consumes
            ``4 * ceil((K+1)/4)`` numbers per request: pass
            ``offset + specsample.backends.cupy_backend.philox_increment(K)`` next time for fresh
            randomness (what the torch path does with the generator).

    Returns:
        ``(token_ids [B, K+1] int64, num_emitted [B] int64, status [B] int32)`` CuPy arrays on the
        inputs' device, computed on CuPy's current stream (``status``: see docs/contract.md).
    """
    import cupy

    if mode not in ("random", "greedy"):
        raise ValueError(f"mode must be 'random' or 'greedy', got {mode!r}")
    ids = cupy.ascontiguousarray(draft_token_ids)
    q = cupy.ascontiguousarray(target_probs)
    if ids.ndim != 2 or ids.dtype.name not in ("int32", "int64"):
        raise TypeError(
            f"draft_token_ids must be a 2-D int32/int64 array, got {ids.dtype} {ids.shape}"
        )
    if q.ndim != 3 or q.dtype.name not in ("float32", "float16"):
        raise TypeError(
            f"target_probs must be a 3-D float32/float16 array, got {q.dtype} {q.shape}"
        )
    B, K = ids.shape
    V = q.shape[2]
    if q.shape[:2] != (B, K + 1):
        raise ValueError(
            f"target_probs has shape {q.shape}; expected [B, K+1, V] with B={B}, K={K}"
        )
    if K > _cuda_build.MAX_K:
        raise ValueError(f"K={K} exceeds the kernel's limit {_cuda_build.MAX_K}")
    p_ptr = 0
    if draft_probs is not None:
        p = cupy.ascontiguousarray(draft_probs)
        if p.shape != (B, K, V) or p.dtype != q.dtype:
            raise ValueError(
                f"draft_probs must be [B, K, V]={(B, K, V)} of {q.dtype}, got {p.dtype} {p.shape}"
            )
        p_ptr = p.data.ptr
    u_ptr = 0
    if uniforms is not None:
        u = cupy.ascontiguousarray(uniforms, dtype=cupy.float32)
        if u.shape != (B, K + 1):
            raise ValueError(f"uniforms must be [B, K+1]={(B, K + 1)}, got {u.shape}")
        u_ptr = u.data.ptr
    out = cupy.empty(B * (K + 2), dtype=cupy.int64)
    tokens = out[: B * (K + 1)].reshape(B, K + 1)
    num = out[B * (K + 1) :]
    status = cupy.empty(B, dtype=cupy.int32)
    if B == 0:
        return tokens, num, status
    _launch(
        q.device.id,
        cupy.cuda.get_current_stream().ptr,
        q.dtype.name,
        ids.data.ptr,
        ids.dtype.name == "int64",
        p_ptr,
        q.data.ptr,
        u_ptr,
        tokens.data.ptr,
        num.data.ptr,
        status.data.ptr,
        B,
        K,
        V,
        mode == "greedy",
        seed=seed,
        offset=offset,
    )
    return tokens, num, status


philox_increment = _cuda_build.philox_increment


# --------------------------------------------------------------------------------------------
# The backend (torch tensors in and out)
# --------------------------------------------------------------------------------------------
def verify_torch(
    draft_token_ids,
    draft_probs,
    target_probs,
    *,
    mode: str = "random",
    generator=None,
    uniforms=None,
    cluster: int = 0,
    threads: int = 0,
    rows_per_step: int = 0,
    split: int = -1,
    module: _Module | None = None,
):
    """The backend's launch path on contiguous torch CUDA tensors (no validation):
    ``(token_ids [B, K+1] int64, num_emitted [B] int64, status [B] int32)``.

    ``module`` (tuning only) launches from another compiled module, e.g. one built with extra
    ``-D`` options."""
    import torch
    from specsample.rng import is_capturing, philox_seed_offset
    from specsample.validation import default_generator

    device = target_probs.device
    B, K1, V = target_probs.shape
    K = K1 - 1
    greedy = mode == "greedy"
    # one allocation: tokens, num_emitted, (under graph capture) the Philox seed slot, and the
    # int32 status words packed two per int64
    head = B * (K1 + 1)
    buf = torch.empty(head + 2 + (B + 1) // 2, dtype=torch.int64, device=device)
    tokens = buf[: B * K1].view(B, K1)
    num = buf[B * K1 : head]
    status = buf[head + 2 :].view(torch.int32)[:B]
    if B == 0:
        return tokens, num, status
    seed = offset = seed_ptr = offset_ptr = 0
    captured = False
    if not greedy and uniforms is None:
        gen = generator if generator is not None else default_generator(device)
        if is_capturing(device):
            # baked (seed, offset) would repeat on every replay: draw them on the device instead,
            # with a graph-safe torch op (fresh values each replay); the slot lives in `buf`,
            # which the outputs keep alive.
            slot = buf[head : head + 2]
            torch.randint(0, 2**62, (2,), generator=gen, device=device, dtype=torch.int64, out=slot)
            seed_ptr, offset_ptr, captured = slot.data_ptr(), slot.data_ptr() + 8, True
        else:
            seed, offset = philox_seed_offset(gen, K + 1)
    _launch(
        device.index if device.index is not None else torch.cuda.current_device(),
        torch.cuda.current_stream(device).cuda_stream,
        str(target_probs.dtype).removeprefix("torch."),
        draft_token_ids.data_ptr(),
        draft_token_ids.dtype == torch.int64,
        0 if draft_probs is None else draft_probs.data_ptr(),
        target_probs.data_ptr(),
        0 if uniforms is None else uniforms.data_ptr(),
        tokens.data_ptr(),
        num.data_ptr(),
        status.data_ptr(),
        B,
        K,
        V,
        greedy,
        seed=seed,
        offset=offset,
        seed_ptr=seed_ptr,
        offset_ptr=offset_ptr,
        captured=captured,
        cluster=cluster,
        threads=threads,
        rows_per_step=rows_per_step,
        split=split,
        module=module,
    )
    return tokens, num, status


class CupyBackend(Backend):
    name = "cupy"
    description = (
        "The cuda-cpp kernel source compiled by NVRTC through CuPy (same kernel, other host side)."
    )
    capabilities = _cuda_build.KERNEL_CAPABILITIES

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("cupy") is None:
            return False, "cupy not installed (pip install 'specsample[cupy]')"
        reason = _cuda_build.torch_cuda_reason()
        if reason:
            return False, reason
        return True, ""

    @classmethod
    def build(cls, verbose: bool = False) -> str:
        """Compile (or read from the cache) every NVRTC module of the current CUDA device now, in
        parallel threads (NVRTC releases the GIL); return the cache folder. ``verbose`` is
        accepted for symmetry with ``cuda-cpp`` (NVRTC prints nothing on success)."""
        import torch

        from . import _cupy_block, _cupy_serving, _cupy_tree

        device_id = torch.cuda.current_device()
        builders = (_module, _cupy_block._module, _cupy_tree._module, _cupy_serving._module)
        with ThreadPoolExecutor(max_workers=len(builders)) as pool:
            for future in [pool.submit(make, device_id) for make in builders]:
                future.result()
        return str(_nvrtc.cache_dir())

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        if _cuda_block.uses_block_kernel(inputs):
            from . import _cupy_block

            return _cupy_block.verify_block_inputs(inputs)
        token_ids, num_emitted, status = verify_torch(
            inputs.draft_token_ids,
            inputs.draft_probs,
            inputs.target_probs,
            mode=inputs.mode,
            generator=inputs.generator,
            uniforms=inputs.uniforms,
        )
        return VerifyOutput(token_ids, num_emitted, status)

    def _verify_serving(self, inputs):
        """The serving entry point: one launch of ``verify_serving_kernel`` through NVRTC."""
        from specsample.serving import ServingOutput

        from ._cupy_serving import launch_serving

        return ServingOutput(*launch_serving(inputs))

    def _verify_tree(self, inputs):
        """Tree verification (greedy, target-only): one launch of the tree kernel compiled by
        NVRTC (``csrc/kernel_tree.cuh``, ``backends/_cupy_tree.py``)."""
        from . import _cupy_tree

        return _cupy_tree.verify_tree_cupy(inputs)
