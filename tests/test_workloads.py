"""Synthetic workloads and acceptance calibration (specsample.workloads)."""

from __future__ import annotations

import pytest
import torch
from specsample.workloads import (
    ACCEPTANCE_RATE,
    acceptance_length_for,
    calibrate_noise,
    expected_acceptance,
    length_from_rate,
    make_workload,
    rate_from_length,
)


def test_make_workload_keeps_its_old_signature():
    w = make_workload(3, 4, 50, dtype=torch.float16, acceptance="low", seed=1)
    assert w.draft_token_ids.shape == (3, 4) and w.draft_token_ids.dtype == torch.int64
    assert w.draft_probs.shape == (3, 4, 50) and w.draft_probs.dtype == torch.float16
    assert w.target_probs.shape == (3, 5, 50) and w.shape == (3, 4, 50)
    assert w.noise == 4.0 and w.requested_acceptance_length is None
    assert torch.allclose(w.target_probs.float().sum(-1), torch.ones(3, 5), atol=1e-2)
    w2 = make_workload(3, 4, 50, acceptance=0.0, with_draft_probs=False)
    assert w2.draft_probs is None
    assert w.nbytes() == 3 * 4 * 8 + 2 * (3 * 5 * 50 + 3 * 4 * 50)


def test_same_seed_same_tensors():
    a = make_workload(2, 3, 40, seed=7, acceptance_length=2.0)
    b = make_workload(2, 3, 40, seed=7, acceptance_length=2.0)
    assert torch.equal(a.draft_token_ids, b.draft_token_ids)
    assert torch.equal(a.target_probs, b.target_probs)


def test_rate_length_round_trip():
    for k in (0, 1, 4, 8):
        for alpha in (0.0, 0.3, 0.8, 1.0):
            length = length_from_rate(alpha, k)
            assert 1.0 <= length <= k + 1
            if k > 0 and alpha < 1.0:
                assert rate_from_length(length, k) == pytest.approx(alpha, abs=1e-9)
    assert length_from_rate(0.5, 2) == pytest.approx(1.75)
    with pytest.raises(ValueError, match="acceptance_length"):
        rate_from_length(6.0, 4)


def test_regimes():
    assert acceptance_length_for("high", 4) == pytest.approx(
        length_from_rate(ACCEPTANCE_RATE["high"], 4)
    )
    assert acceptance_length_for("rate=0.5", 2) == pytest.approx(1.75)
    assert acceptance_length_for("2.5", 4) == 2.5
    with pytest.raises(ValueError, match="regime"):
        acceptance_length_for("medium-rare", 4)
    with pytest.raises(ValueError):
        acceptance_length_for(9.0, 4)


@pytest.mark.parametrize("mode", ["random", "greedy"])
@pytest.mark.parametrize("regime", ["high", "low"])
def test_calibration_hits_the_requested_length(mode, regime):
    K, V, B = 4, 512, 512
    target = acceptance_length_for(regime, K)
    w = make_workload(B, K, V, acceptance_length=target, greedy_drafter=mode == "greedy", seed=3)
    got = expected_acceptance(w, mode).mean_length
    assert got == pytest.approx(target, rel=0.12), (mode, regime, target, got, w.noise)


def test_calibration_is_monotone_and_cached():
    hi = calibrate_noise(4, 256, 4.0)
    lo = calibrate_noise(4, 256, 1.5)
    assert 0 < hi < lo
    assert calibrate_noise(4, 256, 5.0) == 0.0  # every draft accepted: draft == target
    assert calibrate_noise.cache_info().hits >= 0


def test_expected_acceptance_matches_the_sampler():
    import specsample

    w = make_workload(2000, 3, 64, acceptance_length=2.5, seed=5)
    exp = expected_acceptance(w, "random")
    gen = torch.Generator().manual_seed(0)
    out = specsample.verify(w.draft_token_ids, w.draft_probs, w.target_probs, generator=gen)
    measured = out.num_emitted.double().mean().item()
    assert measured == pytest.approx(exp.mean_length, abs=0.08)
    rejected = (out.num_emitted < 4).double().mean().item()
    assert rejected == pytest.approx(exp.reject_fraction, abs=0.04)
    g = expected_acceptance(w, "greedy")
    out = specsample.verify(w.draft_token_ids, w.draft_probs, w.target_probs, mode="greedy")
    assert out.num_emitted.double().mean().item() == pytest.approx(g.mean_length)


def test_zero_draft_and_bad_mode():
    w = make_workload(2, 0, 16)
    assert expected_acceptance(w).mean_length == 1.0
    with pytest.raises(ValueError, match="mode"):
        expected_acceptance(w, "beam")
    with pytest.raises(ValueError, match="mode"):
        calibrate_noise(2, 16, 2.0, mode="beam")
