"""Shared fixtures of the project's own tests, and the ``gpu`` marker.

``@pytest.mark.gpu`` marks a test that needs a CUDA device; it is skipped, with the reason, on a
machine without one. ``@pytest.mark.gpu(needs=("cupy",))`` also names Python packages the test
needs: the test is skipped when one is not importable. When ``triton`` is among them, the test is
also skipped under ``TRITON_INTERPRET=1``, where Triton kernels run on the CPU interpreter instead
of the device.
"""

from __future__ import annotations

import importlib.util
import os

import pytest


def gpu_skip_reason(needs: tuple[str, ...] | list[str] = ()) -> str | None:
    """Why a test marked ``gpu`` with these ``needs`` cannot run here, or None when it can."""
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA device (torch.cuda.is_available() is False)"
    missing = [name for name in needs if importlib.util.find_spec(name) is None]
    if missing:
        return f"needs a CUDA device and {', '.join(missing)} (not installed)"
    if "triton" in needs and os.environ.get("TRITON_INTERPRET") == "1":
        return "needs Triton on the device; TRITON_INTERPRET=1 selects the CPU interpreter"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("gpu")
    if marker is None:
        return
    if marker.args:
        raise pytest.UsageError(
            f"{item.nodeid}: pass the gpu marker's packages as needs=(...), got positional "
            f"arguments {marker.args!r}"
        )
    reason = gpu_skip_reason(tuple(marker.kwargs.get("needs", ())))
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def fresh_registry():
    """A registry rebuilt from scratch for this test, and again afterwards."""
    from specsample import registry

    registry.reset()
    yield registry
    registry.reset()
