"""The conformance suite on the built-in PyTorch backends, as part of the project's own test run.

Each (backend, check) is one test here, calling the same check functions as
``pytest --pyargs specsample.conformance`` and ``specsample conform``; the level follows
``--specsample-level`` (fast by default). The conformance package itself is not under tests/, so
the project's run does not collect the suite a second time.
"""

from __future__ import annotations

import pytest
from specsample.conformance.checks import LEVELS, check_names
from specsample.conformance.pytest_support import run_in_pytest

BUILTIN = ("torch-loop", "torch-vectorized", "torch-compile")


def _names() -> list[str]:
    # Every check of either level; those outside the chosen level skip (with a reason) at run time.
    return check_names()


@pytest.mark.parametrize("check", _names())
@pytest.mark.parametrize("backend", BUILTIN)
def test_builtin_conformance(request, backend, check):
    level = request.config.getoption("specsample_level", "fast")
    assert level in LEVELS
    if check not in check_names(level):
        pytest.skip(f"{check} runs at the full level only (--specsample-level full)")
    selected = request.config.getoption("specsample_backends", None)
    if selected and backend not in selected:
        pytest.skip(f"{backend} not selected by --specsample-backend")
    run_in_pytest(request, backend, check, level)
