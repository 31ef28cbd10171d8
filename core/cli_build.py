"""``specsample build``: compile the CUDA kernels now instead of on first use.

``cuda-cpp`` builds its torch extension with nvcc (minutes, one compiler process); ``cupy``
compiles its NVRTC modules into CuPy's kernel cache. Both builds are cached on disk and shared by
later processes, so a machine that is about to start many worker processes (``conform -j``,
``fuzz --jobs``) builds first, once.
"""

from __future__ import annotations

import argparse

BUILDABLE = ("cuda-cpp", "cupy")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default=None,
        metavar="NAME[,NAME...]",
        help=f"what to build: {', '.join(BUILDABLE)} (default: every one of them that can run here)",
    )
    parser.add_argument("--verbose", action="store_true", help="show the compiler's output")


def main(args: argparse.Namespace) -> int:
    from .registry import backend_class

    explicit = args.backend is not None
    names = [n.strip() for n in args.backend.split(",") if n.strip()] if explicit else BUILDABLE
    unknown = [n for n in names if n not in BUILDABLE]
    if unknown or not names:
        print(f"--backend: expected some of {', '.join(BUILDABLE)}, got {args.backend!r}")
        return 2
    built = failed = 0
    for name in names:
        cls = backend_class(name)
        ok, reason = cls.is_available()
        if not ok:
            print(f"{name}: cannot build here: {reason}")
            failed += explicit
            continue
        path = cls.build(verbose=args.verbose)
        print(f"{name}: kernels ready at {path}")
        built += 1
    return 1 if failed or not built else 0
