"""``specsample build``: compile the CUDA extension now instead of on first use."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="show the compiler's output")


def main(args: argparse.Namespace) -> int:
    from .registry import backend_class

    cls = backend_class("cuda-cpp")
    build = getattr(cls, "build", None)
    if build is None:
        print("cuda-cpp: nothing to build in this version")
        return 1
    ok, reason = cls.is_available()
    if not ok:
        print(f"cuda-cpp: cannot build here: {reason}")
        return 1
    path = build(verbose=args.verbose)
    print(f"cuda-cpp: extension ready at {path}")
    return 0
