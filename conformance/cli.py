"""``specsample conform``: run the conformance suite against backends (pytest underneath)."""

from __future__ import annotations

import argparse
import sys

from .options import CHECKS_OPTION, LEVELS


def configure(parser: argparse.ArgumentParser) -> None:
    from specsample.cli_options import add_backend_options, positive_float, positive_int

    add_backend_options(parser, "every available backend")
    parser.add_argument(
        "--level", choices=LEVELS, default="fast", help="fast (default; CPU-friendly) or full (GPU)"
    )
    parser.add_argument("--json", metavar="PATH", help="write per-backend, per-check results here")
    parser.add_argument("--force", action="store_true", help="replace the --json file if it exists")
    parser.add_argument("-k", metavar="EXPRESSION", help="only checks matching (pytest -k)")
    parser.add_argument(
        "--checks",
        metavar="NAME[,NAME...]",
        help="only these checks, by exact name (block.exact,tree.chain); with -k, both apply",
    )
    parser.add_argument("-x", action="store_true", help="stop at the first failure")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the summary on stdout (pytest's per-check lines are hidden); on a "
        "terminal a progress bar still shows on stderr unless --no-progress",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar or progress lines on stderr"
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=positive_int,
        default=1,
        metavar="N",
        help="N processes at once (default 1: all in this process): one per backend, and with "
        "more processes than backends each backend's checks split over them",
    )

    parser.add_argument(
        "--time-budget",
        type=positive_float,
        default=None,
        metavar="S",
        help="stop after S seconds: checks still running or not started are reported as errors "
        "(the finished ones keep their verdicts); runs the suite in child processes",
    )


def main(args: argparse.Namespace) -> int:
    from specsample.cli_options import check_output_file, selected_backends

    from .results import summary_lines
    from .runner import ConformanceRunError, run

    if args.json is not None:  # refused now, not after the whole suite has run
        check_output_file(args.json, "--json", args.force)

    pytest_args: list[str] = []
    if args.k:
        pytest_args += ["-k", args.k]
    if args.checks:
        from .checks import check_names

        known = check_names(args.level)
        unknown = [n for n in args.checks.split(",") if n.strip() not in known]
        if unknown:
            print(
                f"specsample conform: --checks: no check named {', '.join(map(repr, unknown))} "
                f"at level {args.level} (known: {', '.join(known)})",
                file=sys.stderr,
            )
            return 2
        pytest_args += [CHECKS_OPTION, args.checks]
    if args.x:
        pytest_args.append("-x")
    try:
        outcome = run(
            selected_backends(args),
            args.level,
            args.json,
            pytest_args,
            quiet=args.quiet,
            jobs=args.jobs,
            progress=False if args.no_progress else None,
            time_budget=args.time_budget,
        )
    except (ConformanceRunError, ValueError) as exc:
        print(f"specsample conform: {exc}", file=sys.stderr)
        return 2
    if args.quiet:
        print("\n".join(summary_lines(outcome.results)))
    elif outcome.in_processes:  # the processes printed their own parts: the whole run's last
        print("===== all =====")
        print("\n".join(summary_lines(outcome.results)))
    for name, reason in outcome.unavailable_requested.items():
        print(
            f"specsample conform: backend {name!r} could not be checked: {reason}", file=sys.stderr
        )
    if args.json:
        print(f"results written to {args.json}")
    return 0 if outcome.ok else 1
