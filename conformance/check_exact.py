"""exact.*: with explicit ``uniforms`` a backend is a deterministic function of its inputs, and its
tokens must equal the float64 reference's (``specsample.reference_verify``).

Accept decisions must match exactly: ``u * p < q`` for float32 (or narrower) inputs is decided
exactly by a float64 product or an fma, at the cost of one operation per draft. The last token may
differ only where the reference's inverse-CDF threshold lies within ``cdf_epsilon(V)`` of a
cumulative boundary, which is recomputed for that request (see ``check_common.compare_to_reference``).
"""

from __future__ import annotations

import torch

from .check_common import compare_to_reference, first_claimed_dtype, uniforms, workload
from .checks import Target, check


def _shapes(target: Target) -> list[tuple[int, int, int, str]]:
    shapes = [(96, 4, 50, "high"), (64, 4, 1000, "medium"), (48, 3, 4099, "low"), (64, 6, 7, 1.0)]
    if target.full:
        shapes += [(256, 8, 32000, "medium"), (1024, 4, 128, "low"), (128, 5, 151, 3.0)]
    return shapes


def _run(target: Target, with_draft_probs: bool) -> str:
    target.require_mode("random")
    near, total = 0, 0
    for i, (B, K, V, acc) in enumerate(_shapes(target)):
        target.require_size(V, K)
        w = workload(
            target, B, K, V, acceptance=acc, seed=100 + i, with_draft_probs=with_draft_probs
        )
        u = uniforms(B, K, 200 + i, target.device)
        draft = w.draft_probs if with_draft_probs else None
        near += compare_to_reference(
            target, w.draft_token_ids, draft, w.target_probs, u=u, label=f"B={B}, K={K}, V={V}"
        )
        total += B
    return (
        f"{total} requests over {len(_shapes(target))} shapes; {near} proven near-tie differences"
    )


@check("exact.random")
def random_with_uniforms(target: Target) -> str:
    """With uniforms, tokens equal the float64 reference's (draft_probs given)."""
    return _run(target, True)


@check("exact.draft-probs-none")
def random_without_draft_probs(target: Target) -> str:
    """With uniforms and draft_probs=None (p = one-hot), tokens equal the reference's."""
    return _run(target, False)


def accept_boundary_cases(count: int = 48, seed: int = 5) -> list[tuple[float, float, float]]:
    """(u, p, q) float32 triples where evaluating ``u * p < q`` inexactly gets it wrong.

    Found by a deterministic search: a float32 product that rounds up to q (exactly u*p < q: accept),
    a float32 quotient ``u < q / p`` that rounds the wrong way, and exact ties ``u * p == q``
    (reject: the rule is strict).
    """
    gen = torch.Generator().manual_seed(seed)
    found: list[tuple[float, float, float]] = [
        (0.5, 0.5, 0.25),
        (0.25, 1.0, 0.25),
        (0.75, 0.5, 0.375),
    ]
    tries = 0
    while len(found) < count and tries < 200:
        tries += 1
        p = torch.rand(4096, generator=gen, dtype=torch.float32) * 0.9 + 0.05
        q = p * torch.rand(4096, generator=gen, dtype=torch.float32) * 0.98
        u0 = (q.double() / p.double()).float()
        for step in (-2, -1, 0, 1, 2):
            u = torch.nextafter(u0, torch.full_like(u0, 2.0 if step > 0 else -1.0))
            if step == 0:
                u = u0
            elif abs(step) == 2:
                u = torch.nextafter(u, torch.full_like(u, 2.0 if step > 0 else -1.0))
            exact = u.double() * p.double() < q.double()
            f32_mul = (u * p) < q
            f32_div = u < (q / p)
            odd = ((exact != f32_mul) | (exact != f32_div)) & (u < 1) & (u >= 0)
            for i in torch.nonzero(odd).flatten()[:4].tolist():
                found.append((float(u[i]), float(p[i]), float(q[i])))
            if len(found) >= count:
                break
    return found[:count]


