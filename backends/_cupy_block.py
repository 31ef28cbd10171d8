"""Block verification (``rule="block"``) on the ``cupy`` backend: the kernels of
``csrc/kernel_block.cuh`` compiled by NVRTC and launched on torch's current stream.

The module holding them is compiled on the first ``rule="block"`` call, separately from the token
kernels (a call that never asks for the rule never compiles them). Arguments cross as raw device
pointers and the coins come from the torch generator exactly as in
:func:`specsample.backends.cupy_backend.verify_torch`, so both CUDA backends give the same tokens
for the same generator state.
"""

from __future__ import annotations

import threading

from specsample.contract import VerifyInputs, VerifyOutput

from . import _cuda_block, _cuda_build, _nvrtc

SPLIT_THREADS = 256  # the split kernel's __launch_bounds__ (csrc/kernel_block.cuh)

_lock = threading.Lock()
_modules: dict[int, _BlockModule] = {}


class _BlockModule:
    """The compiled block-verification kernels of one device."""

    def __init__(self, device_id: int, extra_options: tuple[str, ...] = ()) -> None:
        """Compile every block kernel for ``device_id``; ``extra_options`` adds NVRTC options
        (the ``-DSPECSAMPLE_BLOCK_*`` knobs of csrc/kernel_block.cuh, for tests and A/Bs)."""
        import cupy

        from .cupy_backend import _KERNEL_TYPES, _cpp_bool

        with cupy.cuda.Device(device_id):
            props = cupy.cuda.runtime.getDeviceProperties(device_id)
            self.num_sms = int(props["multiProcessorCount"])
            self.clusters = int(props["major"]) >= 9
            digest = _cuda_build.sources_hash(*_cuda_build.kernel_sources())
            code = (
                f"// specsample block kernel, sources sha256 {digest}\n"
                f'#include "{_cuda_build.KERNEL_HEADER}"\n'
            )
            options = ["-std=c++17", f"-I{_cuda_build.csrc_dir()}"]
            if self.clusters:
                options.append("-DSPECSAMPLE_CLUSTERS=1")
            options.extend(extra_options)
            # (dtype, cluster, aligned) -> name; cluster 0: the split kernel
            self.names: dict[tuple[str, int, bool], str] = {}
            for dtype, ctype in _KERNEL_TYPES.items():
                for aligned in (False, True):
                    flag = _cpp_bool(aligned)
                    self.names[(dtype, 1, aligned)] = (
                        f"specsample::verify_block_kernel<{ctype}, {flag}>"
                    )
                    self.names[(dtype, 0, aligned)] = (
                        f"specsample::verify_block_split_kernel<{ctype}, {flag}>"
                    )
                    if self.clusters:
                        for cl in _cuda_build.CLUSTER_SIZES[1:]:
                            self.names[(dtype, cl, aligned)] = (
                                f"specsample::verify_block_cluster_kernel<{ctype}, {cl}, {flag}>"
                            )
            self.module, self.lowered = _nvrtc.compile_module(
                code, options, list(self.names.values()), device_id
            )
            self.kernels: dict[tuple[str, int, bool], object] = {}

    def kernel(self, dtype: str, cluster: int, aligned: bool):
        key = (dtype, cluster, aligned)
        kern = self.kernels.get(key)
        if kern is None:
            import cupy

            from .cupy_backend import _CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED

            kern = self.module.get_function(self.lowered[self.names[key]])
            if cluster > 8:
                cupy.cuda.driver.funcSetAttribute(
                    kern.ptr, _CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1
                )
            self.kernels[key] = kern
        return kern


def _module(device_id: int) -> _BlockModule:
    mod = _modules.get(device_id)
    if mod is None:
        with _lock:
            mod = _modules.get(device_id)
            if mod is None:
                mod = _modules[device_id] = _BlockModule(device_id)
    return mod


