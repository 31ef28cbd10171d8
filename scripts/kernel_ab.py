# ruff: noqa: B023
"""A/B of compile-time variants of the cuda-cpp/cupy kernel on the GPU machine (development tool).

Each variant is the kernel header compiled by NVRTC (CuPy) with its own -D options; the default
build is variant "default". Exactness of every variant against the float64 reference first, then
random-mode timings with the project's Timer (CUDA events, L2 flushed, host time hidden by a spin
kernel), K=8, plus the cuda-cpp op as built by `specsample build`.

    python scripts/kernel_ab.py "old=-DSPECSAMPLE_REGSCAN=1 -DSPECSAMPLE_RESCAN_VECS=1" ...
"""

from __future__ import annotations

import sys

import specsample
import torch
from specsample.backends import cupy_backend
from specsample.backends.cuda_cpp import verify_op
from specsample.reports.timing import Timer, TimingPolicy
from specsample.workloads import acceptance_length_for, make_workload

variants = {"default": ()}
for arg in sys.argv[1:]:
    name, _, flags = arg.partition("=")
    variants[name] = tuple(flags.split())
mods = {name: cupy_backend._Module(0, opts) for name, opts in variants.items()}


def cpy(w, mod, **kw):
    return cupy_backend.verify_torch(
        w.draft_token_ids, w.draft_probs, w.target_probs, module=mod, **kw
    )


bad = 0
for B, K, V, dt in [
    (1, 8, 128256, torch.float32),
    (5, 16, 997, torch.float16),
    (64, 4, 32000, torch.bfloat16),
    (256, 8, 32000, torch.float32),
    (3, 2, 262144, torch.float32),
]:
    for acc in ("low", "high"):
        w = make_workload(B, K, V, dtype=dt, device="cuda", acceptance=acc, seed=B + K)
        u = torch.rand((B, K + 1), device="cuda")
        want = specsample.reference_verify(
            w.draft_token_ids, w.draft_probs, w.target_probs, uniforms=u
        ).token_ids
        for name, mod in mods.items():
            for cl in (0, 1, 2, 16):
                ok = torch.equal(cpy(w, mod, uniforms=u, cluster=cl)[0], want)
                if not ok:
                    print(f"MISMATCH {name} B={B} K={K} V={V} {dt} {acc} cluster={cl}", flush=True)
                bad += not ok
        for cl in (0, 1, 2, 16):
            got = verify_op(
                w.draft_token_ids, w.draft_probs, w.target_probs, uniforms=u, cluster=cl
            )
            bad += not torch.equal(got[0], want)
print(f"exactness: {bad} mismatching calls", flush=True)

timer = Timer(
    "cuda",
    TimingPolicy(warmup_calls=3, target_s=0.15, min_samples=20, max_samples=300, budget_s=20.0),
)
names = list(mods)
print(f"{'V':>6} {'acc':4} {'B':>3} " + " ".join(f"{n:>9}" for n in names) + "  cuda-cpp (us)")
for V in (32000, 128256):
    for acc in ("high", "low"):
        for B in (1, 8, 64, 256):
            w = make_workload(
                B, 8, V, device="cuda", seed=0, acceptance_length=acceptance_length_for(acc, 8)
            )
            t = [timer.measure(lambda i: cpy(w, mods[n])).to_dict()["median"] for n in names]
            cpp = timer.measure(
                lambda i: verify_op(w.draft_token_ids, w.draft_probs, w.target_probs)
            ).to_dict()["median"]
            print(
                f"{V:6d} {acc:4} {B:3d} "
                + " ".join(f"{x * 1e6:9.2f}" for x in t)
                + f" {cpp * 1e6:9.2f}",
                flush=True,
            )
