"""``cupy``'s serving entry point: ``verify_serving_split_kernel``
(``csrc/kernel_serving_split.cuh``, one or more blocks per row, with this stream's workspace) or,
under CUDA-graph capture, before Hopper or with ``SPECSAMPLE_SERVING_SPLIT=0``,
``verify_serving_kernel`` (``csrc/kernel_serving.cuh``, one block per request), compiled by NVRTC
and launched on torch's current stream with raw device pointers.

The serving kernels live in a module of their own (same sources and options as the verify kernels,
only the serving instantiations, compiled by :mod:`specsample.backends._nvrtc` with float32
subnormals kept), compiled on the first serving call per device.
Coins as in ``cuda-cpp``: explicit uniforms, per-request seeds, or the torch generator's Philox
``(seed, offset)`` (under CUDA-graph capture a device-resident key drawn by a graph-safe
``torch.randint``, so every replay draws fresh coins). See docs/serving.md.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from . import _cuda_build, _nvrtc

SERVING_THREADS = 512  # kServingThreads in csrc/kernel_serving.cuh
COINS_UNIFORMS, COINS_SEEDS, COINS_GENERATOR = 0, 1, 2  # kServingCoins* in the kernel
RECORD_WORDS = 4  # kServingRecordWords in csrc/kernel_serving_split.cuh: u64 per row record
# kServingDynamicBytes: the split kernel's 16-bit histogram and its list of distinct keys
DYNAMIC_BYTES = (32768 + 32768 // 64) * 4 + 10240 * 8
# kServingChunkMax / kServingChunkRowStride: blocks per counted row at most, and the u32 words of
# one row's space when a row has several (section 1b of the split kernel)
CHUNK_MAX = 8
CHUNK_ROW_WORDS = 32768 + 32
# CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES (CUDA driver API enum CUfunction_attribute)
_CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8

_TYPES = {"float32": "float", "float16": "specsample::f16", "bfloat16": "specsample::bf16"}
_lock = threading.Lock()
_modules: dict[int, Any] = {}


def split_requested() -> bool:
    """The split kernel unless ``SPECSAMPLE_SERVING_SPLIT=0`` asks for the one-block kernel (read
    at every call, as the ``cuda-cpp`` op does)."""
    return os.environ.get("SPECSAMPLE_SERVING_SPLIT") != "0"


def split_chunks(batch: int, num_draft: int, vocab: int, element_size: int, num_sms: int) -> int:
    """Blocks per counted row of the split kernel (``csrc/kernel_serving_split.cuh``, section 1b),
    as the ``cuda-cpp`` op chooses them; float32 rows always take 1.

    ``SPECSAMPLE_SERVING_CHUNKS=N`` (read at every call) gives N, at most 8; anything but a
    positive integer raises ``ValueError``. Otherwise, when the batch's ``B * (2K+1)`` rows fill at
    most half of the ``num_sms`` SMs, as many as fill them, at most 8, each with at least 1024
    16-byte vectors of the row; else 1.
    """
    if element_size != 2:
        return 1
    forced = os.environ.get("SPECSAMPLE_SERVING_CHUNKS", "")
    if forced:
        if not (forced.isascii() and forced.isdigit()) or int(forced) < 1:
            raise ValueError(
                f"SPECSAMPLE_SERVING_CHUNKS must be a positive integer, got {forced!r}"
            )
        return min(int(forced), CHUNK_MAX)
    rows = batch * (2 * num_draft + 1)
    if 2 * rows > num_sms:
        return 1
    return min(CHUNK_MAX, num_sms // rows, max((vocab + 7) // 8 // 1024, 1))


def kernel_names() -> dict[str, str]:
    """torch dtype name -> the one-block kernel's name expression."""
    return {dtype: f"specsample::verify_serving_kernel<{ct}>" for dtype, ct in _TYPES.items()}


def split_kernel_names() -> dict[str, str]:
    """torch dtype name -> the split kernel's name expression."""
    return {dtype: f"specsample::verify_serving_split_kernel<{ct}>" for dtype, ct in _TYPES.items()}


class _ServingModule:
    def __init__(self, device_id: int) -> None:
        import cupy

        with cupy.cuda.Device(device_id):
            props = cupy.cuda.runtime.getDeviceProperties(device_id)
            digest = _cuda_build.sources_hash(*_cuda_build.kernel_sources())
            code = (
                f"// specsample serving kernel, sources sha256 {digest}\n"
                f'#include "{_cuda_build.KERNEL_HEADER}"\n'
            )
            options = ["-std=c++17", f"-I{_cuda_build.csrc_dir()}"]
            if int(props["major"]) >= 9:
                options.append("-DSPECSAMPLE_CLUSTERS=1")
            names, split_names = kernel_names(), split_kernel_names()
            self.module, lowered = _nvrtc.compile_module(
                code, options, [*names.values(), *split_names.values()], device_id
            )
            self.kernels = {d: self.module.get_function(lowered[n]) for d, n in names.items()}
            self.split_kernels = {
                d: self.module.get_function(lowered[n]) for d, n in split_names.items()
            }
            # the 16-bit split kernels need more shared memory than pre-Hopper GPUs give a block
            # (16 KB over the dynamic bytes: room for their 12 KB of static shared memory)
            self.split_ok = int(props.get("sharedMemPerBlockOptin", 0)) >= DYNAMIC_BYTES + (
                16 << 10
            )
            self.num_sms = int(props["multiProcessorCount"])
            if self.split_ok:
                for dtype in ("float16", "bfloat16"):
                    cupy.cuda.driver.funcSetAttribute(
                        self.split_kernels[dtype].ptr,
                        _CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, DYNAMIC_BYTES,
                    )  # fmt: skip