def verify_block_torch(
    draft_token_ids,
    draft_probs,
    target_probs,
    *,
    generator=None,
    uniforms=None,
    cluster: int = 0,
    threads: int = 0,
    split: int = -1,
    module: _BlockModule | None = None,
):
    """Block verification on contiguous torch CUDA tensors, no validation:
    ``(token_ids [B, K+1] int64, num_emitted [B] int64, status [B] int32)``.

    Arguments as :func:`specsample.backends._cuda_block.verify_block_op` (``K >= 1``);
    ``cluster``/``threads`` 0 take :func:`~specsample.backends._cuda_block.block_launch_config`'s,
    ``split`` -1 :func:`~specsample.backends._cuda_block.block_split_chunks`'s (the cluster
    kernel while the stream is being captured).
    ``module`` (tests and tuning) launches from another compiled module, e.g. one built with
    ``-D`` knobs.
    """
    import numpy as np
    import torch
    from specsample.rng import is_capturing, philox_seed_offset
    from specsample.validation import default_generator

    from .cupy_backend import (
        _elem_bytes,
        _external_stream,
        _split_workspace,
        _stream_is_capturing,
    )

    device = target_probs.device
    device_id = device.index if device.index is not None else torch.cuda.current_device()
    B, K1, V = target_probs.shape
    K = K1 - 1
    head = B * (K1 + 1)
    buf = torch.empty(head + 2 + (B + 1) // 2, dtype=torch.int64, device=device)
    tokens = buf[: B * K1].view(B, K1)
    num = buf[B * K1 : head]
    status = buf[head + 2 :].view(torch.int32)[:B]
    if B == 0:
        return tokens, num, status
    seed = offset = seed_ptr = offset_ptr = 0
    captured = False
    if uniforms is None:
        gen = generator if generator is not None else default_generator(device)
        if is_capturing(device):
            # a device-resident (seed, offset), re-drawn by torch on every replay
            slot = buf[head : head + 2]
            torch.randint(0, 2**62, (2,), generator=gen, device=device, dtype=torch.int64, out=slot)
            seed_ptr, offset_ptr, captured = slot.data_ptr(), slot.data_ptr() + 8, True
        else:
            seed, offset = philox_seed_offset(gen, K + 1)
    if split < -1:
        raise ValueError(f"split must be -1 (automatic), 0 (off) or a chunk count, got {split}")
    mod = module if module is not None else _module(device_id)
    auto = _cuda_block.block_launch_config(B, mod.num_sms, mod.clusters)
    if split < 0:
        automatic = not (cluster or threads)
        split = _cuda_block.block_split_chunks(B, V, mod.num_sms, mod.clusters) if automatic else 0
    stream_ptr = torch.cuda.current_stream(device).cuda_stream
    if split > 0 and (captured or _stream_is_capturing(stream_ptr)):
        split = 0  # the workspace belongs to one stream; a graph may replay on any
    cl = cluster or auto[0]
    nt = threads or auto[1]
    if cl not in _cuda_build.CLUSTER_SIZES or (cl > 1 and not mod.clusters):
        raise ValueError(
            f"cluster must be one of {_cuda_build.CLUSTER_SIZES} (above 1 only on compute "
            f"capability 9.0 or newer), got {cl}"
        )
    if nt < 32 or nt > 512 or nt % 32:
        raise ValueError(f"threads must be a multiple of 32 in [32, 512], got {nt}")
    dtype = str(target_probs.dtype).removeprefix("torch.")
    p_ptr = 0 if draft_probs is None else draft_probs.data_ptr()
    q_ptr = target_probs.data_ptr()
    aligned = _cuda_build.rows_aligned(V, _elem_bytes(dtype), q_ptr, p_ptr, False)
    kern = mod.kernel(dtype, 0 if split > 0 else cl, aligned)
    args = (
        np.uint64(draft_token_ids.data_ptr()),
        np.uint64(p_ptr),
        np.uint64(q_ptr),
        np.uint64(0 if uniforms is None else uniforms.data_ptr()),
        np.uint64(tokens.data_ptr()),
        np.uint64(num.data_ptr()),
        np.uint64(status.data_ptr()),
        np.int64(V),
        np.int32(B),
        np.int32(K),
        np.int32(1 if draft_token_ids.dtype == torch.int64 else 0),
        np.int32(0),
        np.int32(1),
        np.uint64(seed & 0xFFFFFFFFFFFFFFFF),
        np.uint64(offset & 0xFFFFFFFFFFFFFFFF),
        np.uint64(seed_ptr),
        np.uint64(offset_ptr),
        np.uint64(0),
        np.int32(1 if captured else 0),
    )
    import cupy

    if split > 0:
        nt = SPLIT_THREADS
        # (K + 2) doubles per block: csrc/kernel_block.cuh, block_split_request_doubles
        ws_ptr, count_ptr = _split_workspace(device_id, stream_ptr, B * split * (K + 2), B)
        args = (*args, np.int32(split), np.uint64(ws_ptr), np.uint64(count_ptr))
    stream = _external_stream(stream_ptr, device_id)
    with cupy.cuda.Device(device_id), stream:
        kern((B * (split if split > 0 else cl),), (nt,), args)
    return tokens, num, status


def verify_block_inputs(inputs: VerifyInputs) -> VerifyOutput:
    """``cupy``'s ``rule="block"`` path for validated random-mode inputs."""
    token_ids, num_emitted, status = verify_block_torch(
        inputs.draft_token_ids,
        inputs.draft_probs,
        inputs.target_probs,
        generator=inputs.generator,
        uniforms=inputs.uniforms,
    )
    return VerifyOutput(token_ids, num_emitted, status)
