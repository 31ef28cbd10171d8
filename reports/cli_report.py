"""``specsample report results.json [conformance.json] [e2e.json] --out DIR``: render a report
folder."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="benchmark results JSON(s), conformance JSON(s) and/or end-to-end JSON(s) "
        "(specsample e2e --json), in any order; several results files (a grid split over runs) "
        "are merged, and so are conformance files of one level (e.g. one run per backend); each "
        "end-to-end file gets its own section",
    )
    parser.add_argument(
        "--out",
        default="specsample-report",
        help="output folder (default ./specsample-report); a folder holding files specsample "
        "did not write is refused without --force",
    )
    parser.add_argument(
        "--force", action="store_true", help="write into --out even if it holds other files"
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib)")


def main(args: argparse.Namespace) -> int:
    from specsample.cli_options import prepare_output_dir

    from .e2e_schema import validate_e2e
    from .render import render_report
    from .schema import (
        SchemaError,
        detect_kind,
        load_json,
        merge_conformance,
        merge_results,
        validate_conformance,
        validate_results,
    )

    benches = []
    confs = []
    e2es = []
    for path in args.files:
        doc = load_json(path)
        try:
            kind = detect_kind(doc)
            if kind == "bench":
                benches.append(validate_results(doc))
            elif kind == "e2e":
                e2es.append(validate_e2e(doc))
            else:
                confs.append(validate_conformance(doc))
        except SchemaError as exc:
            raise SchemaError(f"{path}: {exc}") from None
    bench = merge_results(benches) if benches else None
    conf = merge_conformance(confs) if confs else None
    out = prepare_output_dir(args.out, "--out", args.force)
    written = render_report(bench, conf, out, plots=not args.no_plots, e2e=e2es)
    for key, path in written.items():
        print(f"{key:16s} {path}")
    return 0
