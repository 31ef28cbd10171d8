"""``specsample run``: the main job — conformance, the benchmark preset that fits the machine over
every available backend, and the report, into ``./specsample-report/``, with a one-screen summary.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Conformance processes at once on a GPU: the checks are latency-bound and share the device well
# (6 covers the built-in GPU backends); on a CPU they would compete for the same cores.
GPU_CONFORMANCE_JOBS = 6


def configure(parser: argparse.ArgumentParser) -> None:
    from specsample.cli_options import positive_int

    from .cli_bench import add_grid_arguments

    parser.add_argument(
        "--out",
        default="specsample-report",
        help="report folder (default ./specsample-report); a folder holding files specsample "
        "did not write is refused without --force",
    )
    parser.add_argument(
        "--force", action="store_true", help="write into --out even if it holds other files"
    )
    parser.add_argument("--no-conformance", action="store_true", help="skip the conformance suite")
    parser.add_argument(
        "--level",
        choices=("fast", "full"),
        default=None,
        help="conformance level (default: full with a GPU, fast without)",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"conformance: N processes at once, one per backend, a backend's checks split over "
        f"them when there are more processes than backends (default: {GPU_CONFORMANCE_JOBS} with "
        "a GPU, 1 without)",
    )
    parser.add_argument("--no-bench", action="store_true", help="skip the benchmark")
    parser.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib)")
    add_grid_arguments(parser)


def _conformance(args: argparse.Namespace, out: Path, device: str) -> dict | None:
    from specsample.cli_options import selected_backends

    level = args.level or ("full" if device == "cuda" else "fast")
    try:
        from specsample.conformance.runner import run_conformance
    except ImportError as exc:
        print(
            f"conformance skipped: the conformance runner is not installed ({exc})", file=sys.stderr
        )
        return None
    jobs = args.jobs or (GPU_CONFORMANCE_JOBS if device == "cuda" else 1)
    print(f"[1/3] conformance ({level}, {jobs} at once) ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        conf = run_conformance(
            backends=selected_backends(args),
            level=level,
            json_path=str(out / "conformance.json"),
            quiet=True,
            jobs=jobs,
        )
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # the suite could not run at all: report that, go on benchmarking
        print(f"conformance could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    print(f"      done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return conf


def main(args: argparse.Namespace) -> int:
    import torch
    from specsample.cli_options import UsageError, check_backend_names, prepare_output_dir

    from .cli_bench import command_line, config_from_args
    from .partial import PartialFile
    from .render import render_report
    from .runner import run_bench
    from .tables import terminal_summary

    config = config_from_args(args)
    try:
        device = config.resolved_device()
    except ValueError as exc:
        raise UsageError(f"--device {args.device}: {exc}") from None
    check_backend_names(config.backends)
    out = prepare_output_dir(args.out, "--out", args.force)
    device_type = torch.device(device).type

    conf = None
    if not args.no_conformance:
        try:
            conf = _conformance(args, out, device_type)
        except KeyboardInterrupt:
            print("conformance interrupted; going on without it", file=sys.stderr)

    doc = None
    if not args.no_bench:
        print(
            f"[2/3] benchmark (preset {config.preset}, {device_type}) ...",
            file=sys.stderr,
            flush=True,
        )
        with PartialFile(out / "results.json", force=True) as partial:  # the folder is ours
            try:
                doc = run_bench(
                    config,
                    out_path=partial.path,
                    command=command_line(),
                    progress=not args.no_progress,
                )
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            partial.commit()

    if doc is None and conf is None:
        print(
            "specsample run: nothing to report (no conformance runner and --no-bench)",
            file=sys.stderr,
        )
        return 1
    print("[3/3] report ...", file=sys.stderr, flush=True)
    written = render_report(doc, conf, out, plots=not args.no_plots)
    print()
    if doc is not None:
        print(terminal_summary(doc, conf))
    elif conf is not None:
        from .tables import conformance_table

        print(conformance_table(conf, fmt="simple"))
    print()
    print(f"report: {written['html']}  (markdown: {written['markdown']})")
    failed = False
    if conf is not None:
        for entry in conf.get("backends", {}).values():
            for res in (entry.get("checks") or {}).values():
                if res.get("outcome") in ("fail", "error"):
                    failed = True
    if doc is not None and doc.get("interrupted"):
        return 130
    return 1 if failed else 0
