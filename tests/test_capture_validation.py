"""A backend without in-kernel status flags is checked eagerly by default, except while a CUDA
graph is being captured (the check would read and sync on capture-time data only)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from specsample import contract
from specsample.backends.torch_vectorized import TorchVectorizedBackend


class _NoStatus(TorchVectorizedBackend):
    name = "no-status"
    capabilities = dataclasses.replace(TorchVectorizedBackend.capabilities, status_flags=False)


def _bad_inputs():
    q = torch.softmax(torch.randn(2, 3, 8), -1)
    p = torch.softmax(torch.randn(2, 2, 8), -1)
    q[1, 0, 3] = float("nan")
    return torch.tensor([[1, 2], [3, 4]]), p, q


def test_default_call_checks_values_eagerly_without_status_flags():
    with pytest.raises(ValueError, match="target_probs"):
        _NoStatus().verify(*_bad_inputs())


def test_no_eager_check_while_capturing(monkeypatch):
    monkeypatch.setattr(contract, "_capturing", lambda tensor: True)
    out = _NoStatus().verify(*_bad_inputs())  # no ValueError: capture-time data is not checked
    assert out.token_ids.shape == (2, 3)
    # An explicit validate="full" is still honoured (torch itself refuses its sync in a capture).
    with pytest.raises(ValueError, match="target_probs"):
        _NoStatus().verify(*_bad_inputs(), validate="full")
