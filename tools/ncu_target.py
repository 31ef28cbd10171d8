"""The call Nsight Compute profiles: one ``verify`` of a benchmark-grid workload on a GPU.

A warm-up call (which builds, compiles or tunes) runs first; only the calls after it run between
``cudaProfilerStart`` and ``cudaProfilerStop``, so profile with ``ncu --profile-from-start off``
(tools/ncu_profile.sh does).

    python tools/ncu_target.py --backend cuda-cpp --batch 1 --mode random
    python tools/ncu_target.py --backend cuda-cpp --batch 1 --mode random --rule block
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="tools/ncu_target.py",
        description="One profiled verify call (after a warm-up call) for Nsight Compute (GPU).",
    )
    ap.add_argument("--backend", default="cuda-cpp", help="a registered backend name")
    ap.add_argument("--batch", type=int, default=1, help="B")
    ap.add_argument("--k", type=int, default=8, help="K")
    ap.add_argument("--vocab", type=int, default=128256, help="V")
    ap.add_argument("--accept", default="low", help="acceptance regime (high, medium, low, ...)")
    ap.add_argument(
        "--mode",
        choices=("random", "greedy", "both"),
        default="both",
        help="verification mode; both profiles one call of each",
    )
    ap.add_argument(
        "--rule",
        choices=("token", "block"),
        default="token",
        help="verification rule (block: docs/rules.md; greedy mode is the same for both)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import specsample
    import torch
    from specsample.workloads import acceptance_length_for, make_workload

    if not torch.cuda.is_available():
        print("ncu_target: needs a CUDA device", file=sys.stderr)
        return 2
    backend = specsample.get_backend(args.backend)
    modes = ["random", "greedy"] if args.mode == "both" else [args.mode]
    workloads = {
        m: make_workload(
            args.batch,
            args.k,
            args.vocab,
            device="cuda",
            seed=1,
            acceptance_length=acceptance_length_for(args.accept, args.k),
            greedy_drafter=m == "greedy",
        )
        for m in modes
    }

    def call(m: str):
        w = workloads[m]
        return backend.verify(
            w.draft_token_ids, w.draft_probs, w.target_probs, mode=m, rule=args.rule
        )

    for m in modes:
        call(m)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for m in modes:
        call(m)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
