# ruff: noqa: B023
"""The greedy split kernel (every row at once over many blocks) against the cluster kernel at
small batch (development tool, GPU machine): exactness of both backends' split path against the
float64 reference (forced chunk counts, back-to-back calls, int32 ids, out-of-range ids), then
timings of the automatic choice, the cluster kernel (split=0) and the split kernel (split=N).

    python scripts/split_probe.py
"""

from __future__ import annotations

import itertools
import statistics

import specsample
import torch
from specsample.backends import _cuda_build, cupy_backend
from specsample.backends.cuda_cpp import verify_op
from specsample.reports.timing import Timer, TimingPolicy
from specsample.workloads import acceptance_length_for, make_workload

NSM = torch.cuda.get_device_properties(0).multi_processor_count
paths = {
    "cuda-cpp": lambda w, ids, **kw: verify_op(ids, None, w.target_probs, mode="greedy", **kw),
    "cupy": lambda w, ids, **kw: cupy_backend.verify_torch(
        ids, None, w.target_probs, mode="greedy", **kw
    ),
}

bad = checks = 0
for B, K, V, dt in [
    (1, 8, 128256, torch.float32),
    (1, 4, 32000, torch.float32),
    (2, 12, 4099, torch.bfloat16),
    (3, 0, 777, torch.float16),
    (1, 16, 1, torch.float32),
    (4, 40, 5003, torch.float32),
    (1, 127, 1000, torch.float16),
]:
    for drafter in (True, False):
        w = make_workload(B, K, V, dtype=dt, device="cuda", seed=B + K, greedy_drafter=drafter)
        ids = w.draft_token_ids.clone()
        if not drafter and K > 2:  # out-of-range ids are mismatches, never read
            ids[0, 1], ids[-1, K - 1] = V + 5, -3
        ref = specsample.reference_verify(ids.clamp(0, V - 1), None, w.target_probs, mode="greedy")
        want_tok, want_num = ref.token_ids.clone(), ref.num_emitted.clone()
        for b in range(B):  # an out-of-range id stops the run there
            row = ids[b]
            badk = [k for k in range(K) if not 0 <= int(row[k]) < V]
            if badk and badk[0] < int(want_num[b]) - 1:
                n = badk[0]
                want_num[b] = n + 1
                want_tok[b, n] = int(w.target_probs[b, n].float().argmax())
                want_tok[b, n + 1 :] = -1
        for (name, call), chunks, id_dt in itertools.product(
            paths.items(), (-1, 1, 7, 64), (torch.int64, torch.int32)
        ):
            for _rep in range(2):  # back to back: the counters reset
                tok, num = call(w, ids.to(id_dt), split=chunks)
                checks += 1
                if not (torch.equal(tok, want_tok) and torch.equal(num, want_num)):
                    bad += 1
                    print("MISMATCH", name, B, K, V, dt, drafter, chunks, id_dt, flush=True)
print(f"split exactness: {bad} mismatching of {checks} calls", flush=True)
print(
    "capture query outside a capture:",
    cupy_backend._stream_is_capturing(torch.cuda.current_stream().cuda_stream),
)

timer = Timer(
    "cuda",
    TimingPolicy(warmup_calls=3, target_s=0.1, min_samples=20, max_samples=200, budget_s=10.0),
)


def med(fn):
    return timer.measure(lambda i: fn()).to_dict()["median"] * 1e6


variants = {
    "auto": {},
    "cluster": {"split": 0},
    "split": {"split": 0},  # chunks filled in per cell: about one block per SM
    "split x2": {"split": 0},
}
print("greedy, cuda-cpp (us)  " + " ".join(f"{n:>9}" for n in variants), flush=True)
for K, V, acc, B in itertools.product((4, 8), (32000, 128256), ("high", "low"), (1, 2, 4)):
    w = make_workload(
        B,
        K,
        V,
        device="cuda",
        seed=0,
        acceptance_length=acceptance_length_for(acc, K),
        greedy_drafter=True,
    )
    n = max(1, NSM // (B * (K + 1)))
    variants["split"] = {"split": n}
    variants["split x2"] = {"split": 2 * n}
    auto = _cuda_build.choose_split(B, K, V, True, NSM)
    rounds = [
        [med(lambda: paths["cuda-cpp"](w, w.draft_token_ids, **kw)) for kw in variants.values()]
        for _ in range(3)
    ]
    t = [statistics.median(r[i] for r in rounds) for i in range(len(variants))]
    print(
        f"K={K} {V:6d} {acc:4} B={B} " + " ".join(f"{x:9.2f}" for x in t) + f"  (auto {auto})",
        flush=True,
    )
