"""stats.*: the backend's own randomness (no ``uniforms``) samples the right distributions.

Each check draws its samples in one call with a large batch of identical requests, from a
``torch.Generator`` with a fixed seed, so the verdict is deterministic. Every check combines a few
sub-tests (exact binomial tests, Pearson chi-square tests with small bins merged) with a Bonferroni
correction: the probability that a correct backend fails a check is at most ``ALPHA`` = 1e-4.
A category of probability zero that is observed fails at once (it cannot happen).
docs/conformance.md lists the power of each test at both levels.
"""

from __future__ import annotations

import torch

from . import statistics as st
from .check_common import check_output, first_claimed_dtype
from .checks import CheckFailed, Target, check

ALPHA = 1e-4

# Samples (requests) per batch, by level.
# fast is sized for slow executors too (the Triton interpreter runs ~100 requests/s); full is for
# the GPU, where these are a few batched calls.
SAMPLES = {
    "acceptance": {"fast": 4_000, "full": 100_000},
    "residual": {"fast": 3_000, "full": 100_000},
    "losslessness": {"fast": 4_000, "full": 100_000},
    "streams": {"fast": 1_000, "full": 20_000},
}

SEEDS = {"acceptance": 1001, "residual": 1002, "losslessness": 1003, "streams": 1004}


def _rows(values: list[list[float]], dtype: torch.dtype, device: torch.device, batch: int):
    """[batch, len(values), V] copies of the given rows (materialized, contiguous)."""
    t = torch.tensor(values, dtype=torch.float32).to(dtype)
    return t.unsqueeze(0).expand(batch, -1, -1).contiguous().to(device)


def _spread(v: int, token: int, mass: float, rest: float | None = None) -> list[float]:
    """A row of V entries with ``mass`` on ``token`` and the rest spread evenly."""
    rest = 1.0 - mass if rest is None else rest
    row = [rest / (v - 1)] * v
    row[token] = mass
    return row


def _draw(target: Target, ids, draft, tgt, seed: int, label: str):
    gen = torch.Generator(device=target.device).manual_seed(seed)
    out = target.verify(ids, draft, tgt, mode="random", generator=gen)
    check_output(out, ids, tgt.shape[-1], target.device, label)
    return out.token_ids.cpu(), out.num_emitted.cpu()


class _Tests:
    """Collects sub-test p-values and fails with the most significant violation."""

    def __init__(self, count: int) -> None:
        self.alpha = ALPHA / count
        self.count = count
        self.results: list[tuple[float, str]] = []

    def add(self, pvalue: float, message: str) -> None:
        self.results.append((pvalue, message))

    def finish(self, samples: str) -> str:
        assert len(self.results) == self.count, (len(self.results), self.count)
        worst = min(self.results, key=lambda r: r[0])
        if worst[0] < self.alpha:
            failing = [m for p, m in self.results if p < self.alpha]
            raise CheckFailed(
                "; ".join(failing) + f" [p-value < {self.alpha:.2g} per sub-test, "
                f"{self.count} sub-tests, false-alarm rate {ALPHA:g}; {samples}]"
            )
        return f"{samples}; {self.count} sub-tests, smallest p-value {worst[0]:.3g} (alpha {self.alpha:.2g} each)"


def _acceptance_batch(target, tests, dtype, n_samples, with_draft_probs: bool, seed: int):
    K, V = 4, 6
    ids_row = [1, 2, 3, 4]
    if with_draft_probs:
        ratios = [0.7, 0.85, 0.35, None]  # None: q > p, always accepted
        p_rows, q_rows = [], []
        for k, a in enumerate(ratios):
            x = ids_row[k]
            if a is None:
                p_rows.append(_spread(V, x, 0.2))
                q_rows.append(_spread(V, x, 0.4))
            else:
                p_rows.append(_spread(V, x, 0.4))
                q_rows.append(_spread(V, x, 0.4 * a))
        draft = _rows(p_rows, dtype, target.device, n_samples)
    else:
        q_rows = [_spread(V, ids_row[k], m) for k, m in enumerate([0.6, 0.9, 0.3, 0.75])]
        draft = None
    q_rows.append(_spread(V, 0, 0.5))
    tgt = _rows(q_rows, dtype, target.device, n_samples)
    ids = torch.tensor([ids_row] * n_samples, dtype=torch.int64, device=target.device)
    label = "acceptance, " + ("draft_probs" if with_draft_probs else "draft_probs=None")
    _, n = _draw(target, ids, draft, tgt, seed, label)
    # The exact acceptance probability from the values actually passed (after dtype rounding).
    q_at = tgt[0, :K].gather(-1, ids[0].unsqueeze(-1)).squeeze(-1).double().cpu()
    p_at = (
        torch.ones(K, dtype=torch.float64)
        if draft is None
        else draft[0].gather(-1, ids[0].unsqueeze(-1)).squeeze(-1).double().cpu()
    )
    a = torch.clamp(q_at / p_at, max=1.0)
    parts = []
    for k in range(K):
        reached = int((n >= k + 1).sum())
        accepted = int((n >= k + 2).sum())
        pv = st.binom_test(accepted, reached, float(a[k]))
        tests.add(
            pv,
            f"acceptance frequency at position {k} ({label}): {accepted}/{reached} = "
            f"{accepted / max(reached, 1):.4f}, expected min(1, q/p) = {float(a[k]):.4f} "
            f"(binomial p = {pv:.2g})",
        )
        parts.append(f"{accepted}/{reached}")
    return n, float(a[0]), "/".join(parts)


