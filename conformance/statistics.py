"""Exact and approximate hypothesis tests used by the statistical checks (no scipy).

Everything is computed in float64. The binomial test is exact (log-pmf sums with ``lgamma``); the
chi-square survival function is the regularized upper incomplete gamma function,
``torch.special.gammaincc(df / 2, x / 2)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Bins of a chi-square test with fewer expected counts than this are merged: the chi-square
# approximation of the Pearson statistic is poor in the far tail when expected counts are small.
MIN_EXPECTED = 10.0


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be positive, got {df}")
    if x <= 0:
        return 1.0
    a = torch.tensor(df / 2.0, dtype=torch.float64)
    return float(torch.special.gammaincc(a, torch.tensor(x / 2.0, dtype=torch.float64)))


def binom_logpmf(n: int, p: float) -> torch.Tensor:
    """log P(S = s) for s = 0..n, S ~ Binomial(n, p), as a float64 tensor of n + 1 values."""
    s = torch.arange(n + 1, dtype=torch.float64)
    if p <= 0.0 or p >= 1.0:
        out = torch.full((n + 1,), -math.inf, dtype=torch.float64)
        out[0 if p <= 0.0 else n] = 0.0
        return out
    log_choose = math.lgamma(n + 1) - torch.lgamma(s + 1) - torch.lgamma(n - s + 1)
    return log_choose + s * math.log(p) + (n - s) * math.log1p(-p)


def binom_test(successes: int, n: int, p: float) -> float:
    """Exact two-sided binomial test of ``successes`` in ``n`` trials against probability ``p``.

    The p-value sums the probabilities of every outcome no more likely than the observed one (the
    "minimum likelihood" rule, as ``scipy.stats.binomtest`` does by default).
    """
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    if n == 0:
        return 1.0
    logpmf = binom_logpmf(n, p)
    observed = float(logpmf[successes])
    if observed == -math.inf:
        return 0.0
    # A relative slack, so that outcomes exactly as likely as the observed one are counted in spite
    # of rounding in the log-pmf.
    keep = logpmf <= observed + 1e-7 * max(1.0, abs(observed))
    return min(1.0, float(torch.exp(logpmf[keep]).sum()))


@dataclass
class ChiSquare:
    """Result of :func:`chisquare_gof`: statistic, degrees of freedom, p-value, merged bins."""

    statistic: float
    df: int
    pvalue: float
    bins: int
    impossible: list[int]  # categories of expected probability 0 that were observed

    def describe(self) -> str:
        return f"chi2={self.statistic:.1f}, df={self.df}, p={self.pvalue:.2e}"


def merge_bins(expected: Sequence[float], min_expected: float = MIN_EXPECTED) -> list[list[int]]:
    """Group category indices so that every group's expected count is at least ``min_expected``.

    Categories of expected count 0 are left out. Categories are merged from the smallest expected
    count upwards; a final group that is still too small joins the previous one.
    """
    order = sorted((i for i, e in enumerate(expected) if e > 0), key=lambda i: expected[i])
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0.0
    for i in order:
        current.append(i)
        total += expected[i]
        if total >= min_expected:
            groups.append(current)
            current, total = [], 0.0
    if current:
        if groups:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return groups


def chisquare_gof(
    observed: Sequence[int] | torch.Tensor,
    probs: Sequence[float] | torch.Tensor,
    min_expected: float = MIN_EXPECTED,
) -> ChiSquare:
    """Pearson goodness-of-fit of counts ``observed`` against probabilities ``probs`` (any scale).

    Bins with small expected counts are merged (:func:`merge_bins`). A category of probability 0
    that was observed is listed in ``impossible`` and makes the p-value 0: it cannot happen.
    """
    obs = torch.as_tensor(observed, dtype=torch.float64).flatten()
    pr = torch.as_tensor(probs, dtype=torch.float64).flatten()
    if obs.numel() != pr.numel():
        raise ValueError(f"observed has {obs.numel()} categories but probs has {pr.numel()}")
    if (pr < 0).any() or float(pr.sum()) <= 0:
        raise ValueError("probs must be non-negative with a positive sum")
    n = float(obs.sum())
    pr = pr / pr.sum()
    impossible = [int(i) for i in torch.nonzero((pr == 0) & (obs > 0)).flatten()]
    if impossible:
        return ChiSquare(math.inf, 0, 0.0, 0, impossible)
    expected = (pr * n).tolist()
    groups = merge_bins(expected, min_expected)
    if len(groups) < 2:
        return ChiSquare(0.0, 0, 1.0, len(groups), [])
    stat = 0.0
    for g in groups:
        e = sum(expected[i] for i in g)
        o = float(obs[g].sum())
        stat += (o - e) ** 2 / e
    df = len(groups) - 1
    return ChiSquare(stat, df, chi2_sf(stat, df), len(groups), [])


def two_sided_normal_quantile(alpha: float) -> float:
    """z with P(|Z| > z) = alpha for a standard normal Z (bisection on erfc; no scipy)."""
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if math.erfc(mid / math.sqrt(2)) > alpha:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def binomial_detectable_shift(n: int, p: float, alpha: float, power: float = 0.9) -> float:
    """The shift of a success probability ``p`` that a two-sided level-``alpha`` test over ``n``
    trials detects with probability ``power`` (normal approximation; documentation only)."""
    if n == 0:
        return math.inf
    z_a = two_sided_normal_quantile(alpha)
    z_b = two_sided_normal_quantile(2 * (1 - power))
    return (z_a + z_b) * math.sqrt(max(p * (1 - p), 1e-12) / n)
