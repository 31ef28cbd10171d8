"""Options and checks shared by the ``specsample`` commands.

- :func:`add_backend_options` / :func:`selected_backends`: the one way every command chooses
  backends. ``--backend a --backend b``, ``--backend a,b`` and ``--backends a,b`` all mean the
  same thing, and may be mixed.
- :class:`UsageError`: a user error; :func:`specsample.cli.main` prints its message as one line
  on stderr and exits 2.
- Value parsers for argparse (``positive_int``, ``nonnegative_int``, ``positive_float``, ...) whose
  errors name what was expected.
- :func:`check_output_file` / :func:`prepare_output_dir`: refuse, before any work is done, an output
  path that cannot be written or would replace something specsample did not write (unless
  ``--force``).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

# A report folder that holds this file was written by specsample; its files may be replaced.
REPORT_MARKER = ".specsample-report"


class UsageError(Exception):
    """A user error (bad flag value, unusable file or output path): one line, exit status 2."""


# -- backends --------------------------------------------------------------------------------------


def backend_list(text: str) -> list[str]:
    """Parse ``a,b`` (or ``a``) into backend names; an empty name is an error."""
    names = [v.strip() for v in text.split(",")]
    if not text.strip() or any(not n for n in names):
        raise argparse.ArgumentTypeError(
            f"expected a backend name or comma-separated names, got {text!r}"
        )
    return names


def add_backend_options(parser: argparse.ArgumentParser, help_default: str) -> None:
    """Add ``--backend NAME[,NAME...]`` (repeatable) and its alias ``--backends``.

    Read the choice with :func:`selected_backends`. ``help_default`` says what happens when neither
    flag is given (for example ``"every available backend"``).
    """
    group = parser.add_argument_group("backends")
    for flag in ("--backend", "--backends"):
        group.add_argument(
            flag,
            dest="backends",
            action="extend",
            type=backend_list,
            default=None,
            metavar="NAME[,NAME...]",
            help=(
                f"backend(s) to use; repeatable, comma-separated lists allowed (default: "
                f"{help_default})"
                if flag == "--backend"
                else "the same as --backend"
            ),
        )


def selected_backends(args: argparse.Namespace) -> list[str] | None:
    """The backend names chosen with :func:`add_backend_options`, in order, each once; None when
    no flag was given (the command's default applies)."""
    names = getattr(args, "backends", None)
    if names is None:
        return None
    return list(dict.fromkeys(names))


def check_backend_names(names: list[str] | None, flag: str = "--backend") -> None:
    """Refuse a backend name no plugin registered (a known but unavailable one is fine: the
    commands report it). Loads the registry.

    Raises:
        UsageError: ``--backend NAME: unknown backend ...`` with the known names.
    """
    from .registry import UnknownBackend, backend_class

    for name in names or ():
        try:
            backend_class(name)
        except UnknownBackend as exc:
            raise UsageError(f"{flag}: {exc}") from None
        except Exception:  # a broken plugin's name: listed, and reported as unavailable later
            pass


# -- values ----------------------------------------------------------------------------------------


def _integer(text: str, low: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _integer(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _integer(text, 0)


def _float(text: str, strict: bool) -> float:
    expected = "a positive number" if strict else "a number >= 0"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (strict and value == 0):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _float(text, strict=True)


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _float(text, strict=False)


def int_list(low: int):
    """argparse type factory: comma-separated integers, each >= ``low``."""

    def parse(text: str) -> list[int]:
        parts = [v.strip() for v in text.split(",")]
        try:
            values = [int(v) for v in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers >= {low}, got {text!r}"
            ) from None
        if not values or any(v < low for v in values):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers >= {low}, got {text!r}"
            )
        return values

    return parse


def device_name(text: str) -> str:
    """argparse type: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    value = text.strip()
    if value in ("auto", "cpu", "cuda"):
        return value
    if value.startswith("cuda:") and value[5:].isdigit():
        return value
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


# -- outputs ---------------------------------------------------------------------------------------


def check_output_file(path: str, flag: str, force: bool) -> Path:
    """Refuse an output file path before the work starts.

    Refused: an empty path, an existing folder, an existing file (unless ``force``), a parent that
    is not a folder, and a folder where a file cannot be created.

    Raises:
        UsageError: naming ``flag``, the path and the problem.
    """
    if not path or not path.strip():
        raise UsageError(f"{flag}: expected a file path, got an empty string")
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; give a file path")
    if p.exists() and not force:
        raise UsageError(
            f"{flag} {path}: the file exists; pass --force to replace it, or choose another path"
        )
    parent = p.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise UsageError(f"{flag} {path}: {ancestor} is a file, not a folder")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise UsageError(f"{flag} {path}: cannot write in {ancestor} (permission denied)")
            break
    return p


def prepare_output_dir(path: str, flag: str, force: bool) -> Path:
    """Check (and create) an output folder for a report.

    A folder that exists, holds files and is not marked as specsample's (the marker file
    ``.specsample-report``, written here) is refused unless ``force``: specsample never replaces
    files it did not write.

    Raises:
        UsageError: naming ``flag``, the path and the problem.
    """
    if not path or not path.strip():
        raise UsageError(f"{flag}: expected a folder path, got an empty string")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {path}: exists and is not a folder")
    if p.is_dir() and not force and not (p / REPORT_MARKER).exists():
        try:
            occupied = any(p.iterdir())
        except OSError as exc:
            raise UsageError(f"{flag} {path}: cannot read the folder ({exc.strerror})") from None
        if occupied:
            raise UsageError(
                f"{flag} {path}: the folder holds files specsample did not write; pass --force "
                f"to write into it, or choose another folder"
            )
    try:
        p.mkdir(parents=True, exist_ok=True)
        (p / REPORT_MARKER).write_text(
            "This folder was written by specsample; `specsample report`/`run` may replace its "
            "files.\n",
            encoding="utf-8",
        )
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write there ({exc.strerror or exc})") from None
    return p
