# ruff: noqa: B023
"""A/B of compile-time variants of the cuda-cpp/cupy kernel on the GPU machine (development tool).

Each variant is the kernel header compiled by NVRTC (CuPy) with its own -D options; the default
build is variant "default". First the exactness of every variant against the float64 reference
(explicit uniforms, and the in-kernel Philox stream recomputed in Python), over dtypes, shapes,
cluster sizes and block sizes; then random-mode timings with the project's Timer (CUDA events, L2
flushed, host time hidden by a spin kernel), K=8, the standard grid's cells.

    python scripts/kernel_ab.py [--sweep] [--op] [--greedy] "name=-DFLAG=1 -DOTHER=2" ...

--sweep  also times every (cluster, threads) launch configuration of the default variant;
--op     also times the cuda-cpp op as built by `specsample build`;
--greedy also times (and sweeps) greedy mode; --modes greedy times greedy mode only;
--rounds N times every variant N times, interleaved, and prints the median (noisy small cells);
--batches / --sweep-batches restrict the grids; --no-exact skips the exactness checks.
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import specsample
import torch
from specsample.backends import _cuda_build, cupy_backend
from specsample.reports.timing import Timer, TimingPolicy
from specsample.workloads import acceptance_length_for, make_workload

ap = argparse.ArgumentParser()
ap.add_argument("variants", nargs="*", help="name=-Dflags...")
ap.add_argument("--sweep", action="store_true")
ap.add_argument("--op", action="store_true")
ap.add_argument("--greedy", action="store_true")
ap.add_argument("--modes", default=None, help="timed modes, e.g. greedy (default: random[,greedy])")
ap.add_argument("--batches", default="1,8,64,256", help="batch sizes of the timing grid")
ap.add_argument("--ks", default="8", help="draft lengths K of the timing grid")
ap.add_argument("--rows", type=int, default=0, help="greedy rows_per_step of the timing grid")
ap.add_argument("--sweep-batches", default="1,4,8,16,32,64,128,256")
ap.add_argument("--rounds", type=int, default=1, help="interleaved timing rounds (median of them)")
ap.add_argument("--no-exact", action="store_true", help="skip the exactness checks")
args = ap.parse_args()
BATCHES = [int(b) for b in args.batches.split(",")]
KS = [int(k) for k in args.ks.split(",")]
SWEEP_BATCHES = [int(b) for b in args.sweep_batches.split(",")]

variants = {"default": ()}
for arg in args.variants:
    name, _, flags = arg.partition("=")
    variants[name] = tuple(flags.split())
mods = {name: cupy_backend._Module(0, opts) for name, opts in variants.items()}
CLUSTERS = (1, 2, 4, 8, 16) if mods["default"].clusters else (1,)


def cpy(w, mod, **kw):
    return cupy_backend.verify_torch(
        w.draft_token_ids, w.draft_probs, w.target_probs, module=mod, **kw
    )


bad = checks = 0


def expect(ok: bool, label: str) -> None:
    """Count one exactness check; report it when it fails."""
    global bad, checks
    checks += 1
    if not ok:
        bad += 1
        print(f"MISMATCH {label}", flush=True)


for B, K, V, dt, has_p in (
    []
    if args.no_exact
    else [
        (1, 8, 128256, torch.float32, True),
        (5, 16, 997, torch.float16, True),
        (64, 4, 32000, torch.bfloat16, True),
        (256, 8, 32000, torch.float32, True),
        (3, 2, 262144, torch.float32, True),
        (4, 40, 5003, torch.float32, True),
        (7, 3, 1, torch.float32, True),
        (2, 0, 777, torch.bfloat16, True),
        (6, 8, 4099, torch.float32, False),
        (9, 5, 50000, torch.float16, False),
    ]
):
    for acc in ("low", "high"):
        w = make_workload(
            B, K, V, dtype=dt, device="cuda", acceptance=acc, seed=B + K, with_draft_probs=has_p
        )
        dp = w.draft_probs
        u = torch.rand((B, K + 1), device="cuda")
        want = specsample.reference_verify(
            w.draft_token_ids, dp, w.target_probs, uniforms=u
        ).token_ids
        for name, mod in mods.items():
            configs = [(0, 0)]
            if name == "default":
                configs += [(cl, nt) for cl in CLUSTERS for nt in (64, 256, 512)]
            else:
                configs += [(cl, 0) for cl in (1, 2, 16) if cl in CLUSTERS]
            for cl, nt in configs:
                got = cpy(w, mod, uniforms=u, cluster=cl, threads=nt)[0]
                expect(
                    torch.equal(got, want),
                    f"{name} B={B} K={K} V={V} {dt} p={has_p} {acc} cl={cl} nt={nt}",
                )
            # the in-kernel Philox stream
            g = torch.Generator(device="cuda").manual_seed(1234 + B)
            seed, off = g.initial_seed(), g.get_offset()
            got = cpy(w, mod, generator=g)[0]
            uu = _cuda_build.philox_uniforms(seed, off, B, K).to("cuda")
            want_p = specsample.reference_verify(
                w.draft_token_ids, dp, w.target_probs, uniforms=uu
            ).token_ids
            advanced = g.get_offset() - off == _cuda_build.philox_increment(K)
            expect(
                torch.equal(got, want_p) and advanced, f"philox {name} B={B} K={K} V={V} {dt} {acc}"
            )
# edge cases: residual all zero (p == q: the fallback to q), int32 ids
w = make_workload(5, 6, 3001, device="cuda", acceptance="low", seed=7)
u = torch.rand((5, 7), device="cuda")
q = w.target_probs
edge = [
    ("p==q", w.draft_token_ids, q[:, :6].contiguous(), q),
    ("int32-ids", w.draft_token_ids.to(torch.int32), w.draft_probs, q),
    # q rows = 0.5 * one-hot(draft): rejected half the time, with max(0, q - onehot) == 0
    (
        "onehot-zero-residual",
        w.draft_token_ids,
        None,
        torch.cat(
            [0.5 * torch.nn.functional.one_hot(w.draft_token_ids, 3001).float(), q[:, 6:]], 1
        ),
    ),
]
for label, ids, dp, tq in [] if args.no_exact else edge:
    want = specsample.reference_verify(ids.long(), dp, tq, uniforms=u).token_ids
    for name, mod in mods.items():
        for cl in CLUSTERS:
            got = cupy_backend.verify_torch(ids, dp, tq, module=mod, uniforms=u, cluster=cl)[0]
            expect(torch.equal(got, want), f"edge {label} {name} cl={cl}")
# greedy: long accepted runs (argmax drafts) and ordinary drafts, every cluster size and block size
for B, K, V, dt in (
    []
    if args.no_exact
    else [
        (1, 8, 128256, torch.float32),
        (3, 12, 4099, torch.bfloat16),
        (64, 4, 32000, torch.float16),
    ]
):
    for drafter in (True, False):
        w = make_workload(B, K, V, dtype=dt, device="cuda", seed=B + K, greedy_drafter=drafter)
        want = specsample.reference_verify(
            w.draft_token_ids, w.draft_probs, w.target_probs, mode="greedy"
        ).token_ids
        for name, mod in mods.items():
            for cl in CLUSTERS:
                for nt, rows in ((0, 0), (128, 1), (512, 16)):
                    got = cpy(w, mod, mode="greedy", cluster=cl, threads=nt, rows_per_step=rows)[0]
                    expect(
                        torch.equal(got, want),
                        f"greedy {name} B={B} K={K} V={V} cl={cl} nt={nt} rows={rows}",
                    )
print(f"exactness: {bad} mismatching of {checks} calls", flush=True)

timer = Timer(
    "cuda",
    TimingPolicy(warmup_calls=3, target_s=0.1, min_samples=20, max_samples=200, budget_s=10.0),
)


def med(fn):
    return timer.measure(lambda i: fn()).to_dict()["median"] * 1e6


def timing_workload(B, V, acc, mode, K=8):
    """Float32; greedy drafts from an argmax drafter, as the runner makes them."""
    return make_workload(
        B,
        K,
        V,
        device="cuda",
        seed=0,
        acceptance_length=acceptance_length_for(acc, K),
        greedy_drafter=mode == "greedy",
    )


modes = ("random", "greedy") if args.greedy else ("random",)
if args.modes:
    modes = tuple(args.modes.split(","))
names = list(mods)
for mode in modes:
    print(
        f"\n{mode}: {'V':>6} {'acc':4} {'B':>3} "
        + " ".join(f"{n:>9}" for n in names)
        + ("  cuda-cpp" if args.op else "")
        + "  (us)",
        flush=True,
    )
    for K, V, acc, B in itertools.product(KS, (32000, 128256), ("high", "low"), BATCHES):
        w = timing_workload(B, V, acc, mode, K)
        rounds = [
            [med(lambda: cpy(w, mods[n], mode=mode, rows_per_step=args.rows)) for n in names]
            for _ in range(args.rounds)
        ]
        t = [statistics.median(r[i] for r in rounds) for i in range(len(names))]
        line = f"{mode}: K={K} {V:6d} {acc:4} {B:3d} " + " ".join(f"{x:9.2f}" for x in t)
        if args.op:
            from specsample.backends.cuda_cpp import verify_op

            line += f" {med(lambda: verify_op(w.draft_token_ids, w.draft_probs, w.target_probs, greedy=mode == 'greedy')):9.2f}"
        print(line, flush=True)

if args.sweep:
    mod = mods["default"]
    cfgs = [(cl, nt) for cl in CLUSTERS for nt in (128, 256, 512)]
    for mode in modes:
        print(
            f"\nsweep {mode} (us): V acc B | "
            + " ".join(f"{c}x{n}" for c, n in cfgs)
            + " | best auto",
            flush=True,
        )
        for V, acc, B in itertools.product((32000, 128256), ("high", "low"), SWEEP_BATCHES):
            w = timing_workload(B, V, acc, mode)
            ts = [med(lambda: cpy(w, mod, mode=mode, cluster=c, threads=n)) for c, n in cfgs]
            auto = med(lambda: cpy(w, mod, mode=mode))
            best = min(range(len(cfgs)), key=lambda i: ts[i])
            print(
                f"sweep {mode} {V} {acc} {B:3d} | "
                + " ".join(f"{x:6.1f}" for x in ts)
                + f" | {cfgs[best][0]}x{cfgs[best][1]} {ts[best]:.1f} auto {auto:.1f}",
                flush=True,
            )