@check("stats.acceptance")
def acceptance(target: Target) -> str:
    """Per-position acceptance frequency = min(1, q/p) (exact binomial tests), and neighbouring
    requests decide independently."""
    target.require_mode("random")
    dtype = first_claimed_dtype(target)
    n_samples = SAMPLES["acceptance"][target.level]
    tests = _Tests(4 + 1 + 4)
    n, a0, counts = _acceptance_batch(target, tests, dtype, n_samples, True, SEEDS["acceptance"])
    # Independence of neighbouring requests: pairs (2i, 2i+1) agree at position 0 with
    # probability a^2 + (1-a)^2 when their random numbers are independent.
    acc0 = n >= 2
    pairs = n_samples // 2
    agree = int((acc0[0 : 2 * pairs : 2] == acc0[1 : 2 * pairs : 2]).sum())
    expect = a0 * a0 + (1 - a0) * (1 - a0)
    pv = st.binom_test(agree, pairs, expect)
    tests.add(
        pv,
        f"independence of neighbouring requests: {agree}/{pairs} pairs agree at position 0, "
        f"expected {expect:.4f} (binomial p = {pv:.2g})",
    )
    _, _, counts2 = _acceptance_batch(
        target, tests, dtype, n_samples, False, SEEDS["acceptance"] + 1
    )
    return tests.finish(f"{n_samples} requests x 2 batches, accepted/reached {counts}; {counts2}")


def _emitted_at_rejection(tok: torch.Tensor, n: torch.Tensor, K: int) -> torch.Tensor:
    rejected = n <= K
    return tok[rejected, :].gather(1, (n[rejected] - 1).unsqueeze(1)).squeeze(1)


def _gof(tests, tokens: torch.Tensor, probs: torch.Tensor, label: str) -> None:
    V = probs.numel()
    counts = torch.bincount(tokens, minlength=V)[:V]
    res = st.chisquare_gof(counts, probs)
    if res.impossible:
        tests.add(
            0.0,
            f"{label}: emitted token(s) {res.impossible} of probability 0 "
            f"(counts {counts.tolist()}, expected proportional to "
            f"{[round(float(x), 4) for x in probs]})",
        )
        return
    expected = (probs / probs.sum() * counts.sum()).tolist()
    tests.add(
        res.pvalue,
        f"{label}: counts {counts.tolist()} vs expected {[round(e, 1) for e in expected]} "
        f"({res.describe()})",
    )


@check("stats.residual")
def residual(target: Target) -> str:
    """After a rejection the emitted token ~ norm(max(0, q - p)) (chi-square; a token of zero
    residual must never appear), with draft_probs given and None."""
    target.require_mode("random")
    dtype = first_claimed_dtype(target)
    n_samples = SAMPLES["residual"][target.level]
    K, V = 4, 8
    tests = _Tests(2)
    p_row = [0.30, 0.05, 0.20, 0.05, 0.10, 0.05, 0.20, 0.05]
    q_row = [0.075, 0.20, 0.05, 0.25, 0.10, 0.15, 0.05, 0.125]
    batches = [
        ("residual, draft_probs", 0, [p_row] * K, [q_row] * (K + 1)),
        (
            "residual, draft_probs=None",
            3,
            None,
            [[0.1, 0.05, 0.2, 0.25, 0.15, 0.05, 0.1, 0.1]] * (K + 1),
        ),
    ]
    sizes = []
    for i, (label, x, p_rows, q_rows) in enumerate(batches):
        ids = torch.full((n_samples, K), x, dtype=torch.int64, device=target.device)
        draft = None if p_rows is None else _rows(p_rows, dtype, target.device, n_samples)
        tgt = _rows(q_rows, dtype, target.device, n_samples)
        tok, n = _draw(target, ids, draft, tgt, SEEDS["residual"] + i, label)
        q64 = tgt[0, 0].double().cpu()
        p64 = torch.zeros(V, dtype=torch.float64)
        if draft is None:
            p64[x] = 1.0
        else:
            p64 = draft[0, 0].double().cpu()
        r = torch.clamp(q64 - p64, min=0.0)
        emitted = _emitted_at_rejection(tok, n, K)
        sizes.append(emitted.numel())
        _gof(tests, emitted, r, f"resampled token ({label}) ~ norm(max(0, q - p))")
    return tests.finish(f"{n_samples} requests x 2 batches, {sizes} rejections")


