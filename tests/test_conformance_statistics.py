"""The suite's statistics (no scipy in the product) against scipy, and their calibration."""

from __future__ import annotations

import math

import pytest
import torch
from specsample.conformance import statistics as st

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("df", [1, 2, 3, 7, 11, 40])
@pytest.mark.parametrize("x", [0.01, 0.5, 3.0, 12.0, 45.0, 90.0])
def test_chi2_sf_matches_scipy(x, df):
    want = scipy_stats.chi2.sf(x, df)
    got = st.chi2_sf(x, df)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(
    "k,n,p",
    [
        (0, 10, 0.3),
        (3, 10, 0.3),
        (10, 10, 0.3),
        (7012, 10000, 0.7),
        (6890, 10000, 0.7),
        (500, 1000, 0.5),
        (480, 1000, 0.5),
        (3, 2000, 0.01),
        (55, 2000, 0.01),
        (1, 1, 0.999),
    ],
)
def test_binom_test_matches_scipy(k, n, p):
    want = scipy_stats.binomtest(k, n, p).pvalue
    assert st.binom_test(k, n, p) == pytest.approx(want, rel=1e-6, abs=1e-300)


def test_binom_test_degenerate_probabilities():
    assert st.binom_test(10, 10, 1.0) == 1.0
    assert st.binom_test(9, 10, 1.0) == 0.0
    assert st.binom_test(0, 10, 0.0) == 1.0


def test_chisquare_matches_scipy_without_merging():
    obs = [105, 190, 310, 395]
    probs = [0.1, 0.2, 0.3, 0.4]
    res = st.chisquare_gof(obs, probs)
    want = scipy_stats.chisquare(obs, [1000 * x for x in probs])
    assert res.statistic == pytest.approx(want.statistic)
    assert res.pvalue == pytest.approx(want.pvalue, rel=1e-9)
    assert res.df == 3


def test_chisquare_merges_small_bins_and_flags_impossible_ones():
    groups = st.merge_bins([0.5, 2.0, 100.0, 3.0, 0.0, 200.0, 6.0])
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3, 5, 6]
    sums = [sum([0.5, 2.0, 100.0, 3.0, 0.0, 200.0, 6.0][i] for i in g) for g in groups]
    assert min(sums) >= st.MIN_EXPECTED
    res = st.chisquare_gof([1, 5, 4], [0.0, 0.5, 0.5])
    assert res.impossible == [0] and res.pvalue == 0.0


def test_chisquare_pvalues_are_calibrated():
    """Under the null, P(p < a) is about a (a coarse check of the merged-bin approximation)."""
    gen = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.3, 0.25, 0.2, 0.1, 0.08, 0.04, 0.02, 0.01])
    pvals = []
    for _ in range(2000):
        counts = torch.bincount(torch.multinomial(probs, 2000, True, generator=gen), minlength=8)
        pvals.append(st.chisquare_gof(counts, probs).pvalue)
    pv = torch.tensor(pvals)
    for a in (0.01, 0.05, 0.2, 0.5):
        frac = float((pv < a).double().mean())
        assert abs(frac - a) < 4 * math.sqrt(a * (1 - a) / 2000) + 0.005, (a, frac)


def test_normal_quantile():
    assert st.two_sided_normal_quantile(0.05) == pytest.approx(1.959964, abs=1e-5)
    assert st.two_sided_normal_quantile(1e-4) == pytest.approx(
        scipy_stats.norm.isf(0.5e-4), rel=1e-6
    )
