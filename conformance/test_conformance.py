"""The conformance suite as pytest tests: ``test_check[BACKEND-CHECK]`` for every selected backend
(``--specsample-backend``, default every available one) and every check of the level
(``--specsample-level``). Run with ``pytest --pyargs specsample.conformance``."""

from __future__ import annotations

from specsample.conformance.pytest_support import run_in_pytest


def test_check(specsample_backend, specsample_check, request):
    run_in_pytest(request, specsample_backend.name, specsample_check, specsample_backend.level)
