"""``specsample bench``: time backends over a grid of shapes and write a results JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def _strs(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return values


def _choices(allowed: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        values = _strs(text)
        bad = [v for v in values if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown value(s) {', '.join(bad)}; choose from {', '.join(allowed)}"
            )
        return values

    return parse


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """The grid and timing flags shared by ``bench`` and ``run``."""
    from .presets import PRESETS

    g = parser.add_argument_group(
        "grid (each flag takes a comma-separated list; overrides the preset)"
    )
    g.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="named grid: tiny (tests), quick (CPU, minutes), standard (GPU grid); "
        "default: standard with a GPU, quick without",
    )
    g.add_argument(
        "--backends",
        type=_strs,
        default=None,
        help="backend names (default: every registered backend that is available)",
    )
    g.add_argument("--batch", type=_ints, default=None, help="batch sizes B, e.g. 1,8,64,256")
    g.add_argument("--k", type=_ints, default=None, help="draft lengths K, e.g. 4,8")
    g.add_argument(
        "--vocab", type=_ints, default=None, help="vocabulary sizes V, e.g. 32000,128256"
    )
    g.add_argument(
        "--dtype",
        type=_choices(("float32", "float16", "bfloat16")),
        default=None,
        help="probability dtypes: float32,float16,bfloat16",
    )
    g.add_argument(
        "--mode",
        type=_choices(("random", "greedy")),
        default=None,
        help="verification modes: random,greedy",
    )
    g.add_argument(
        "--accept",
        type=_strs,
        default=None,
        help="acceptance regimes: high, medium, low (per-draft acceptance 0.8/0.6/0.3), "
        "rate=ALPHA, or a mean acceptance length in [1, K+1]",
    )
    t = parser.add_argument_group("timing")
    t.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    t.add_argument(
        "--cuda-graph",
        action="store_true",
        help="also time CUDA-graph replay (backends that claim graph support)",
    )
    t.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds per cell for slow baselines (torch-loop); cells that run out "
        "are marked 'capped'",
    )
    t.add_argument(
        "--target-time",
        type=float,
        default=None,
        help="seconds of timed calls per cell (default from the preset)",
    )
    t.add_argument("--min-samples", type=int, default=None)
    t.add_argument("--max-samples", type=int, default=None)
    t.add_argument(
        "--l2",
        choices=("flush", "rotate", "none"),
        default=None,
        help="between calls: flush the cache (default), rotate input copies, or nothing",
    )
    t.add_argument(
        "--no-gpu-delay",
        action="store_true",
        help="GPU: no spin kernel before each call (the events then include the host's "
        "launch overhead whenever it exceeds the cache flush)",
    )
    t.add_argument(
        "--no-launches",
        action="store_true",
        help="skip counting kernel launches and host syncs (torch.profiler)",
    )
    t.add_argument("--no-samples", action="store_true", help="do not store raw samples")
    t.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads during the sweep (default: torch's own choice)",
    )
    t.add_argument(
        "--max-errors",
        type=int,
        default=3,
        help="stop running a backend after this many consecutive errors (0: never)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace, preset_name: str | None = None) -> Any:
    """A :class:`BenchConfig` from the preset, overridden by explicit flags."""
    from dataclasses import replace

    from .presets import get_preset, preset_for_machine
    from .runner import BenchConfig

    name = args.preset or preset_name or preset_for_machine()
    preset = get_preset(name)
    policy = preset.policy
    overrides = {
        "budget_s": args.budget,
        "target_s": args.target_time,
        "min_samples": args.min_samples,
        "max_samples": args.max_samples,
        "l2": args.l2,
    }
    policy = replace(policy, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_gpu_delay:
        policy = replace(policy, gpu_delay=False)
    if policy.max_samples < policy.min_samples:
        policy = replace(policy, max_samples=policy.min_samples)
    return BenchConfig(
        backends=args.backends,
        batch=args.batch or preset.batch,
        k=args.k or preset.k,
        vocab=args.vocab or preset.vocab,
        dtype=args.dtype or preset.dtype,
        mode=args.mode or preset.mode,
        accept=args.accept or preset.accept,
        device=args.device,
        policy=policy,
        cuda_graph=args.cuda_graph,
        launches=not args.no_launches,
        seed=args.seed,
        keep_samples=not args.no_samples,
        preset=name,
        threads=args.threads,
        max_errors=args.max_errors,
    )


def configure(parser: argparse.ArgumentParser) -> None:
    add_grid_arguments(parser)
    parser.add_argument("--out", default="results.json", help="results file (default results.json)")


def command_line() -> list[str]:
    """The exact command, as typed (program name first)."""
    import os

    return [os.path.basename(sys.argv[0]) or "specsample", *sys.argv[1:]]


def main(args: argparse.Namespace) -> int:
    from .runner import run_bench
    from .tables import terminal_summary

    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"specsample bench: {exc}", file=sys.stderr)
        return 2
    try:
        doc = run_bench(
            config, out_path=args.out, command=command_line(), progress=not args.no_progress
        )
    except ValueError as exc:
        print(f"specsample bench: {exc}", file=sys.stderr)
        return 2
    print(terminal_summary(doc))
    print(f"results: {args.out}")
    return 130 if doc.get("interrupted") else 0
