"""Kernel launches and host synchronizations per call, counted with torch.profiler.

A profile of ``calls`` calls is taken, and a profile of nothing is subtracted (the profiler's own
start/stop may launch or synchronize). Kernels are the GPU activity records (CUPTI) that are not
memory copies or sets, so launches from Triton, CuPy or a torch extension count alike. Host syncs
are CUDA runtime/driver calls that block the host (``cudaStreamSynchronize``,
``cudaDeviceSynchronize``, ``cudaEventSynchronize``, synchronous ``cudaMemcpy``); as a cross-check
``torch.cuda.set_sync_debug_mode("warn")`` counts the synchronizing torch ops of one call.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

SYNC_CALLS = frozenset(
    {
        "cudaStreamSynchronize",
        "cudaDeviceSynchronize",
        "cudaEventSynchronize",
        "cudaMemcpy",
        "cuStreamSynchronize",
        "cuCtxSynchronize",
        "cuEventSynchronize",
        "cuMemcpyDtoH_v2",
        "cuMemcpyHtoD_v2",
    }
)
_BASELINE: dict[str, int] | None = None

LAUNCH_CALLS = frozenset(
    {
        "cudaLaunchKernel",
        "cudaLaunchKernelExC",
        "cuLaunchKernel",
        "cuLaunchKernelEx",
        "cudaLaunchCooperativeKernel",
        "cudaGraphLaunch",
    }
)


def _profile_counts(fn: Callable[[], Any]) -> dict[str, int]:
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
    counts = {"kernels": 0, "memcpy": 0, "memset": 0, "host_syncs": 0, "launch_calls": 0}
    for evt in prof.events():
        name = evt.name
        if evt.device_type == DeviceType.CUDA:
            if name.startswith("Memcpy"):
                counts["memcpy"] += 1
            elif name.startswith("Memset"):
                counts["memset"] += 1
            else:
                counts["kernels"] += 1
        elif name in SYNC_CALLS:
            counts["host_syncs"] += 1
        elif name in LAUNCH_CALLS:
            counts["launch_calls"] += 1
    return counts


def count_torch_syncs(fn: Callable[[], Any]) -> int:
    """Synchronizing torch ops in ``fn`` as counted by ``torch.cuda.set_sync_debug_mode``."""
    import torch

    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum(1 for w in caught if "synchroniz" in str(w.message).lower())


def count_launches(call: Callable[[], Any], device: Any, calls: int = 1) -> dict[str, Any] | None:
    """Kernel launches, memcpy/memset and host syncs per call of ``call`` on a CUDA ``device``.

    Returns None on the CPU (no kernels to count). Values are per call (averaged over ``calls``).
    """
    import torch

    if torch.device(device).type != "cuda":
        return None
    global _BASELINE
    if _BASELINE is None:  # what the profiler's own start/stop records; the same every time
        _profile_counts(lambda: None)  # the first profile of a process also initializes CUPTI
        _BASELINE = _profile_counts(lambda: None)
    base = _BASELINE

    def many() -> None:
        for _ in range(calls):
            call()

    got = _profile_counts(many)
    out: dict[str, Any] = {key: max(0, got[key] - base[key]) / calls for key in got}
    try:
        out["torch_syncs"] = count_torch_syncs(call)
    except Exception as exc:  # an old torch without sync debug mode: the profiler count stands
        out["torch_syncs"] = None
        out["torch_syncs_error"] = f"{type(exc).__name__}: {exc}"
    out["calls_profiled"] = calls
    out["method"] = (
        "torch.profiler (CUPTI kernel records; runtime sync calls), minus an empty profile"
    )
    return out
