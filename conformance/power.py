"""The power of the statistical checks: which biases they detect at the sample sizes used.

``python -m specsample.conformance.power`` prints the table of docs/conformance.md. Binomial tests
use the normal approximation; chi-square tests are simulated (Monte Carlo, fixed seed) exactly as
the checks run them, bins merged. "Detects" means with probability 0.9 at the check's per-sub-test
level ``ALPHA / sub-tests``.
"""

from __future__ import annotations

import torch

from . import check_stats as S
from . import statistics as st

POWER = 0.9


def _chi_power(
    probs: torch.Tensor, alt: torch.Tensor, n: int, alpha: float, reps: int = 400
) -> float:
    gen = torch.Generator().manual_seed(0)
    hits = 0
    for _ in range(reps):
        counts = torch.bincount(
            torch.multinomial(alt, n, replacement=True, generator=gen), minlength=probs.numel()
        )
        if st.chisquare_gof(counts, probs).pvalue < alpha:
            hits += 1
    return hits / reps


def _smallest(fn, lo: float = 0.0, hi: float = 1.0, steps: int = 12) -> float:
    """Smallest eps in [lo, hi] with fn(eps) >= POWER (fn increasing)."""
    if fn(hi) < POWER:
        return float("nan")
    for _ in range(steps):
        mid = (lo + hi) / 2
        if fn(mid) >= POWER:
            hi = mid
        else:
            lo = mid
    return hi


def table(level: str) -> list[tuple[str, str, str]]:
    rows = []
    # stats.acceptance: position 0 (n = N, a = 0.7) and position 3 of the draft_probs=None batch.
    n = S.SAMPLES["acceptance"][level]
    alpha = S.ALPHA / 9
    d0 = st.binomial_detectable_shift(n, 0.7, alpha, POWER)
    reach = int(n * 0.6 * 0.9 * 0.3)
    d3 = st.binomial_detectable_shift(reach, 0.75, alpha, POWER)
    rows.append(
        (
            "stats.acceptance",
            f"{n} x 2",
            f"acceptance probability off by {d0:.3f} at position 0 (n={n}), by {d3:.3f} at the "
            f"least-reached position (n~{reach}); a rejection where q >= p (at any count); "
            f"u*p > q instead of < (a -> 1-a) always",
        )
    )
    # stats.residual: resample from a mixture (1-e) r + e q (q puts 27.5% on zero-residual tokens)
    # and a tilt of the residual (1 + e, 1 - e alternately on its support).
    n = S.SAMPLES["residual"][level]
    alpha = S.ALPHA / 2
    q = torch.tensor([0.075, 0.20, 0.05, 0.25, 0.10, 0.15, 0.05, 0.125], dtype=torch.float64)
    p = torch.tensor([0.30, 0.05, 0.20, 0.05, 0.10, 0.05, 0.20, 0.05], dtype=torch.float64)
    r = torch.clamp(q - p, min=0)
    r = r / r.sum()
    n_rej = int(n * 0.996)

    def tilt(eps: float) -> float:
        sign = torch.tensor([0, 1, 0, -1, 0, 1, 0, -1], dtype=torch.float64)
        alt = r * (1 + eps * sign)
        return _chi_power(r, alt / alt.sum(), n_rej, alpha)

    mix = 2.303 / (0.275 * n_rej)  # P(no impossible token) = 0.1
    rows.append(
        (
            "stats.residual",
            f"{n} x 2",
            f"resampling from q instead of max(0, q-p) even a fraction {mix:.1e} of the time (a "
            f"zero-residual token appears); residual probabilities tilted by +-{_smallest(tilt):.3f} "
            "(relative)",
        )
    )
    # stats.losslessness: the first token drawn from (1-e) q + e p (draft leaking through).
    n = S.SAMPLES["losslessness"][level]
    alpha = S.ALPHA / 10
    pl, ql = S._lossless_rows(3, 12, 77)
    q0, p0 = ql[0].double(), pl[0].double()

    def leak(eps: float) -> float:
        return _chi_power(q0, (1 - eps) * q0 + eps * p0, n, alpha)

    tv = float((q0 - p0).abs().sum() / 2)
    rows.append(
        (
            "stats.losslessness",
            f"{n} + {n // 2}",
            f"first token from (1-e) q + e p with e >= {_smallest(leak):.3f} (TV(p, q) = {tv:.2f}); "
            "a shift of num_emitted's law of the same order",
        )
    )
    n = S.SAMPLES["streams"][level]
    n_rej = int(n * 0.93)
    d = st.binomial_detectable_shift(n_rej, 0.5, S.ALPHA / 2, POWER)
    rows.append(
        (
            "stats.independent-streams",
            f"{n}",
            f"the accept number reused for the resample in a fraction {2 * d:.3f} of rejections "
            f"(P(token 0) = (1 - e)/2); reused always: p-value ~ 2^-{n_rej}",
        )
    )
    return rows


def main() -> None:
    for level in ("fast", "full"):
        print(f"\nlevel {level}:\n")
        print("| check | requests | detected with probability 0.9 |")
        print("| --- | --- | --- |")
        for name, n, what in table(level):
            print(f"| `{name}` | {n} | {what} |")


if __name__ == "__main__":
    main()