def _module(device_id: int) -> _ServingModule:
    mod = _modules.get(device_id)
    if mod is None:
        with _lock:
            mod = _modules.get(device_id)
            if mod is None:
                mod = _modules[device_id] = _ServingModule(device_id)
    return mod


def launch_serving(inputs: Any) -> tuple[Any, Any, Any]:
    """One launch for validated :class:`specsample.serving.ServingInputs` (``B > 0``, CUDA):
    ``(token_ids [B, K+1] int64, num_emitted [B] int64, status [B] int32)`` torch tensors."""
    import cupy
    import numpy as np
    import torch
    from specsample.rng import is_capturing, philox_seed_offset

    from .cupy_backend import _external_stream, _split_workspace, _stream_is_capturing

    B, K, V = inputs.batch_size, inputs.num_draft, inputs.vocab_size
    device = inputs.device
    device_id = device.index if device.index is not None else torch.cuda.current_device()
    target, draft = inputs.target, inputs.draft
    dtype = str(target.dtype).removeprefix("torch.")
    # one allocation: tokens, num_emitted, the generator key slot, status (two int32 per int64)
    head = B * (K + 2)
    buf = torch.empty(head + 2 + (B + 1) // 2, dtype=torch.int64, device=device)
    tokens = buf[: B * (K + 1)].view(B, K + 1)
    num = buf[B * (K + 1) : head]
    status = buf[head + 2 :].view(torch.int32)[:B]
    seed = offset = seed_ptr = offset_ptr = 0
    captured = 0
    u_ptr = seeds_ptr = offsets_ptr = 0
    if inputs.uniforms is not None:
        coins, u_ptr = COINS_UNIFORMS, inputs.uniforms.data_ptr()
    elif inputs.seeds is not None:
        coins = COINS_SEEDS
        seeds_ptr, offsets_ptr = inputs.seeds.data_ptr(), inputs.offsets.data_ptr()
    else:
        coins = COINS_GENERATOR
        if is_capturing(device):
            slot = buf[head : head + 2]
            torch.randint(
                0, 2**62, (2,), generator=inputs.generator, device=device, dtype=torch.int64,
                out=slot,
            )  # fmt: skip
            seed_ptr, offset_ptr, captured = slot.data_ptr(), slot.data_ptr() + 8, 1
        else:
            seed, offset = philox_seed_offset(inputs.generator, K + 1)
    elem = target.element_size()
    aligned = (
        (V * elem) % 16 == 0
        and target.data_ptr() % 16 == 0
        and (draft is None or draft.data_ptr() % 16 == 0)
    )
    ids = inputs.draft_token_ids
    args = (
        np.uint64(ids.data_ptr()),
        np.int32(1 if ids.dtype == torch.int64 else 0),
        np.uint64(inputs.num_draft_tokens.data_ptr()),
        np.uint64(target.data_ptr()),
        np.uint64(0 if draft is None else draft.data_ptr()),
        np.uint64(inputs.temperature.data_ptr()),
        np.uint64(inputs.top_k.data_ptr()),
        np.uint64(inputs.top_p.data_ptr()),
        np.uint64(inputs.param_flags.data_ptr()),
        np.uint64(u_ptr),
        np.uint64(seeds_ptr),
        np.uint64(offsets_ptr),
        np.uint64(seed & 0xFFFFFFFFFFFFFFFF),
        np.uint64(offset & 0xFFFFFFFFFFFFFFFF),
        np.uint64(seed_ptr),
        np.uint64(offset_ptr),
        np.uint64(0),
        np.int32(captured),
        np.uint64(tokens.data_ptr()),
        np.uint64(num.data_ptr()),
        np.uint64(status.data_ptr()),
        np.int64(V),
        np.int32(K),
        np.int32(1 if inputs.target_is_logits else 0),
        np.int32(0 if draft is None else 1),
        np.int32(1 if inputs.draft_is_logits else 0),
        np.int32(coins),
        np.int32(1 if aligned else 0),
    )
    mod = _module(device_id)
    stream_ptr = torch.cuda.current_stream(device).cuda_stream
    # The split kernel (docs/dev/cuda-kernel.md) unless SPECSAMPLE_SERVING_SPLIT=0; its workspace
    # belongs to this stream, so under graph capture (a graph may be replayed on any stream)
    # always the one-block kernel, which needs none.
    split = (
        split_requested() and mod.split_ok and not captured
        and not _stream_is_capturing(stream_ptr)
    )  # fmt: skip
    if split:
        rows = 2 * K + 1
        chunks = split_chunks(B, K, V, elem, mod.num_sms)
        # the request counters, then (16-byte aligned) the rows' space when rows have several blocks
        rows_at = (B + 3) // 4 * 4
        counters = rows_at + B * rows * CHUNK_ROW_WORDS if chunks > 1 else B
        ws_ptr, count_ptr = _split_workspace(
            device_id, stream_ptr, B * rows * RECORD_WORDS, counters
        )
        rows_ptr = count_ptr + 4 * rows_at if chunks > 1 else 0
        smem = DYNAMIC_BYTES if elem == 2 else 0
        with cupy.cuda.Device(device_id), _external_stream(stream_ptr, device_id):
            mod.split_kernels[dtype](
                (B, rows, chunks), (SERVING_THREADS,),
                (*args, np.uint64(ws_ptr), np.uint64(count_ptr), np.uint64(rows_ptr),
                 np.int32(chunks)),
                shared_mem=smem,
            )  # fmt: skip
    else:
        with cupy.cuda.Device(device_id), _external_stream(stream_ptr, device_id):
            mod.kernels[dtype]((B,), (SERVING_THREADS,), args)
    return tokens, num, status