@check("exact.accept-decisions")
def accept_decisions(target: Target) -> str:
    """u*p < q is decided exactly, including float32 rounding traps and exact ties (reject)."""
    target.require_mode("random")
    target.require_dtype("float32")  # the rounding traps are float32 values
    cases = accept_boundary_cases()
    K, V = 2, 8
    B = len(cases) // K
    ids = torch.full((B, K), 3, dtype=torch.int64)
    draft = torch.full((B, K, V), 0.05, dtype=torch.float32)
    tgt = torch.full((B, K + 1, V), 0.05, dtype=torch.float32)
    u = torch.zeros((B, K + 1), dtype=torch.float32)
    for i, (uu, p, q) in enumerate(cases[: B * K]):
        b, k = divmod(i, K)
        draft[b, k, 3], tgt[b, k, 3], u[b, k] = p, q, uu
    u[:, K] = torch.linspace(0.0, 0.99, B)
    dev = target.device
    n = compare_to_reference(
        target, ids.to(dev), draft.to(dev), tgt.to(dev), u=u.to(dev), label="accept boundary"
    )
    return f"{B * K} crafted (u, p, q) cases; {n} near-tie differences"


def _boundary_cases() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dyadic inputs (every sum exact in float32) whose thresholds sit exactly on boundaries."""
    V, K = 8, 2
    rows = []  # (ids [K], draft [K, V], target [K+1, V], u [K+1])
    same = [0.125] * 8
    # 1. All accepted (p = q, u < 1): bonus row with leading, inner and trailing zeros.
    bonus = [0.0, 0.25, 0.0, 0.25, 0.5, 0.0, 0.0, 0.0]
    for uk in (0.0, 0.25, 0.5, 0.75, 1.0 - 2.0**-24):
        rows.append(([1, 2], [same, same], [same, same, bonus], [0.5, 1.0 - 2.0**-24, uk]))
    # 2. Rejected at position 0 (q(x) = 0): residual [0, .25, 0, 0, .25, 0, 0, 0], sum 0.5.
    p0 = [0.5, 0.0, 0.25, 0.0, 0.25, 0.0, 0.0, 0.0]
    q0 = [0.0, 0.25, 0.25, 0.0, 0.5, 0.0, 0.0, 0.0]
    for uk in (0.0, 0.5, 0.25, 1.0 - 2.0**-24):
        rows.append(([0, 1], [p0, same], [q0, same, same], [0.0, 0.0, uk]))
    # 3. Rejected with an all-zero residual (p = 2q, u >= 1/2): falls back to q.
    q1 = [0.0, 0.25, 0.0, 0.75, 0.0, 0.0, 0.0, 0.0]
    p1 = [2 * x for x in q1]
    for uk in (0.0, 0.25, 0.5):
        rows.append(([3, 1], [p1, same], [q1, same, same], [0.5, 0.0, uk]))
    # 4. Rejected at position 1 after an accept.
    for uk in (0.0, 0.5):
        rows.append(([2, 0], [same, p0], [same, q0, same], [0.0, 0.0, uk]))
    ids = torch.tensor([r[0] for r in rows], dtype=torch.int64)
    draft = torch.tensor([r[1] for r in rows], dtype=torch.float32)
    tgt = torch.tensor([r[2] for r in rows], dtype=torch.float32)
    u = torch.tensor([r[3] for r in rows], dtype=torch.float32)
    assert tgt.shape == (len(rows), K + 1, V)
    return ids, draft, tgt, u


@check("exact.inverse-cdf-boundaries")
def inverse_cdf_boundaries(target: Target) -> str:
    """Thresholds exactly on a cumulative boundary pick the smallest j with cumsum > u*sum; a
    zero-probability token is never picked; an all-zero residual falls back to q."""
    target.require_mode("random")
    dtype = first_claimed_dtype(target)
    ids, draft, tgt, u = _boundary_cases()
    dev = target.device
    ids, draft, tgt, u = ids.to(dev), draft.to(dtype).to(dev), tgt.to(dtype).to(dev), u.to(dev)
    compare_to_reference(target, ids, draft, tgt, u=u, label="exact boundary", tolerance=False)
    # The same with a deterministic drafter (p one-hot): residual = q without the draft token.
    compare_to_reference(
        target, ids, None, tgt, u=u, label="exact boundary, draft_probs=None", tolerance=False
    )
    return f"{ids.shape[0]} crafted requests, exact (no tolerance: every sum is exact)"
