# ruff: noqa: B023
"""Greedy mode at large batch: rows per step (development tool, GPU machine).

The cluster kernel decides a greedy request in steps of 1, 2, 4, ... rows (capped at
``rows_per_step``; docs/perf-notes-cuda.md). The automatic configuration uses one row per step
above B = 16. This times the runner's greedy cells (same workloads: seed 0, argmax drafter) through
the op with the automatic cluster and block size and several caps, checks every variant's tokens
against the float64 reference, and prints medians (us) with the ratio to the bytes each call must
read (rows up to the first mismatch) at the given copy bandwidth.

    python scripts/greedy_steps_probe.py [--batch 64,256] [--rows 1,2,4,9] [--rounds 2]
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import specsample
import torch
from specsample.backends import _cuda_build
from specsample.backends.cuda_cpp import verify_op
from specsample.reports.timing import Timer, TimingPolicy
from specsample.workloads import acceptance_length_for, make_workload

ap = argparse.ArgumentParser()
ap.add_argument("--batch", default="64,256")
ap.add_argument("--ks", default="4,8")
ap.add_argument("--vocabs", default="32000,128256")
ap.add_argument("--rows", default="1,2,4,9", help="rows_per_step caps to compare")
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--bandwidth", type=float, default=2.99e12, help="copy bandwidth, bytes/s")
args = ap.parse_args()

timer = Timer(
    "cuda",
    TimingPolicy(warmup_calls=3, target_s=0.1, min_samples=20, max_samples=200, budget_s=10.0),
)
caps = [int(r) for r in args.rows.split(",")]
sms = torch.cuda.get_device_properties(0).multi_processor_count
print(
    "cell (B K V acc)          "
    + "".join(f"{'R=' + str(r):>14}" for r in caps)
    + "   (us, x bytes)"
)
bad = 0
for B, K, V, acc in itertools.product(
    (int(b) for b in args.batch.split(",")),
    (int(k) for k in args.ks.split(",")),
    (int(v) for v in args.vocabs.split(",")),
    ("low", "high"),
):
    w = make_workload(
        B,
        K,
        V,
        device="cuda",
        seed=0,
        acceptance_length=acceptance_length_for(acc, K),
        greedy_drafter=True,
    )
    want = specsample.reference_verify(
        w.draft_token_ids, w.draft_probs, w.target_probs, mode="greedy"
    )
    rows_read = int(want.num_emitted.sum().item())  # rows 0 .. k* of each request
    must = rows_read * V * w.target_probs.element_size()
    cl, nt, _ = _cuda_build.choose_config(B, K, V, True, sms, True, w.target_probs.element_size())

    def call(r):
        return verify_op(
            w.draft_token_ids,
            w.draft_probs,
            w.target_probs,
            mode="greedy",
            cluster=cl,
            threads=nt,
            rows_per_step=r,
        )

    for r in caps:
        tok, num = call(r)
        ok = torch.equal(tok, want.token_ids) and torch.equal(num, want.num_emitted)
        bad += not ok
    ts = {r: [] for r in caps}
    for _ in range(args.rounds):
        for r in caps:
            ts[r].append(timer.measure(lambda i: call(r)).to_dict()["median"] * 1e6)
    floor = must / args.bandwidth * 1e6
    cells = "".join(
        f"{statistics.median(ts[r]):8.1f} {statistics.median(ts[r]) / floor:4.2f}x" for r in caps
    )
    print(f"B={B:3d} K={K} V={V:6d} {acc:4}    {cells}   ({cl}x{nt})", flush=True)
print(f"mismatches {bad}")
