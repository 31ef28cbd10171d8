"""The ``gpu`` marker of tests/conftest.py: which tests it skips here, and why."""

from __future__ import annotations

import pytest
import torch
from conftest import gpu_skip_reason


def test_no_device_names_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "needs a CUDA device" in gpu_skip_reason()
    assert "needs a CUDA device" in gpu_skip_reason(("cupy",))


def test_device_present_and_nothing_else_needed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_skip_reason() is None


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    reason = gpu_skip_reason(("pytest", "specsample_no_such_package"))
    assert reason is not None and reason.endswith("specsample_no_such_package (not installed)")


def test_triton_interpreter_skips_device_tests(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "TRITON_INTERPRET=1" in gpu_skip_reason(("triton",))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert gpu_skip_reason(("triton",)) is None


@pytest.mark.gpu
def test_marked_test_is_skipped_without_a_device():
    # Runs only where a CUDA device is; elsewhere the marker skips it before this body.
    assert torch.cuda.is_available()
