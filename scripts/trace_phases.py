"""Where one verify call's time goes, phase by phase (development tool, GPU machine).

Builds the CuPy module with -DSPECSAMPLE_TRACE=1 (thread 0 of every block stores clock64() at the
kernel's phase marks), runs random-mode calls with the L2 flushed before each, and prints per
phase the median over blocks and calls of the cycles since the previous mark (and in us at the
SM clock). Marks: 0 entry, 1 draft ids loaded, 2 decisions made, 3 chunk streamed, 4 first cluster
barrier, 5 second cluster barrier (peers combined), 6 crossing found (owner), 7 outputs written.

    python scripts/trace_phases.py [B ...]
"""

import statistics
import sys

import cupy
import torch
from specsample.backends import _cuda_build, cupy_backend
from specsample.workloads import make_workload

PHASES = ["ids", "decide", "stream", "barrier1", "barrier2", "crossing", "outputs"]
mod = cupy_backend._Module(0, ("-DSPECSAMPLE_TRACE=1",))
# the same module with the trace buffer among the name expressions, so NVRTC keeps and names it
digest = _cuda_build.sources_hash(_cuda_build.KERNEL_HEADER)
mod.module = cupy.RawModule(
    code=f'// trace {digest}\n#include "{_cuda_build.KERNEL_HEADER}"\n',
    options=(
        "-std=c++17",
        f"-I{_cuda_build.csrc_dir()}",
        "-DSPECSAMPLE_TRACE=1",
        *(("-DSPECSAMPLE_CLUSTERS=1",) if mod.clusters else ()),
    ),
    name_expressions=[*mod.names.values(), "specsample_trace"],
)
mod.kernel("float32", 16 if mod.clusters else 1, False)  # compile now
glob = mod.module.get_global("specsample_trace")
trace = cupy.ndarray((1024 * 16,), dtype=cupy.uint64, memptr=glob)
clock_hz = cupy.cuda.runtime.getDeviceProperties(0)["clockRate"] * 1e3
flush = torch.empty(200 * 2**20, dtype=torch.uint8, device="cuda")
for B in [int(a) for a in sys.argv[1:]] or [1, 64]:
    w = make_workload(B, 8, 128256, device="cuda", acceptance="low", seed=1)
    cl, nt, _ = _cuda_build.choose_config(B, 8, 128256, False, mod.num_sms, mod.clusters)
    deltas = {p: [] for p in PHASES}
    for rep in range(12):
        trace.fill(0)
        flush.add_(1)
        torch.cuda.synchronize()
        cupy_backend.verify_torch(w.draft_token_ids, w.draft_probs, w.target_probs, module=mod)
        torch.cuda.synchronize()
        if rep < 2:
            continue
        t = trace.get().reshape(1024, 16)[: B * cl].astype("int64")
        for blk in t:
            for i, name in enumerate(PHASES, start=1):
                if blk[i] and blk[i - 1]:
                    deltas[name].append(int(blk[i] - blk[i - 1]))
    print(
        f"B={B} cluster={cl} threads={nt} (median over blocks and 10 calls; SM clock {clock_hz / 1e9:.2f} GHz)"
    )
    total = 0.0
    for name in PHASES:
        if deltas[name]:
            m = statistics.median(deltas[name])
            total += m
            print(
                f"  {name:9s} {m:8.0f} cycles {m / clock_hz * 1e6:6.2f} us  (n={len(deltas[name])})"
            )
    print(f"  sum      {total:8.0f} cycles {total / clock_hz * 1e6:6.2f} us")
