"""Where one verify call's time goes, phase by phase (development tool, GPU machine).

Builds the CuPy module with -DSPECSAMPLE_TRACE=1 (lane 0 of a warp stores clock64() at the
kernel's phase marks, per block), runs random-mode calls with the L2 flushed before each, and
prints per phase the median over blocks and calls of the cycles since the previous mark (and in us
at the SM clock), then each block's lifetime (entry to its last warp's exit), median and max.
Random-mode marks: 0 entry, 1 decisions made (every warp), 2 segment streamed, 3 segment sums
exchanged across the cluster, 4 token found (the owning warp; its block only), 5 a warp's exit.

    python scripts/trace_phases.py [-DFLAG=1 ...] [B ...]
"""

import statistics
import sys

import cupy
import torch
from specsample.backends import _cuda_build, cupy_backend
from specsample.workloads import make_workload

# (name, from mark, to mark)
PHASES = [
    ("decide", 0, 1),
    ("stream", 1, 2),
    ("exchange", 2, 3),
    ("locate", 3, 6),
    ("pick", 6, 4),
    ("write", 4, 5),
]
flags = tuple(a for a in sys.argv[1:] if a.startswith("-D"))
batches = [int(a) for a in sys.argv[1:] if not a.startswith("-D")] or [1, 64]
mod = cupy_backend._Module(0, ("-DSPECSAMPLE_TRACE=1", *flags))
# the same module with the trace buffer among the name expressions, so NVRTC keeps and names it
digest = _cuda_build.sources_hash(_cuda_build.KERNEL_HEADER)
mod.module = cupy.RawModule(
    code=f'// trace {digest}\n#include "{_cuda_build.KERNEL_HEADER}"\n',
    options=(
        "-std=c++17",
        f"-I{_cuda_build.csrc_dir()}",
        "-DSPECSAMPLE_TRACE=1",
        *flags,
        *(("-DSPECSAMPLE_CLUSTERS=1",) if mod.clusters else ()),
    ),
    name_expressions=[*mod.names.values(), "specsample_trace"],
)
glob = mod.module.get_global("specsample_trace")
trace = cupy.ndarray((1024 * 16,), dtype=cupy.uint64, memptr=glob)
clock_hz = cupy.cuda.runtime.getDeviceProperties(0)["clockRate"] * 1e3
flush = torch.empty(200 * 2**20, dtype=torch.uint8, device="cuda")
for B in batches:
    w = make_workload(B, 8, 128256, device="cuda", acceptance="low", seed=1)
    cl, nt, _ = _cuda_build.choose_config(B, 8, 128256, False, mod.num_sms, mod.clusters)
    deltas = {p: [] for p, _, _ in PHASES}
    life = []
    for rep in range(12):
        trace.fill(0)
        flush.add_(1)
        torch.cuda.synchronize()
        cupy_backend.verify_torch(w.draft_token_ids, w.draft_probs, w.target_probs, module=mod)
        torch.cuda.synchronize()
        if rep < 2:
            continue
        t = trace.get().reshape(1024, 16)[: min(1024, B * cl)].astype("int64")
        for blk in t:
            for name, a, z in PHASES:
                if blk[a] and blk[z]:
                    deltas[name].append(int(blk[z] - blk[a]))
            if blk[5] and blk[0]:
                life.append(int(blk[5] - blk[0]))
    print(
        f"B={B} cluster={cl} threads={nt} {' '.join(flags)} (over blocks and 10 calls; SM clock {clock_hz / 1e9:.2f} GHz)"
    )
    total = 0.0
    for name, _, _ in PHASES:
        if deltas[name]:
            m = statistics.median(deltas[name])
            total += m
            mx = max(deltas[name])
            print(
                f"  {name:9s} median {m / clock_hz * 1e6:6.2f} us  max {mx / clock_hz * 1e6:6.2f} us  (n={len(deltas[name])})"
            )
    print(f"  sum of medians {total / clock_hz * 1e6:6.2f} us")
    if life:
        print(
            f"  block lifetime median {statistics.median(life) / clock_hz * 1e6:6.2f} us  max {max(life) / clock_hz * 1e6:6.2f} us"
        )
