"""The batched tensor algorithm shared by ``torch-vectorized`` and ``torch-compile``.

No Python loop over B or K and no host sync: every decision stays on the device.
"""

from __future__ import annotations

import torch


def select_rows(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor | None,
    greedy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rules 1 and 2: decide every draft, then pick the row the last token is drawn from.

    Args:
        draft_token_ids: ``[B, K]`` int32/int64.
        draft_probs: ``[B, K, V]`` or None (one-hot drafter).
        target_probs: ``[B, K+1, V]`` float32/float16/bfloat16.
        uniforms: ``[B, K+1]`` float32 (ignored, may be None, when ``greedy``).
        greedy: argmax verification instead of rejection sampling.

    Returns:
        ``(num_accepted [B] int64, x)``: in greedy mode ``x`` is the last token ``[B]`` int64; in
        random mode it is the unnormalized distribution to draw it from, ``[B, V]`` float32.
    """
    B, K1, V = target_probs.shape
    K = K1 - 1
    device = target_probs.device
    ids = draft_token_ids.to(torch.int64)
    batch = torch.arange(B, device=device)

    if greedy:
        accept = ids == target_probs[:, :K].argmax(dim=-1)
    else:
        q_at = target_probs[:, :K].gather(-1, ids.unsqueeze(-1)).squeeze(-1).to(torch.float64)
        if draft_probs is None:
            p_at = torch.ones_like(q_at)
        else:
            p_at = draft_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1).to(torch.float64)
        # float64 makes u * p exact for float32 inputs, so decisions match the reference exactly.
        accept = uniforms[:, :K].to(torch.float64) * p_at < q_at
    # Number accepted = index of the first rejection, or K (a min, not a scan: nothing for
    # inductor's scan codegen to trip on).
    if K > 0:
        num_accepted = torch.where(accept, K, torch.arange(K, device=device)).amin(dim=-1)
    else:
        num_accepted = torch.zeros(B, dtype=torch.int64, device=device)
    q_row = target_probs.reshape(B * K1, V)[batch * K1 + num_accepted].to(torch.float32)
    if greedy:
        return num_accepted, q_row.argmax(dim=-1)
    if K == 0:
        return num_accepted, q_row
    rejected = num_accepted < K
    row = num_accepted.clamp(max=K - 1)
    if draft_probs is None:
        p_row = torch.zeros_like(q_row)
        p_row.scatter_(1, ids.gather(1, row.unsqueeze(1)), 1.0)
    else:
        p_row = draft_probs.reshape(B * K, V)[batch * K + row].to(torch.float32)
    residual = torch.where(rejected.unsqueeze(1), torch.clamp(q_row - p_row, min=0.0), q_row)
    # All-zero residual (p == q up to rounding): fall back to q, as the contract says.
    empty = (residual.sum(dim=-1) == 0).unsqueeze(1)
    return num_accepted, torch.where(empty, q_row, residual)


def inverse_cdf_rows(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Rule 3 per row: the smallest ``j`` with ``cumsum(w)[j] > u * sum(w)``.

    Args:
        weights: ``[B, V]`` float32, non-negative, unnormalized.
        u: ``[B]`` float32 in [0, 1).

    Returns:
        ``[B]`` int64; never an index of zero weight.
    """
    cdf = torch.cumsum(weights, dim=-1)
    threshold = u * cdf[:, -1]
    last = torch.searchsorted(cdf, threshold.unsqueeze(1), right=True).squeeze(1)
    # Rounding can put the threshold at the total; never step past the last positive token.
    positions = torch.arange(weights.shape[1], device=weights.device)
    last_positive = torch.where(weights > 0, positions, 0).amax(dim=-1)
    return torch.minimum(last, last_positive)


def assemble(
    draft_token_ids: torch.Tensor, num_accepted: torch.Tensor, last: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build ``token_ids`` [B, K+1] (accepted drafts, the last token, then -1) and ``num_emitted``."""
    B, K = draft_token_ids.shape
    device = draft_token_ids.device
    positions = torch.arange(K + 1, device=device)
    ids = draft_token_ids.to(torch.int64)
    padded_ids = torch.cat([ids, torch.zeros((B, 1), dtype=torch.int64, device=device)], dim=1)
    token_ids = torch.where(positions < num_accepted.unsqueeze(1), padded_ids, -1)
    token_ids = token_ids.scatter(1, num_accepted.unsqueeze(1), last.unsqueeze(1))
    return token_ids, num_accepted + 1


def verify_tensors(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor | None,
    greedy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole contract on a batch: :func:`select_rows`, :func:`inverse_cdf_rows`, :func:`assemble`.

    Shapes as in :func:`select_rows`. Returns ``(token_ids [B, K+1] int64, num_emitted [B] int64)``.
    """
    num_accepted, x = select_rows(draft_token_ids, draft_probs, target_probs, uniforms, greedy)
    K = draft_token_ids.shape[1]
    last = x if greedy else inverse_cdf_rows(x, uniforms[:, K])
    return assemble(draft_token_ids, num_accepted, last)
