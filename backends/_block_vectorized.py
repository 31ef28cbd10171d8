"""Block verification (docs/rules.md) as batched tensor ops, shared by ``torch-vectorized`` and
``torch-compile``.

No Python loop over B or K and no host sync. The prefix weights depend only on the drafted
entries, so every threshold is an independent row reduction:

- ``w_{k+1} = min(1, w_k r_k)`` with ``r_k = q_k(x_k) / p_k(x_k)`` unrolls to
  ``w_{k+1} = min(1, min_{j <= k} prod_{l=j..k} r_l)``: one masked product over a ``[K, K, K]``
  cube per request (``K`` is small), no scan;
- the residual masses ``Z_{k+1} = sum_v max(0, w_{k+1} q_{k+1}(v) - p_{k+1}(v))`` of rows
  ``1..K-1`` are one reduction over ``[B, K-1, V]``;
- ``tau = max{k + 1 : u_k < h_k}`` is a max over ``[B, K]``.

Weights, thresholds and the final row are computed in float64, like the reference.
"""

from __future__ import annotations

import torch

from ._vectorized import (
    _BAD_DRAFT,
    _BAD_ID,
    _BAD_TARGET,
    _BAD_UNIFORM,
    _FLOAT32_MAX,
    _OVERFLOW,
    _ZERO_ROW,
    _bad,
    _rows_bad,
)


