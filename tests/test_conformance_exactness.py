"""The near-tie tolerance of the coupled-exactness comparison is proven per request, not counted."""

from __future__ import annotations

import pytest
import torch
from specsample import reference_verify
from specsample.conformance.check_common import cdf_epsilon, compare_to_reference
from specsample.conformance.checks import CheckFailed, get_target
from specsample.contract import VerifyOutput


def _case(u_last: float):
    # All accepted (p = q), bonus row r = (0.25, 0.25, 0.5): boundaries at 0.25 and 0.5.
    row = [0.25, 0.25, 0.5]
    ids = torch.tensor([[2]])
    draft = torch.tensor([[row]])
    tgt = torch.tensor([[row, row]])
    u = torch.tensor([[0.0, u_last]])
    return ids, draft, tgt, u


def _shifted(ids, draft, tgt, u, token):
    ref = reference_verify(ids, draft, tgt, uniforms=u)
    tok = ref.token_ids.clone()
    tok[0, 1] = token
    return VerifyOutput(tok, ref.num_emitted.clone())


def test_difference_within_epsilon_of_a_boundary_is_allowed():
    target = get_target("torch-vectorized", "fast")
    eps = cdf_epsilon(3)
    u_last = 0.5 + eps / 2  # threshold 0.5 + eps/2: just above the boundary C[1] = 0.5
    ids, draft, tgt, u = _case(u_last)
    out = _shifted(ids, draft, tgt, u, 1)  # the reference says 2; 1 is within eps
    assert compare_to_reference(target, ids, draft, tgt, u=u, out=out, label="t") == 1


def test_difference_beyond_epsilon_fails_with_the_distance():
    target = get_target("torch-vectorized", "fast")
    ids, draft, tgt, u = _case(0.6)  # threshold 0.6, far from the boundaries 0.5 and 1.0
    out = _shifted(ids, draft, tgt, u, 1)
    with pytest.raises(CheckFailed, match="beyond the tolerance"):
        compare_to_reference(target, ids, draft, tgt, u=u, out=out, label="t")


def test_zero_probability_token_is_never_allowed():
    target = get_target("torch-vectorized", "fast")
    row = [0.5, 0.0, 0.5]
    ids = torch.tensor([[0]])
    tgt = torch.tensor([[row, row]])
    u = torch.tensor([[0.0, 0.5]])  # threshold exactly 0.5 = C[0] = C[1]
    ref = reference_verify(ids, tgt[:, :1], tgt, uniforms=u)
    tok = ref.token_ids.clone()
    tok[0, 1] = 1
    out = VerifyOutput(tok, ref.num_emitted.clone())
    with pytest.raises(CheckFailed, match="probability 0"):
        compare_to_reference(target, ids, tgt[:, :1], tgt, u=u, out=out, label="t")


def test_epsilon_grows_with_sqrt_v():
    assert cdf_epsilon(2) == cdf_epsilon(4096) == 1e-5
    assert cdf_epsilon(262144) == pytest.approx(8e-5)
