"""The Triton test files' interpreter suites, run in a subprocess.

``TRITON_INTERPRET=1`` must be set before triton is imported, so each triton test file keeps its
interpreter tests (named ``test_interp_*``, skipped in a normal run) and one driver test that runs
them in a fresh interpreter with the variable set: :func:`run_interpreter_suite`.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

HAVE_TRITON = importlib.util.find_spec("triton") is not None


def in_interpreter() -> bool:
    """True when triton is installed and this process runs its CPU interpreter."""
    if not HAVE_TRITON:
        return False
    from specsample.backends.triton_backend import interpreter_mode

    return interpreter_mode()


def run_interpreter_suite(test_file: str, selector: str = "interp_", timeout: int = 1200) -> None:
    """Run the tests of ``test_file`` matching ``-k selector`` under ``TRITON_INTERPRET=1`` in a
    subprocess; fail (with the subprocess's output) unless every selected test ran and passed."""
    start = time.time()
    env = dict(os.environ, TRITON_INTERPRET="1")
    args = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        test_file,
        "-k",
        selector,
    ]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    print(r.stdout[-3000:], f"\n(interpreter suite: {time.time() - start:.1f} s)")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert " passed" in last and "skipped" not in last and "failed" not in last, last