def _lossless_rows(K: int, V: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.softmax(torch.randn((K + 1, V), generator=gen) * 1.5, dim=-1)
    p = torch.softmax(torch.log(q[:K]) + torch.randn((K, V), generator=gen), dim=-1)
    return p, q


@check("stats.losslessness")
def losslessness(target: Target) -> str:
    """With drafts drawn from p, the token at every position ~ q (given the ones before it were
    accepted) and num_emitted follows its exact law: the output is distributed as the target alone
    would sample it."""
    target.require_mode("random")
    dtype = first_claimed_dtype(target)
    N = SAMPLES["losslessness"][target.level]
    K, V = 3, 12
    tests = _Tests(2 * (K + 2))
    p32, q32 = _lossless_rows(K, V, 77)
    p = p32.to(dtype)
    q = q32.to(dtype)
    gen = torch.Generator().manual_seed(SEEDS["losslessness"])
    ids = torch.multinomial(p.double().repeat(N, 1), 1, replacement=True, generator=gen).reshape(
        N, K
    )
    # A deterministic drafter proposing each row's most likely token (accepted often).
    fixed = q32[:K].argmax(-1).unsqueeze(0).repeat(N // 2, 1)
    batches = [
        ("drafts from p", ids, p.unsqueeze(0).expand(N, -1, -1).contiguous(), N),
        ("draft_probs=None", fixed, None, N // 2),
    ]
    sizes = []
    for i, (label, idsb, draft, m) in enumerate(batches):
        tgt = q.unsqueeze(0).expand(m, -1, -1).contiguous().to(target.device)
        tok, n = _draw(
            target,
            idsb.to(target.device),
            None if draft is None else draft.to(target.device),
            tgt,
            SEEDS["losslessness"] + 10 + i,
            f"losslessness, {label}",
        )
        q64 = q.double()
        for k in range(K + 1):
            reached = n >= k + 1
            _gof(tests, tok[reached, k], q64[k], f"token at position {k} ({label}) ~ q_{k}")
        # Per-position acceptance probability beta_k, then the law of num_emitted.
        if draft is None:
            beta = [float(q64[k, int(fixed[0, k])]) for k in range(K)]
        else:
            beta = [float(torch.minimum(p.double()[k], q64[k]).sum()) for k in range(K)]
        law, reach = [], 1.0
        for k in range(K):
            law.append(reach * (1 - beta[k]))
            reach *= beta[k]
        law.append(reach)
        counts = torch.bincount(n - 1, minlength=K + 1)[: K + 1]
        res = st.chisquare_gof(counts, law)
        tests.add(
            res.pvalue,
            f"num_emitted ({label}): counts of 1..{K + 1} = {counts.tolist()} vs expected "
            f"{[round(x * m, 1) for x in law]} ({res.describe()})",
        )
        sizes.append(m)
    return tests.finish(f"{sizes} requests, K={K}, V={V}")


@check("stats.independent-streams")
def independent_streams(target: Target) -> str:
    """A narrow, high-power case: the resample (and bonus) random numbers are not the accept ones.

    p = (0, 0, 1), q = (1/4, 1/4, 1/2), draft 2: accepted iff u < 1/2; the residual and the bonus
    row are (1/2, 1/2, 0). Reusing the accept number puts every resample on token 1 and every bonus
    on token 0; independent numbers give each half the time.
    """
    target.require_mode("random")
    dtype = first_claimed_dtype(target)
    N = SAMPLES["streams"][target.level]
    K = 4
    ids = torch.full((N, K), 2, dtype=torch.int64, device=target.device)
    draft = _rows([[0.0, 0.0, 1.0]] * K, dtype, target.device, N)
    tgt = _rows([[0.25, 0.25, 0.5]] * K + [[0.5, 0.5, 0.0]], dtype, target.device, N)
    tok, n = _draw(target, ids, draft, tgt, SEEDS["streams"], "independent streams")
    tests = _Tests(2)
    resampled = _emitted_at_rejection(tok, n, K)
    bonus = tok[n == K + 1, K]
    for label, toks in (("resampled", resampled), ("bonus", bonus)):
        if bool((toks == 2).any()):
            tests.add(0.0, f"{label} token 2 has probability 0 but was emitted")
            continue
        zeros = int((toks == 0).sum())
        pv = st.binom_test(zeros, toks.numel(), 0.5)
        tests.add(
            pv,
            f"{label} tokens: token 0 in {zeros}/{toks.numel()}, expected 1/2 (binomial p = "
            f"{pv:.2g}); the accept random number was probably reused for the "
            + ("resample" if label == "resampled" else "bonus draw"),
        )
    return tests.finish(f"{N} requests, {resampled.numel()} resampled, {bonus.numel()} bonus")
