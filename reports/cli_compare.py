"""``specsample compare old.json new.json``: per-cell ratios; regressions beyond noise flagged."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", help="baseline results JSON")
    parser.add_argument("new", help="new results JSON")
    from specsample.cli_options import nonnegative_float

    parser.add_argument(
        "--noise-factor",
        type=nonnegative_float,
        default=1.0,
        help="flag a change larger than this many IQRs (default 1.0)",
    )
    parser.add_argument(
        "--min-change",
        type=nonnegative_float,
        default=0.03,
        help="and larger than this relative change (default 0.03 = 3%%)",
    )
    parser.add_argument("--flagged", action="store_true", help="list only flagged cells")
    parser.add_argument(
        "--no-fail",
        action="store_true",
        help="exit 0 even when regressions are found (default: exit 1)",
    )


def main(args: argparse.Namespace) -> int:
    """Exit 0: no regression; 1: regression(s) (unless ``--no-fail``); 2: a file is unusable
    (unreadable, not the schema, or a median that is not a positive number)."""
    from .compare import compare_results, format_comparison
    from .schema import load_results

    old, new = load_results(args.old), load_results(args.new)
    result = compare_results(old, new, noise_factor=args.noise_factor, min_change=args.min_change)
    print(format_comparison(result, show="flagged" if args.flagged else "all"))
    regressions = any(c.verdict == "regression" for c in result["changes"])
    return 1 if regressions and not args.no_fail else 0
