"""A/B of compile-time variants and launch shapes of the cuda-cpp kernel, on a GPU.

Each variant is the kernel header compiled by NVRTC (through CuPy) with its own ``-D`` options;
``default`` is the header as shipped. Every variant is first checked against the float64 reference
with the conformance suite's comparison (explicit uniforms, the in-kernel Philox stream, greedy
mode), then timed on the benchmark grid's workloads with the runner's own timer and the
``standard`` preset's policy (CUDA events, L2 flushed, the device kept ahead of the host), rounds
interleaved so that slow drifts of the machine hit every variant alike.

    python tools/kernel_ab.py "wide=-DSPECSAMPLE_EXAMPLE_KNOB=1" --modes random --batches 1,64
    python tools/kernel_ab.py --configs 1x256,2x512,16x256     # launch shapes of the default build
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from typing import Any


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _configs(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        cl, sep, nt = item.partition("x")
        if not sep or not cl.isdigit() or not nt.isdigit():
            raise argparse.ArgumentTypeError(
                f"launch shapes are CLUSTERxTHREADS, e.g. 2x512 (0x0: automatic), got {item!r}"
            )
        out.append((int(cl), int(nt)))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="tools/kernel_ab.py",
        description="Exactness and timing of compile-time variants of the cuda-cpp kernel (GPU).",
    )
    ap.add_argument(
        "variants",
        nargs="*",
        metavar="NAME=FLAGS",
        help='a variant: name, "=", then NVRTC options, e.g. "fast=-DSPECSAMPLE_X=1 -DY=2"',
    )
    ap.add_argument("--modes", default="random,greedy", help="timed modes (default: both)")
    ap.add_argument("--batches", type=_ints, default=[1, 8, 64, 256], help="B values timed")
    ap.add_argument("--ks", type=_ints, default=[8], help="K values timed")
    ap.add_argument("--vocabs", type=_ints, default=[32000, 128256], help="V values timed")
    ap.add_argument("--accept", default="high,low", help="acceptance regimes timed")
    ap.add_argument(
        "--configs",
        type=_configs,
        default=[(0, 0)],
        help="launch shapes CLUSTERxTHREADS timed for every variant (default 0x0: automatic)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is shown")
    ap.add_argument("--no-exact", action="store_true", help="skip the exactness checks")
    args = ap.parse_args(argv)
    args.variant_flags = {"default": ()}
    for spec in args.variants:
        name, sep, flags = spec.partition("=")
        if not sep or not name or name in args.variant_flags:
            ap.error(f"a variant is NAME=FLAGS with a new name, got {spec!r}")
        args.variant_flags[name] = tuple(flags.split())
    args.modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in args.modes if m not in ("random", "greedy")]
    if bad:
        ap.error(f"--modes takes random and/or greedy, got {bad}")
    args.accept = [a for a in args.accept.split(",") if a]
    return args


class _Variant:
    """One compiled variant, shaped like a conformance target (``verify`` with the suite's args)."""

    def __init__(self, module: Any, cluster: int = 0, threads: int = 0) -> None:
        self.module, self.cluster, self.threads = module, cluster, threads

    def launch(self, ids, draft, target, **kw):
        from specsample.backends import cupy_backend

        return cupy_backend.verify_torch(
            ids, draft, target, module=self.module, cluster=self.cluster, threads=self.threads, **kw
        )

    def verify(self, ids, draft, target, *, mode="random", uniforms=None, generator=None):
        from types import SimpleNamespace

        out = self.launch(ids, draft, target, mode=mode, uniforms=uniforms, generator=generator)
        return SimpleNamespace(token_ids=out[0], num_emitted=out[1])


def check_exactness(name: str, variant: _Variant) -> int:
    """Compare one variant with the reference over dtypes, shapes and both modes; mismatches."""
    import torch
    from specsample.backends import _cuda_build
    from specsample.conformance.check_common import compare_to_reference
    from specsample.conformance.checks import CheckFailed
    from specsample.workloads import make_workload

    shapes = [
        (1, 8, 128256, torch.float32, True),
        (5, 16, 997, torch.float16, True),
        (64, 4, 32000, torch.bfloat16, True),
        (256, 8, 32000, torch.float32, True),
        (3, 2, 262144, torch.float32, True),
        (7, 3, 1, torch.float32, True),
        (2, 0, 777, torch.bfloat16, True),
        (6, 8, 4099, torch.float32, False),
    ]
    bad = 0
    for (B, K, V, dtype, with_p), acc in itertools.product(shapes, ("low", "high")):
        w = make_workload(
            B, K, V, dtype=dtype, device="cuda", acceptance=acc, seed=B + K, with_draft_probs=with_p
        )
        label = f"{name} B={B} K={K} V={V} {dtype} p={with_p} {acc}"
        u = torch.rand((B, K + 1), device="cuda")
        g = torch.Generator(device="cuda").manual_seed(1234 + B)
        seed, offset = g.initial_seed(), g.get_offset()
        philox = _cuda_build.philox_uniforms(seed, offset, B, K).to("cuda")
        runs = [
            ("uniforms", "random", u, None),
            (
                "philox",
                "random",
                philox,
                variant.verify(w.draft_token_ids, w.draft_probs, w.target_probs, generator=g),
            ),
            ("greedy", "greedy", None, None),
        ]
        for what, mode, uu, out in runs:
            try:
                compare_to_reference(
                    variant,
                    w.draft_token_ids,
                    w.draft_probs,
                    w.target_probs,
                    mode=mode,
                    u=uu,
                    label=f"{label} {what}",
                    out=out,
                )
            except CheckFailed as exc:
                bad += 1
                print(f"MISMATCH {exc}", flush=True)
    return bad


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(
            "kernel_ab: needs a CUDA device (torch.cuda.is_available() is False)", file=sys.stderr
        )
        return 2
    from specsample.backends import cupy_backend
    from specsample.reports.presets import get_preset
    from specsample.reports.timing import Timer
    from specsample.workloads import acceptance_length_for, make_workload

    modules = {n: cupy_backend._Module(0, f) for n, f in args.variant_flags.items()}
    if not args.no_exact:
        bad = sum(check_exactness(n, _Variant(m)) for n, m in modules.items())
        print(f"exactness: {bad} mismatching runs over {len(modules)} variant(s)", flush=True)
        if bad:
            return 1

    timer = Timer("cuda", get_preset("standard").policy)
    columns = [(n, cl, nt) for n in modules for cl, nt in args.configs]
    heads = [n if (cl, nt) == (0, 0) else f"{n}@{cl}x{nt}" for n, cl, nt in columns]
    print("median us; mode K V accept B | " + " | ".join(heads), flush=True)
    for mode, K, V, acc, B in itertools.product(
        args.modes, args.ks, args.vocabs, args.accept, args.batches
    ):
        w = make_workload(
            B,
            K,
            V,
            device="cuda",
            seed=0,
            acceptance_length=acceptance_length_for(acc, K),
            greedy_drafter=mode == "greedy",
        )
        draft = w.draft_probs if mode == "random" else None
        rounds = []
        for _ in range(args.rounds):
            row = []
            for n, cl, nt in columns:
                v = _Variant(modules[n], cl, nt)

                def run(i, v=v, w=w, draft=draft, mode=mode):
                    return v.launch(w.draft_token_ids, draft, w.target_probs, mode=mode)

                row.append(timer.measure(run).to_dict(keep_samples=False)["median"] * 1e6)
            rounds.append(row)
        medians = [statistics.median(r[j] for r in rounds) for j in range(len(columns))]
        print(f"{mode} {K} {V} {acc} {B} | " + " | ".join(f"{t:8.2f}" for t in medians), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
