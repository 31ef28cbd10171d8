# ruff: noqa: B023
"""Where a B = 1 random call's time goes after the L2 flush: code or data (development tool, GPU
machine; docs/perf-notes-cuda.md, session 6). Run ONE path per process (fresh module, nothing
else loaded), e.g.:

    python scripts/b1_decompose.py cluster                 # main's header, 16-block cluster kernel
    python scripts/b1_decompose.py cluster -DSPECSAMPLE_WAVE_LARGE=1
    python scripts/b1_decompose.py split --csrc DIR        # the header of branch
                                                           # experiment/random-split-kernel
    python scripts/b1_decompose.py triton
    python scripts/b1_decompose.py floor                   # one tiny torch kernel

Each timed call runs under three conditions, interleaved call by call:
  cold  - L2 flushed (the project's Timer method), a spin kernel, the call;
  code  - L2 flushed, then the same kernel on another workload of the same shape (its code is in
          L2 and the SMs' instruction caches, this workload's data is not), the spin, the call;
  warm  - no flush: the call right after the same call.
cold - code is what fetching the kernel's instructions costs after a flush.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import specsample
import torch
from specsample.backends import _cuda_build
from specsample.reports.timing import CacheFlusher
from specsample.workloads import acceptance_length_for, make_workload

ap = argparse.ArgumentParser()
ap.add_argument("path", choices=("cluster", "split", "triton", "floor"))
ap.add_argument("--csrc", default=None, help="directory holding verify_kernel.cuh")
ap.add_argument("--chunks", type=int, default=32)
ap.add_argument("--threads", type=int, default=256)
ap.add_argument("--samples", type=int, default=300)
ap.add_argument("--tag", default="")
args, flags = ap.parse_known_args()

dev = torch.device("cuda")
cells = [(8, 128256, "low"), (8, 128256, "high"), (4, 128256, "low"), (8, 32000, "low")]


def workload(K, V, acc, seed):
    return make_workload(
        1, K, V, device="cuda", seed=seed, acceptance_length=acceptance_length_for(acc, K)
    )


def build_kernel():
    """One CuPy RawModule holding only the kernel this path times."""
    import cupy

    csrc = args.csrc or str(_cuda_build.csrc_dir())
    if args.path == "cluster":
        name = "specsample::verify_cluster_kernel<float, 16, false, true>"  # random, aligned
    else:
        name = "specsample::verify_random_split_kernel<float, 1>"
    code = f'#include "{_cuda_build.KERNEL_HEADER}"\n// {flags}\n'
    opts = ("-std=c++17", f"-I{csrc}", "-DSPECSAMPLE_CLUSTERS=1", *flags)
    mod = cupy.RawModule(code=code, options=opts, name_expressions=[name])
    kern = mod.get_function(name)
    if args.path == "cluster":
        cupy.cuda.driver.funcSetAttribute(kern.kernel.ptr, 14, 1)  # non-portable cluster size
    return kern


def make_call(w, uniforms=None):
    """A zero-argument launcher for workload w on the current torch stream."""
    if args.path == "floor":
        x = torch.zeros(1, device=dev)
        return lambda: x.add_(1.0)
    if args.path == "triton":
        tri = specsample.get_backend("triton")
        return lambda: tri.verify(
            w.draft_token_ids, w.draft_probs, w.target_probs, uniforms=uniforms, check_finite=False
        )
    import cupy

    K, V = w.draft_token_ids.shape[1], w.target_probs.shape[2]
    ids = w.draft_token_ids.contiguous()
    out = torch.empty((1, K + 1), dtype=torch.int64, device=dev)
    num = torch.empty((1,), dtype=torch.int64, device=dev)
    a = (
        np.uint64(ids.data_ptr()),
        np.uint64(w.draft_probs.data_ptr()),
        np.uint64(w.target_probs.data_ptr()),
        np.uint64(0 if uniforms is None else uniforms.data_ptr()),
        np.uint64(out.data_ptr()),
        np.uint64(num.data_ptr()),
        np.int64(V),
        np.int32(1),
        np.int32(K),
        np.int32(1 if ids.dtype == torch.int64 else 0),
        np.int32(0),
        np.int32(1),
        np.uint64(1234),
        np.uint64(0),
        np.uint64(0),
        np.uint64(0),
        np.uint64(0),
        np.int32(0),
    )
    keep = (ids, out, num, w)
    if args.path == "cluster":
        grid, block = (16,), (512,)
    else:
        nwarps = args.threads // 32
        sums = torch.empty(args.chunks * nwarps, dtype=torch.float64, device=dev)
        count = torch.zeros(1, dtype=torch.int32, device=dev)
        a = (*a, np.int32(args.chunks), np.uint64(sums.data_ptr()), np.uint64(count.data_ptr()))
        keep = (*keep, sums, count)
        grid, block = (args.chunks,), (args.threads,)
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)

    def call():
        with stream:
            KERN(grid, block, a)
        return keep[1]

    return call


KERN = build_kernel() if args.path in ("cluster", "split") else None
flush = CacheFlusher(dev)
sleep_cycles = 400_000  # 200 us at 2 GHz: the host is ahead of the GPU when the call starts
report = []
bad = 0
for K, V, acc in cells:
    w, w2 = workload(K, V, acc, 0), workload(K, V, acc, 1)
    if args.path != "floor":  # exact against the float64 reference under explicit uniforms
        u = torch.rand((1, K + 1), device=dev)
        want = specsample.reference_verify(
            w.draft_token_ids, w.draft_probs, w.target_probs, uniforms=u
        ).token_ids
        got = make_call(w, u)()
        got = got[0] if isinstance(got, tuple) else getattr(got, "token_ids", got)
        bad += int(not torch.equal(got.cpu(), want.cpu()))
    call, other = make_call(w), make_call(w2)
    for _ in range(5):
        call(), other()
    torch.cuda.synchronize()
    ev = {c: [] for c in ("cold", "code", "warm")}
    for i in range(args.samples):
        for cond in ("cold", "code", "warm"):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if cond == "warm":
                call()
            else:
                flush()
                if cond == "code":
                    other()
            torch.cuda._sleep(sleep_cycles)
            s.record()
            call()
            e.record()
            ev[cond].append((s, e))
        if i % 16 == 15:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    med = {c: statistics.median(s.elapsed_time(e) * 1e3 for s, e in v) for c, v in ev.items()}
    report.append(
        f"K={K} V={V} {acc}: cold {med['cold']:.2f} code {med['code']:.2f} warm {med['warm']:.2f}"
    )
label = " ".join([args.path, args.tag, *flags]).strip()
print(f"{label} | " + " | ".join(report) + f" | mismatches {bad}", flush=True)
