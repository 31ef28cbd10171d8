"""The float64 reference: the contract's definition, written for clarity rather than speed.

Conformance uses it as ground truth. Every probability is read in its dtype and converted to float64;
the three rules of DESIGN.md ("Semantics with uniforms") are applied one request at a time.
"""

from __future__ import annotations

import torch

from .contract import VerifyOutput
from .rng import draw_uniforms
from .validation import empty_output, validate_inputs


def accept_draft(u: float, p: float, q: float) -> bool:
    """Rule 1: accept the draft token iff ``u * p < q`` (exact in float64 for float32 inputs)."""
    return u * p < q


def residual(p_row: torch.Tensor | None, q_row: torch.Tensor, draft_token: int) -> torch.Tensor:
    """Rule 2: ``max(0, q - p)`` over the vocabulary, falling back to ``q`` when it sums to zero.

    Args:
        p_row: ``[V]`` draft distribution, or None for a deterministic drafter (one-hot at
            ``draft_token``).
        q_row: ``[V]`` target distribution.
        draft_token: the rejected draft token (used when ``p_row`` is None).

    Returns:
        ``[V]`` float64, unnormalized.
    """
    q = q_row.to(torch.float64)
    if p_row is None:
        p = torch.zeros_like(q)
        p[draft_token] = 1.0
    else:
        p = p_row.to(torch.float64)
    r = torch.clamp(q - p, min=0.0)
    if r.sum().item() == 0.0:
        r = q
    return r


def inverse_cdf(r: torch.Tensor, u: float) -> int:
    """Rule 3: the smallest ``j`` with ``cumsum(r)[j] > u * sum(r)``.

    Args:
        r: ``[V]`` float64, unnormalized, non-negative.
        u: uniform in [0, 1).

    A token of probability zero is never chosen; when ``sum(r) == 0`` token 0 is returned (only
    reachable when the target row itself is all zeros, which the contract leaves undefined).
    """
    cdf = torch.cumsum(r, dim=0)
    total = cdf[-1].item()
    if total <= 0.0:
        return 0
    idx = int(
        torch.searchsorted(cdf, torch.tensor([u * total], dtype=cdf.dtype), right=True).item()
    )
    # searchsorted(right=True) gives the first index whose cdf is > threshold; guard rounding.
    idx = min(idx, r.numel() - 1)
    while r[idx].item() == 0.0 and idx > 0:
        idx -= 1
    return idx


def reference_verify(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    *,
    mode: str = "random",
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
    check_finite: bool = True,
) -> VerifyOutput:
    """The contract in float64. Same arguments and output as :meth:`specsample.Backend.verify`.

    Without ``uniforms`` it draws them with :func:`specsample.rng.draw_uniforms` (as the PyTorch
    backends do), so it consumes the generator exactly like them. Runs on the CPU; the output is
    returned on the inputs' device.
    """
    inputs = validate_inputs(
        draft_token_ids,
        draft_probs,
        target_probs,
        mode=mode,
        generator=generator,
        uniforms=uniforms,
        check_finite=check_finite,
    )
    if inputs.batch_size == 0:
        return empty_output(inputs)
    B, K = inputs.batch_size, inputs.num_draft
    ids = inputs.draft_token_ids.cpu().to(torch.int64)
    q_all = inputs.target_probs.cpu()
    p_all = None if inputs.draft_probs is None else inputs.draft_probs.cpu()
    if mode == "random":
        u_all = inputs.uniforms
        if u_all is None:
            u_all = draw_uniforms(B, K, inputs.generator, inputs.device)
        u_all = u_all.cpu().to(torch.float64)

    token_ids = torch.full((B, K + 1), -1, dtype=torch.int64)
    num_emitted = torch.zeros(B, dtype=torch.int64)
    for b in range(B):
        last_row = K  # the bonus row unless a draft is rejected
        rejected = False
        for k in range(K):
            x = int(ids[b, k])
            q_row = q_all[b, k].to(torch.float64)
            if mode == "greedy":
                ok = x == int(torch.argmax(q_row))
            else:
                p = 1.0 if p_all is None else float(p_all[b, k, x].to(torch.float64))
                ok = accept_draft(float(u_all[b, k]), p, float(q_row[x]))
            if not ok:
                last_row, rejected = k, True
                break
            token_ids[b, k] = x
        if mode == "greedy":
            last = int(torch.argmax(q_all[b, last_row].to(torch.float64)))
        elif rejected:
            p_row = None if p_all is None else p_all[b, last_row]
            r = residual(p_row, q_all[b, last_row], int(ids[b, last_row]))
            last = inverse_cdf(r, float(u_all[b, K]))
        else:
            last = inverse_cdf(q_all[b, K].to(torch.float64), float(u_all[b, K]))
        token_ids[b, last_row] = last
        num_emitted[b] = last_row + 1
    return VerifyOutput(token_ids.to(inputs.device), num_emitted.to(inputs.device))
