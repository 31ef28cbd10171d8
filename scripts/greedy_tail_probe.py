# ruff: noqa: B023
"""Where large-batch greedy time goes (development tool, GPU machine): synthetic accepted-run
patterns at B = 256 (every request rejects its first draft, every request accepts exactly one, the
runner's low-acceptance drafts, the same capped at two, one long request first or last), timed for
several launch configurations, against the bytes each pattern must read.

    python scripts/greedy_tail_probe.py [--batch 256] [--ks 8] [--vocabs 32000,128256]
"""

from __future__ import annotations

import argparse

import torch
from specsample.backends import cupy_backend
from specsample.reports.timing import Timer, TimingPolicy
from specsample.workloads import acceptance_length_for, make_workload

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=256)
ap.add_argument("--ks", default="8")
ap.add_argument("--vocabs", default="32000,128256")
ap.add_argument("--configs", default="0x0,1x512,2x512,4x256,8x256,16x256")
ap.add_argument("--bandwidth", type=float, default=2.99e12, help="copy bandwidth, bytes/s")
ap.add_argument("variants", nargs="*", help="name=-Dflags... (extra NVRTC builds to compare)")
args = ap.parse_args()

mods = {"default": cupy_backend._Module(0, ())}
for arg in args.variants:
    name, _, flags = arg.partition("=")
    mods[name] = cupy_backend._Module(0, tuple(flags.split()))
timer = Timer(
    "cuda",
    TimingPolicy(warmup_calls=3, target_s=0.1, min_samples=20, max_samples=200, budget_s=10.0),
)
configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]


def with_runs(q: torch.Tensor, runs: torch.Tensor) -> torch.Tensor:
    """Draft ids [B, K] such that request b accepts exactly runs[b] drafts (argmax, then not)."""
    B, K1, V = q.shape
    am = q[:, :-1].float().argmax(-1)
    k = torch.arange(K1 - 1, device=q.device)
    return torch.where(k[None, :] < runs[:, None], am, (am + 1) % V)


B = args.batch
for K in (int(k) for k in args.ks.split(",")):
    for V in (int(v) for v in args.vocabs.split(",")):
        w = make_workload(
            B,
            K,
            V,
            device="cuda",
            seed=0,
            acceptance_length=acceptance_length_for("low", K),
            greedy_drafter=True,
        )
        q = w.target_probs
        am = q[:, :-1].argmax(-1)
        natural = (w.draft_token_ids == am).int().cumprod(-1).sum(-1)
        zeros = torch.zeros(B, dtype=torch.int64, device="cuda")
        one_first, one_last, five_last = zeros.clone(), zeros.clone(), zeros.clone()
        one_first[0], one_last[-1], five_last[-1] = K, K, min(5, K)
        patterns = {
            "run 0": zeros,
            "run 1": zeros + min(1, K),
            "low": natural,
            "low cap 2": natural.clamp(max=2),
            "low sorted desc": natural.sort(descending=True).values,
            "K first": one_first,
            "K last": one_last,
            "5 last": five_last,
        }
        hist = torch.bincount(natural, minlength=K + 1).tolist()
        print(f"\nK={K} V={V} B={B}: natural runs histogram {hist}", flush=True)
        print(
            f"{'pattern':16} {'floor':>7} "
            + " ".join(f"{n}:{c}x{t}".rjust(14) for n in mods for c, t in configs)
            + "   (us)",
            flush=True,
        )
        for label, runs in patterns.items():
            ids = with_runs(q, runs.to("cuda"))
            rows = (runs + 1).clamp(max=K + 1)
            floor = float(rows.sum()) * V * q.element_size() / args.bandwidth * 1e6
            ts = []
            for mod in mods.values():
                for c, t in configs:
                    r = timer.measure(
                        lambda i: cupy_backend.verify_torch(
                            ids, None, q, mode="greedy", cluster=c, threads=t, module=mod
                        )
                    )
                    ts.append(r.to_dict()["median"] * 1e6)
            print(f"{label:16} {floor:7.1f} " + " ".join(f"{x:14.1f}" for x in ts), flush=True)
