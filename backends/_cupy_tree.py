"""The tree kernels launched through CuPy (backend ``cupy``): ``csrc/kernel_tree.cuh`` (the token
rule) and ``csrc/kernel_traversal.cuh`` (``rule="traversal"`` in random mode) by NVRTC.

The same kernel source as ``cuda-cpp``'s ``specsample::verify_tree`` op, compiled on its own (the
tree kernels need only ``kernel_common.cuh``, ``kernel_philox.cuh`` and ``kernel_cluster.cuh``)
into one module per dtype and device, the three compiled in parallel (through ``_nvrtc``: float32
subnormals kept), launched on torch's current stream with raw device pointers, one block per
request. The generator's Philox ``(seed, offset)`` feed the kernel exactly as in ``cuda-cpp`` (under CUDA-graph
capture a device-resident key is drawn by a graph-safe torch op instead), so one generator state
gives the same tokens in both backends.
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

from . import _cuda_build, _cuda_tree, _nvrtc

TREE_HEADER = "kernel_traversal.cuh"  # includes kernel_tree.cuh
TREE_THREADS = 512  # kTreeThreads
_KERNEL_TYPES = {"float32": "float", "float16": "specsample::f16", "bfloat16": "specsample::bf16"}

_lock = threading.Lock()
# device -> (the modules, one per dtype; {(dtype, cluster, has_p, aligned, traversal): kernel};
# SM count; clusters available); the traversal kernel is keyed with cluster 1 and has_p True
_modules: dict[int, tuple[tuple, dict[tuple[str, int, bool, bool, bool], object], int, bool]] = {}
# CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED (CUDA driver API enum CUfunction_attribute)
_NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 14


def _module(device_id: int):
    """``(module, kernels, SM count, clusters)`` of ``device_id``, compiled on first use."""
    entry = _modules.get(device_id)
    if entry is not None:
        return entry
    with _lock:
        entry = _modules.get(device_id)
        if entry is None:
            import cupy

            digest = _cuda_build.sources_hash(*_cuda_build.kernel_sources())
            # the hash is in the code so that the compile cache (keyed by code and options, not by
            # the included files) recompiles when a header changes
            code = f'// specsample tree kernel, sources sha256 {digest}\n#include "{TREE_HEADER}"\n'
            props = cupy.cuda.runtime.getDeviceProperties(device_id)
            clusters = int(props["major"]) >= 9
            options = ["-std=c++17", f"-I{_cuda_build.csrc_dir()}"]
            if clusters:
                options.append("-DSPECSAMPLE_CLUSTERS=1")
            sizes = _cuda_tree.TREE_CLUSTER_SIZES if clusters else (1,)
            per_dtype = {dtype: kernel_names(dtype, sizes) for dtype in _KERNEL_TYPES}

            # one NVRTC program per dtype, compiled in parallel threads (NVRTC releases the GIL):
            # one dtype's tree kernels take about as long as every other module together
            def compile_one(names: dict) -> tuple[object, dict[str, str]]:
                return _nvrtc.compile_module(code, options, list(names.values()), device_id)

            with ThreadPoolExecutor(max_workers=len(per_dtype)) as pool:
                compiled = list(pool.map(compile_one, per_dtype.values()))
            kernels = {}
            with cupy.cuda.Device(device_id):
                for names, (module, lowered) in zip(per_dtype.values(), compiled, strict=True):
                    for key, name in names.items():
                        kernels[key] = kern = module.get_function(lowered[name])
                        if key[1] > 8:
                            cupy.cuda.driver.funcSetAttribute(
                                kern.ptr, _NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1
                            )
            num_sms = int(props["multiProcessorCount"])
            modules = tuple(module for module, _ in compiled)
            entry = _modules[device_id] = (modules, kernels, num_sms, clusters)
    return entry


def kernel_names(
    dtype: str, sizes: tuple[int, ...]
) -> dict[tuple[str, int, bool, bool, bool], str]:
    """The kernels of one dtype: ``(dtype, cluster, has_p, aligned, traversal) -> name`` for every
    cluster size in ``sizes`` (1: the one-block kernel), with and without draft probabilities,
    both load paths, and the traversal kernel (keyed with cluster 1 and has_p True)."""
    ctype = _KERNEL_TYPES[dtype]
    names = {}
    for cl, has_p, aligned in itertools.product(sizes, (False, True), (False, True)):
        flags = f"{'true' if has_p else 'false'}, {'true' if aligned else 'false'}"
        names[(dtype, cl, has_p, aligned, False)] = (
            f"specsample::verify_tree_kernel<{ctype}, {flags}>"
            if cl == 1
            else f"specsample::verify_tree_cluster_kernel<{ctype}, {cl}, {flags}>"
        )
    for aligned in (False, True):
        names[(dtype, 1, True, aligned, True)] = (
            f"specsample::verify_traversal_kernel<{ctype}, {'true' if aligned else 'false'}>"
        )
    return names


def verify_tree_cupy(inputs, cluster: int = 0):
    """One launch of the tree kernel on validated ``TreeVerifyInputs``; ``TreeVerifyOutput``.

    Greedy mode, the target-only rule (``draft_probs=None``) or recursive rejection sampling
    with or without replacement (token rule); ``rule="traversal"`` in random mode runs the
    traversal kernel (one block per request), in greedy mode the token rule's walk. The coins
    are ``inputs.uniforms`` or drawn in the kernel from the generator's Philox state (no host
    sync). ``cluster`` forces the blocks per request (1, 2, 4, 8 or 16; 0: automatic, as
    cuda-cpp; the traversal kernel takes 0 or 1).
    """
    import cupy
    import numpy as np
    import torch
    from specsample.contract_tree import TreeVerifyOutput
    from specsample.rng import is_capturing, philox_seed_offset
    from specsample.validation import default_generator

    from .cupy_backend import _external_stream

    B, N, V, D = inputs.batch_size, inputs.num_nodes_max, inputs.vocab_size, inputs.max_depth
    device = inputs.device
    device_id = device.index if device.index is not None else torch.cuda.current_device()
    q = inputs.target_probs
    greedy = inputs.mode == "greedy"
    has_u = inputs.uniforms is not None and not greedy
    has_p = inputs.draft_probs is not None and not greedy and N > 0
    p_ptr = inputs.draft_probs.data_ptr() if has_p else 0
    # one allocation: tokens [B, D+1], num [B], nodes [B, D], the capture key slot, then status
    # (int32, two per int64)
    n_tok, n_nodes = B * (D + 1), B * D
    head = n_tok + B + n_nodes
    buf = torch.empty(head + 2 + (B + 1) // 2, dtype=torch.int64, device=device)
    tokens = buf[:n_tok].view(B, D + 1)
    num = buf[n_tok : n_tok + B]
    nodes = buf[n_tok + B : head].view(B, D)
    status = buf[head + 2 :].view(torch.int32)[:B]
    seed = offset = seed_ptr = offset_ptr = 0
    captured = False
    if not greedy and not has_u:
        gen = inputs.generator if inputs.generator is not None else default_generator(device)
        if is_capturing(device):
            slot = buf[head : head + 2]
            torch.randint(0, 2**62, (2,), generator=gen, device=device, dtype=torch.int64, out=slot)
            seed_ptr, offset_ptr, captured = slot.data_ptr(), slot.data_ptr() + 8, True
        else:
            seed, offset = philox_seed_offset(gen, N + 1)
    dtype = str(q.dtype).removeprefix("torch.")
    elem = q.element_size()
    aligned = _cuda_build.rows_aligned(V, elem, q.data_ptr(), p_ptr, False)
    _, kernels, num_sms, clusters = _module(device_id)
    traversal = _cuda_tree.is_traversal(inputs)
    if traversal:
        if cluster > 1:
            raise ValueError(
                f"rule='traversal' runs one block per request: cluster must be 0 or 1, got {cluster}"
            )
        cl = 1
    else:
        cl = cluster or _cuda_tree.tree_cluster_size(B, num_sms, clusters)
    key = (dtype, cl, has_p or traversal, aligned, traversal)
    if key not in kernels:
        raise ValueError(
            f"cluster must be 1, 2, 4, 8 or 16 (more than 1 needs compute capability 9.0), got {cl}"
        )
    ids = inputs.draft_token_ids
    args = (
        np.uint64(ids.data_ptr()),
        np.int32(1 if ids.dtype == torch.int64 else 0),
        np.uint64(inputs.parents.data_ptr()),
        np.uint64(inputs.num_nodes.data_ptr()),
        np.uint64(q.data_ptr()),
        np.uint64(p_ptr),
        np.uint64(inputs.uniforms.data_ptr() if has_u else 0),
        np.uint64(tokens.data_ptr()),
        np.uint64(nodes.data_ptr()),
        np.uint64(num.data_ptr()),
        np.uint64(status.data_ptr()),
        np.int64(V),
        np.int32(N),
        np.int32(D),
        np.int32(1 if greedy else 0),
        np.int32(1 if inputs.needs_distinct_siblings else 0),
        np.int32(1 if inputs.draft_sampling == "without_replacement" else 0),
        np.uint64(seed & 0xFFFFFFFFFFFFFFFF),
        np.uint64(offset & 0xFFFFFFFFFFFFFFFF),
        np.uint64(seed_ptr),
        np.uint64(offset_ptr),
        np.uint64(0),
        np.int32(1 if captured else 0),
    )
    stream_ptr = torch.cuda.current_stream(device).cuda_stream
    kern = kernels[key]
    with cupy.cuda.Device(device_id), _external_stream(stream_ptr, device_id):
        kern((B * cl,), (TREE_THREADS,), args)
    return TreeVerifyOutput(tokens, num, nodes, status)
