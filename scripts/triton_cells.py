# ruff: noqa: B023
"""Time the triton backend (tuned) and the cuda-cpp op on the issue's key random cells with the
project's Timer (development tool, GPU machine): a same-machine baseline for kernel A/Bs."""

from __future__ import annotations

import specsample
from specsample.reports.timing import Timer, TimingPolicy
from specsample.workloads import acceptance_length_for, make_workload

timer = Timer(
    "cuda",
    TimingPolicy(warmup_calls=3, target_s=0.1, min_samples=20, max_samples=200, budget_s=10.0),
)
backends = {n: specsample.get_backend(n) for n in ("triton", "cuda-cpp")}
print("cell                      " + "  ".join(f"{n:>9}" for n in backends) + "  (us)")
for V, B, acc in [
    (128256, 1, "low"),
    (128256, 64, "low"),
    (128256, 256, "low"),
    (128256, 256, "high"),
    (32000, 1, "low"),
]:
    w = make_workload(
        B, 8, V, device="cuda", seed=0, acceptance_length=acceptance_length_for(acc, 8)
    )
    ts = []
    for be in backends.values():
        be.verify(w.draft_token_ids, w.draft_probs, w.target_probs)  # tune / build first
        ts.append(
            timer.measure(
                lambda i: be.verify(
                    w.draft_token_ids, w.draft_probs, w.target_probs, check_finite=False
                )
            ).to_dict()["median"]
            * 1e6
        )
    print(f"V={V:6d} B={B:3d} {acc:4}       " + "  ".join(f"{t:9.2f}" for t in ts), flush=True)
