"""The ``specsample`` command line.

argparse (standard library) rather than typer/click: no extra dependency, fast start-up (``specsample
--help`` imports no torch), and sub-commands owned by the package that implements them: each
command module exposes ``configure(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ._version import __version__
from .cli_options import UsageError

# command -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("specsample.cli_list", "list the registered backends and whether they are available"),
    "build": ("specsample.cli_build", "compile the CUDA kernels (cuda-cpp, cupy) ahead of time"),
    "conform": ("specsample.conformance.cli", "run the conformance suite against backends"),
    "bench": ("specsample.reports.cli_bench", "benchmark backends over a grid of shapes"),
    "report": ("specsample.reports.cli_report", "render benchmark/conformance results"),
    "compare": ("specsample.reports.cli_compare", "compare two benchmark result files"),
    "run": ("specsample.reports.cli_run", "conformance + benchmark + report in one go"),
    "fuzz": ("specsample.cli_fuzz", "fuzz backends against the float64 reference"),
    "e2e": (
        "specsample.cli_e2e",
        "speculative generation end to end: what a sampler buys in tokens/s",
    ),
}


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error printed as one line (then exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="specsample",
        description="Verify, compare and benchmark rejection samplers for speculative decoding.",
    )
    parser.add_argument("--version", action="version", version=f"specsample {__version__}")
    parser.add_argument(
        "--plugins",
        metavar="NAME[,NAME...]",
        default=None,
        help="load only these installed backend plugins (entry-point names; '' for none); "
        "default: the environment variable SPECSAMPLE_PLUGINS, else all",
    )
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


@contextmanager
def _plugins(value: str | None) -> Iterator[None]:
    """``--plugins``: set SPECSAMPLE_PLUGINS for this command (and the processes it starts), and
    restore it afterwards (``main`` may run in-process, from tests)."""
    if value is None:
        yield
        return
    from .registry import PLUGINS_ENV, reset

    previous = os.environ.get(PLUGINS_ENV)
    os.environ[PLUGINS_ENV] = value
    reset()
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PLUGINS_ENV, None)
        else:
            os.environ[PLUGINS_ENV] = previous
        reset()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status.

    Exit statuses: 0 success; 1 the command ran and found a problem (a failed check, a
    regression); 2 a usage error (bad flag value, unusable input file or output path), reported as
    one line on stderr; 130 interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    if getattr(args, "_main", None) is None:
        parser.print_help()
        return 0
    prog = f"specsample {args.command}"

    try:
        with _plugins(args.plugins):
            return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:  # reports.schema.SchemaError is one too
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused a read or write the checks could not foresee
        where = f" {exc.filename}" if exc.filename else ""
        print(f"{prog}:{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