def prefix_weights(q_at: torch.Tensor, p_at: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` drafted entries (float64) -> ``[B, K+1]`` prefix weights ``w_0..w_K``.

    ``w_0 = 1`` and ``w_{k+1} = min(1, w_k q_k(x_k) / p_k(x_k))``; a drafted token of draft
    probability 0 gets the ratio's limit (1 when ``w_k q > 0``, else 0), as the reference does.
    """
    B, K = q_at.shape
    inf = torch.full_like(q_at, float("inf"))
    ratio = torch.where(p_at > 0, q_at / p_at, torch.where(q_at > 0, inf, torch.zeros_like(q_at)))
    pos = torch.arange(K, device=q_at.device)
    # span[j, k, l]: l lies in j..k, so prod_l over the span is the product of ratios j..k
    span = (pos.view(K, 1, 1) <= pos.view(1, 1, K)) & (pos.view(1, 1, K) <= pos.view(1, K, 1))
    factors = torch.where(span, ratio.view(B, 1, 1, K), torch.ones_like(ratio).view(B, 1, 1, K))
    # inf * 0 is NaN: a zero ratio in the span makes the weight 0 whatever follows.
    products = torch.nan_to_num(factors.prod(dim=-1), nan=0.0)  # [B, j, k]; 1 where j > k
    w = products.amin(dim=1).clamp(max=1.0)  # [B, K]: w_1..w_K
    return torch.cat([torch.ones_like(w[:, :1]), w], dim=1)


def _draft_rows(draft_probs, ids, rows, like):
    """Draft rows ``rows`` ([B, n] positions) as float64 ``[B, n, V]``; one-hot when None."""
    if draft_probs is None:
        p = torch.zeros_like(like)
        return p.scatter_(-1, ids.gather(1, rows).unsqueeze(-1), 1.0)
    B, K, V = draft_probs.shape
    index = rows.unsqueeze(-1).expand(-1, -1, V)
    return draft_probs.gather(1, index).to(torch.float64)


def thresholds(w, draft_probs, target_probs, ids) -> torch.Tensor:
    """``[B, K]`` float64 thresholds ``h_0..h_{K-1}`` (docs/rules.md, rule 2).

    ``w`` [B, K+1] prefix weights, ``ids`` [B, K] in-range int64 ids. ``h_k = Z / (Z + 1 - w_{k+1})``
    with ``Z`` the residual mass of row ``k+1`` (1 where the denominator is 0), ``h_{K-1} = w_K``.
    """
    B, K = ids.shape
    if K < 2:
        return w[:, 1:]
    q = target_probs[:, 1:K].to(torch.float64)  # [B, K-1, V]
    if draft_probs is None:
        p = torch.zeros_like(q).scatter_(-1, ids[:, 1:K].unsqueeze(-1), 1.0)
    else:
        p = draft_probs[:, 1:K].to(torch.float64)
    wk = w[:, 1:K]
    z = torch.clamp(wk.unsqueeze(-1) * q - p, min=0.0).sum(dim=-1)
    denom = z + 1.0 - wk
    h = torch.where(denom > 0, z / torch.where(denom > 0, denom, 1.0), 1.0)
    return torch.cat([h, w[:, K:]], dim=1)


def block_select_rows(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor,
    check_uniforms: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block verification, random mode: decide, pick the final row, flag bad values.

    Args:
        draft_token_ids: ``[B, K]`` int32/int64, K >= 1 (may hold out-of-range ids: flagged).
        draft_probs: ``[B, K, V]`` or None (one-hot drafter).
        target_probs: ``[B, K+1, V]`` float32/float16/bfloat16.
        uniforms: ``[B, K+1]`` float32.
        check_uniforms: flag uniforms outside [0, 1) (the caller passed them explicitly).

    Returns:
        ``(tau [B] int64, weights [B, V] float64, flags [B] int32)``: the accepted length, the
        unnormalized row the last token is drawn from, and the status bits (docs/rules.md,
        "Status"); where ``flags`` is not zero the other outputs are meaningless.
    """
    B, K1, V = target_probs.shape
    K = K1 - 1
    device = target_probs.device
    raw_ids = draft_token_ids.to(torch.int64)
    ids_bad = (raw_ids < 0) | (raw_ids >= V)
    ids = torch.where(ids_bad, 0, raw_ids)
    flags = torch.where(ids_bad.any(dim=-1), _BAD_ID, 0)
    # Step 1: ids, drafted entries, explicit uniforms (several bits may be set).
    q_at = target_probs[:, :K].gather(-1, ids.unsqueeze(-1)).squeeze(-1).to(torch.float64)
    flags = flags | torch.where((_bad(q_at) & ~ids_bad).any(dim=-1), _BAD_TARGET, 0)
    if draft_probs is None:
        p_at = torch.ones_like(q_at)
    else:
        p_at = draft_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1).to(torch.float64)
        flags = flags | torch.where((_bad(p_at) & ~ids_bad).any(dim=-1), _BAD_DRAFT, 0)
    if check_uniforms:
        u_bad = ~((uniforms >= 0) & (uniforms < 1)).all(dim=-1)
        flags = flags | torch.where(u_bad, _BAD_UNIFORM, 0)
    # Step 2: rows 0..K-1 of q and p in full (both bits may be set).
    rows_flags = torch.where(_rows_bad(target_probs[:, :K]).any(dim=-1), _BAD_TARGET, 0)
    if draft_probs is not None:
        rows_flags = rows_flags | torch.where(_rows_bad(draft_probs).any(dim=-1), _BAD_DRAFT, 0)
    flags = torch.where(flags == 0, rows_flags, flags)

    w = prefix_weights(q_at, p_at)
    h = thresholds(w, draft_probs, target_probs, ids)
    passed = uniforms[:, :K].to(torch.float64) < h
    tau = torch.where(passed, torch.arange(1, K1, device=device), 0).amax(dim=-1)

    # Step 3: the final row: the bonus row (tau = K) or the weighted residual of row tau.
    batch = torch.arange(B, device=device)
    q_row = target_probs.reshape(B * K1, V)[batch * K1 + tau].to(torch.float64)
    row = tau.clamp(max=K - 1).unsqueeze(1)
    p_row = _draft_rows(draft_probs, ids, row, q_row.unsqueeze(1)).squeeze(1)
    rejected = (tau < K).unsqueeze(1)
    w_tau = w.gather(1, tau.unsqueeze(1))
    residual = torch.where(rejected, torch.clamp(w_tau * q_row - p_row, min=0.0), q_row)
    weights = torch.where((residual.sum(dim=-1) == 0).unsqueeze(1), q_row, residual)
    total = weights.sum(dim=-1)
    last_flags = torch.where((tau == K) & _rows_bad(q_row), _BAD_TARGET, 0)
    last_flags = torch.where(
        last_flags != 0,
        last_flags,
        torch.where(total > _FLOAT32_MAX, _OVERFLOW, torch.where(total == 0, _ZERO_ROW, 0)),
    )
    flags = torch.where(flags == 0, last_flags, flags).to(torch.int32)
    return tau, weights, flags


def verify_block_tensors(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor,
    check_uniforms: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block verification on a batch (random mode, K >= 1): :func:`block_select_rows`, then the
    inverse CDF and the output layout of the token rule. Shapes as in :func:`block_select_rows`.

    Returns ``(token_ids [B, K+1] int64, num_emitted [B] int64, status [B] int32)``.
    """
    from ._vectorized import assemble, inverse_cdf_rows

    tau, weights, flags = block_select_rows(
        draft_token_ids, draft_probs, target_probs, uniforms, check_uniforms
    )
    K = draft_token_ids.shape[1]
    last = inverse_cdf_rows(weights, uniforms[:, K].to(torch.float64))
    token_ids, num_emitted = assemble(draft_token_ids, tau, last, flags)
    return token_ids, num_emitted, flags
