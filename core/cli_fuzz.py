"""``specsample fuzz``: differential fuzzing of backends against the float64 reference.

Exit status: 0 when no backend diverged, 1 on any divergence (each printed as a shrunk, runnable
reproducer), 2 on a usage error. See docs/fuzz.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli_options import (
    UsageError,
    add_backend_options,
    check_backend_names,
    check_output_file,
    nonnegative_int,
    positive_float,
    positive_int,
    selected_backends,
)


def configure(parser: argparse.ArgumentParser) -> None:
    add_backend_options(parser, "every available backend")
    parser.add_argument(
        "--cases", type=positive_int, default=10_000, help="cases per backend (default 10000)"
    )
    parser.add_argument(
        "--seed", type=nonnegative_int, default=0, help="the campaign: same seed, same cases"
    )
    parser.add_argument(
        "--time-budget",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="stop the campaign after this many seconds (reported as stopped, not complete)",
    )
    parser.add_argument(
        "--device", default=None, help="cpu or cuda (default: cuda when claimed and present)"
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=positive_int,
        default=1,
        metavar="N",
        help="run each backend's cases in N worker processes (default 1); the host's cores, which "
        "run the float64 reference, bound the rate, also with a GPU",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--force", action="store_true", help="replace an existing --json file")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .fuzz import run_fuzz_many
    from .fuzz_parallel import run_fuzz_parallel
    from .registry import list_backends

    names = selected_backends(args)
    check_backend_names(names)
    out_path = check_output_file(args.json, "--json", args.force) if args.json else None
    if args.device not in (None, "cpu", "cuda"):
        raise UsageError(f"--device: expected cpu or cuda, got {args.device!r}")
    infos = {i.name: i for i in list_backends()}
    if names is None:
        names = [n for n, i in infos.items() if i.available]
    available = []
    for name in names:
        info = infos[name]
        if not info.available:
            print(f"{name}: unavailable: {info.reason}", file=sys.stderr)
        else:
            available.append(name)
    results = []
    if available:
        with tqdm(
            total=args.cases,
            disable=args.quiet,
            unit="case",
            desc=f"fuzz {','.join(available)}",
            dynamic_ncols=True,
            file=sys.stderr,
        ) as bar:
            options = dict(
                cases=args.cases,
                seed=args.seed,
                time_budget=args.time_budget,
                device=args.device,
                progress=bar.update,
            )
            if args.jobs == 1:
                results = run_fuzz_many(available, **options)
            else:
                results = run_fuzz_parallel(available, jobs=args.jobs, **options)
    for result in results:
        for d in result.divergences:
            print(f"\n{result.backend}: divergence at case {d.index}: {d.message}\n")
            print(d.reproducer)
            print()
        print(result.summary())
    if out_path is not None:
        out_path.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    if any(r.divergences for r in results):
        return 1
    return 1 if names and not available else 0
