"""``specsample bench``: time backends over a grid of shapes and write a results JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any


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
    from specsample.cli_options import (
        add_backend_options,
        device_name,
        int_list,
        nonnegative_int,
        positive_float,
        positive_int,
    )

    from .presets import PRESETS

    add_backend_options(parser, "every registered backend that is available")
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
    g.add_argument("--batch", type=int_list(1), default=None, help="batch sizes B, e.g. 1,8,64,256")
    g.add_argument("--k", type=int_list(0), default=None, help="draft lengths K, e.g. 4,8")
    g.add_argument(
        "--vocab", type=int_list(1), default=None, help="vocabulary sizes V, e.g. 32000,128256"
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
    g.add_argument(
        "--rule",
        type=_choices(("token", "block")),
        default=None,
        help="verification rules: token (default), block; with both, each cell of the block "
        "rule reports its tokens-per-call gain over token (docs/rules.md)",
    )
    t = parser.add_argument_group("timing")
    t.add_argument(
        "--device", type=device_name, default="auto", help="cuda, cuda:N, cpu or auto (default)"
    )
    t.add_argument(
        "--cuda-graph",
        action="store_true",
        help="also time CUDA-graph replay (backends that claim graph support)",
    )
    t.add_argument(
        "--budget",
        type=positive_float,
        default=None,
        help="seconds per cell for slow baselines (torch-loop); cells that run out "
        "are marked 'capped'",
    )
    t.add_argument(
        "--target-time",
        type=positive_float,
        default=None,
        help="seconds of timed calls per cell (default from the preset)",
    )
    t.add_argument("--min-samples", type=positive_int, default=None)
    t.add_argument("--max-samples", type=positive_int, default=None)
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
        type=positive_int,
        default=None,
        help="torch CPU threads during the sweep (default: torch's own choice)",
    )
    t.add_argument(
        "--max-errors",
        type=nonnegative_int,
        default=3,
        help="stop running a backend after this many consecutive errors (0: never)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace, preset_name: str | None = None) -> Any:
    """A :class:`BenchConfig` from the preset, overridden by explicit flags.

    Raises:
        UsageError: a flag value that cannot work with the grid (an ``--accept`` outside
            ``[1, K+1]`` for one of the K values, an unknown regime).
    """
    from dataclasses import replace

    from specsample.cli_options import selected_backends

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
    k = args.k or preset.k
    accept = args.accept or preset.accept
    _check_accept(accept, k)
    return BenchConfig(
        backends=selected_backends(args),
        batch=args.batch or preset.batch,
        k=k,
        vocab=args.vocab or preset.vocab,
        dtype=args.dtype or preset.dtype,
        mode=args.mode or preset.mode,
        accept=accept,
        rule=args.rule or ("token",),
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


def _check_accept(accept: list[str] | tuple[str, ...], ks: list[int] | tuple[int, ...]) -> None:
    """Every ``--accept`` value must mean something at every K of the grid."""
    from specsample.cli_options import UsageError
    from specsample.workloads import acceptance_length_for

    for value in accept:
        if value.startswith("rate="):
            try:
                float(value[5:])
            except ValueError:
                raise UsageError(
                    f"--accept {value}: rate=ALPHA needs a number ALPHA in [0, 1]"
                ) from None
        for k in ks:
            try:
                acceptance_length_for(value, k)
            except ValueError as exc:
                raise UsageError(f"--accept {value}: {exc} (at K={k})") from None


def int_list_arg(minimum: int):
    from specsample.cli_options import int_list

    return int_list(minimum)


def configure(parser: argparse.ArgumentParser) -> None:
    add_grid_arguments(parser)
    parser.add_argument("--out", default="results.json", help="results file (default results.json)")
    parser.add_argument("--force", action="store_true", help="replace the --out file if it exists")
    from .tree_bench import KINDS, TREE_PRESETS

    tr = parser.add_argument_group("trees and serving batches (docs/benchmarks.md)")
    tr.add_argument(
        "--tree",
        nargs="?",
        const="auto",
        choices=["auto", *TREE_PRESETS],
        metavar="PRESET",
        help="time verify_tree instead of verify, on EAGLE-2-shaped trees: preset "
        f"{', '.join(TREE_PRESETS)} (default: tree with a GPU, tree-quick without); --batch, "
        "--vocab, --nodes and --kind override it",
    )
    from .serving_bench import SERVING_PRESETS

    tr.add_argument(
        "--serving",
        nargs="?",
        const="serving",
        choices=list(SERVING_PRESETS),
        metavar="PRESET",
        help="time the serving step from logits to tokens (verify_serving_flat) next to "
        f"softmax + filter in PyTorch then verify: preset {', '.join(SERVING_PRESETS)} "
        "(default serving); --batch and --vocab override it (docs/serving.md)",
    )
    tr.add_argument(
        "--nodes", type=int_list_arg(1), default=None, help="tree sizes N, e.g. 8,32,64"
    )
    tr.add_argument(
        "--kind",
        type=_choices(KINDS),
        default=None,
        help=f"tree verification kinds: {', '.join(KINDS)} (default: all)",
    )


def command_line() -> list[str]:
    """The exact command, as typed (program name first)."""
    import os

    return [os.path.basename(sys.argv[0]) or "specsample", *sys.argv[1:]]


def main(args: argparse.Namespace) -> int:
    from specsample.cli_options import UsageError, check_backend_names, check_output_file

    from .partial import PartialFile
    from .runner import run_bench
    from .tables import terminal_summary

    out = check_output_file(args.out, "--out", args.force)
    if args.tree is not None and args.serving is not None:
        raise UsageError("--tree and --serving are two different benchmarks: choose one")
    if args.tree is not None:
        return _tree_main(args, out)
    if args.serving is not None:
        return _serving_main(args, out)
    if args.nodes is not None or args.kind is not None:
        raise UsageError("--nodes and --kind apply to tree benchmarks: add --tree")
    config = config_from_args(args)
    check_backend_names(config.backends)
    try:
        config.resolved_device()
    except ValueError as exc:
        raise UsageError(f"--device {args.device}: {exc}") from None
    with PartialFile(out, force=args.force) as partial:
        try:
            doc = run_bench(
                config,
                out_path=partial.path,
                command=command_line(),
                progress=not args.no_progress,
            )
        except ValueError as exc:  # the grid or a backend name, found out by the runner
            raise UsageError(str(exc)) from None
        partial.commit()
    print(terminal_summary(doc))
    print(f"results: {out}")
    return 130 if doc.get("interrupted") else 0


# Grid flags of the chain benchmark that have no meaning for trees (flag, argparse dest).
_CHAIN_ONLY = (("--k", "k"), ("--dtype", "dtype"), ("--mode", "mode"), ("--accept", "accept"),
               ("--rule", "rule"), ("--preset", "preset"))  # fmt: skip


def _tree_main(args: argparse.Namespace, out: Any) -> int:
    """``specsample bench --tree``: the tree grid (reports/tree_bench.py)."""
    import dataclasses
    import json

    import torch
    from specsample.cli_options import UsageError, check_backend_names, selected_backends

    from .partial import PartialFile
    from .tree_bench import TREE_PRESETS, run_tree_bench, tree_summary

    given = [flag for flag, dest in _CHAIN_ONLY if getattr(args, dest, None) is not None]
    if given:
        raise UsageError(
            f"{', '.join(given)}: not used with --tree (its grid is --batch, --nodes, --vocab, "
            "--kind)"
        )
    name = args.tree
    if name == "auto":
        name = "tree" if torch.cuda.is_available() else "tree-quick"
    preset = TREE_PRESETS[name]
    overrides = {
        key: tuple(value)
        for key, value in (
            ("batch", args.batch),
            ("vocab", args.vocab),
            ("nodes", args.nodes),
            ("kinds", args.kind),
        )
        if value is not None
    }
    preset = dataclasses.replace(preset, **overrides)
    backends = selected_backends(args)
    check_backend_names(backends)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for, but torch sees no CUDA device")
    doc = run_tree_bench(preset, backends, device, progress=not args.no_progress)
    doc["command"] = command_line()
    with PartialFile(out, force=args.force) as partial:
        partial.path.write_text(json.dumps(doc, indent=1) + "\n")
        partial.commit()
    print(tree_summary(doc))
    print(f"results: {out}")
    return 0


def _serving_main(args: argparse.Namespace, out: Any) -> int:
    """``specsample bench --serving``: the serving grid (reports/serving_bench.py)."""
    import dataclasses
    import json

    import torch
    from specsample.cli_options import UsageError, check_backend_names, selected_backends

    from .partial import PartialFile
    from .serving_bench import SERVING_PRESETS, serving_document, serving_summary

    given = [flag for flag, dest in (*_CHAIN_ONLY, ("--nodes", "nodes"), ("--kind", "kind"))
             if getattr(args, dest, None) is not None]  # fmt: skip
    if given:
        raise UsageError(
            f"{', '.join(given)}: not used with --serving (its grid is --batch, --vocab)"
        )
    overrides = {k: tuple(v) for k, v in (("batch", args.batch), ("vocab", args.vocab)) if v}
    preset = dataclasses.replace(SERVING_PRESETS[args.serving], **overrides)
    backends = selected_backends(args)
    check_backend_names(backends)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for, but torch sees no CUDA device")
    doc = serving_document(preset, backends, device)
    doc["command"] = command_line()
    with PartialFile(out, force=args.force) as partial:
        partial.path.write_text(json.dumps(doc, indent=1) + "\n")
        partial.commit()
    print(serving_summary(doc))
    print(f"results: {out}")
    return 0
