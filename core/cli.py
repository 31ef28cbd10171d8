"""The ``specsample`` command line.

argparse (standard library) rather than typer/click: no extra dependency, fast start-up (``specsample
--help`` imports no torch), and sub-commands owned by the package that implements them: each
command module exposes ``configure(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ._version import __version__

# command -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("specsample.cli_list", "list the registered backends and whether they are available"),
    "build": ("specsample.cli_build", "build the CUDA extension ahead of time"),
    "conform": ("specsample.conformance.cli", "run the conformance suite against backends"),
    "bench": ("specsample.reports.cli_bench", "benchmark backends over a grid of shapes"),
    "report": ("specsample.reports.cli_report", "render benchmark/conformance results"),
    "compare": ("specsample.reports.cli_compare", "compare two benchmark result files"),
    "run": ("specsample.reports.cli_run", "conformance + benchmark + report in one go"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specsample",
        description="Verify, compare and benchmark rejection samplers for speculative decoding.",
    )
    parser.add_argument("--version", action="version", version=f"specsample {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # command not shipped in this build
        command = sub.add_parser(
            name, help=help_text, description=help_text[0].upper() + help_text[1:] + "."
        )
        module.configure(command)
        command.set_defaults(_main=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_main", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
