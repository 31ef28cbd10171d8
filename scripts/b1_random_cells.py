# ruff: noqa: B023
"""Random mode at B = 1 on one machine: the triton backend (tuned) against the cupy launch path of
the cuda-cpp kernel, interleaved rounds, medians (development tool, GPU machine)."""

from __future__ import annotations

import itertools
import statistics
import sys

import specsample
from specsample.backends import cupy_backend
from specsample.reports.timing import Timer, TimingPolicy
from specsample.workloads import acceptance_length_for, make_workload

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
timer = Timer(
    "cuda",
    TimingPolicy(warmup_calls=3, target_s=0.1, min_samples=20, max_samples=200, budget_s=10.0),
)
tri = specsample.get_backend("triton")
paths = {
    "triton": lambda w: tri.verify(
        w.draft_token_ids, w.draft_probs, w.target_probs, check_finite=False
    ),
    "cupy": lambda w: cupy_backend.verify_torch(w.draft_token_ids, w.draft_probs, w.target_probs),
}
print("cell                       " + "  ".join(f"{n:>9}" for n in paths) + "  (us)")
for K, V, acc in itertools.product((8, 4), (128256, 32000), ("low", "high")):
    w = make_workload(
        1, K, V, device="cuda", seed=0, acceptance_length=acceptance_length_for(acc, K)
    )
    for f in paths.values():
        f(w)  # tune / compile first
    ts = [
        [timer.measure(lambda i: f(w)).to_dict()["median"] * 1e6 for f in paths.values()]
        for _ in range(rounds)
    ]
    med = [statistics.median(r[j] for r in ts) for j in range(len(paths))]
    print(f"K={K} V={V:6d} {acc:4}           " + "  ".join(f"{t:9.2f}" for t in med), flush=True)
