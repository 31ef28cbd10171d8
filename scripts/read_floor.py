# ruff: noqa: B023
"""What one launch that only reads N bytes costs under the project's Timer (development tool, GPU
machine): torch.sum over N bytes of float32 (one reduction kernel, read-bound), beside N / copy
bandwidth, for the byte counts of greedy B = 256 cells; then the greedy kernel itself on those
cells (CuPy launch path, auto configuration), for a same-machine ratio.

    python scripts/read_floor.py [--bandwidth 2.99e12]
"""

from __future__ import annotations

import argparse

import torch
from specsample.backends import cupy_backend
from specsample.reports.timing import Timer, TimingPolicy
from specsample.workloads import acceptance_length_for, make_workload

ap = argparse.ArgumentParser()
ap.add_argument("--bandwidth", type=float, default=2.99e12)
args = ap.parse_args()
timer = Timer(
    "cuda",
    TimingPolicy(warmup_calls=3, target_s=0.1, min_samples=30, max_samples=200, budget_s=5.0),
)


def med(fn) -> float:
    return timer.measure(lambda i: fn()).to_dict()["median"] * 1e6


print("greedy B=256 K=8 cell      bytes    bytes/bw   torch.sum(bytes)   kernel   (us)")
for V, acc in ((32000, "low"), (32000, "high"), (128256, "low")):
    w = make_workload(
        256,
        8,
        V,
        device="cuda",
        seed=0,
        acceptance_length=acceptance_length_for(acc, 8),
        greedy_drafter=True,
    )
    q = w.target_probs
    am = q[:, :-1].argmax(-1)
    run = (w.draft_token_ids == am).int().cumprod(-1).sum(-1)
    nbytes = int((run + 1).clamp(max=9).sum()) * V * 4
    x = torch.rand(nbytes // 4, device="cuda")
    out = torch.empty((), device="cuda")
    t_sum = med(lambda: torch.sum(x, dim=0, out=out))
    t_k = med(lambda: cupy_backend.verify_torch(w.draft_token_ids, None, q, mode="greedy"))
    floor = nbytes / args.bandwidth * 1e6
    print(
        f"V={V:6d} {acc:4}        {nbytes / 1e6:7.1f} MB {floor:8.1f}   {t_sum:8.1f} ({t_sum / floor:.2f}x)"
        f"   {t_k:7.1f} ({t_k / floor:.2f}x)",
        flush=True,
    )
