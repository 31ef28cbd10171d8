"""The batched tensor algorithm shared by ``torch-vectorized`` and ``torch-compile``.

No Python loop over B or K and no host sync: every decision stays on the device.
"""

from __future__ import annotations

import torch


def verify_tensors(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor | None,
    greedy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the contract's rules to a whole batch at once.

    Args:
        draft_token_ids: ``[B, K]`` int32/int64.
        draft_probs: ``[B, K, V]`` or None (one-hot drafter).
        target_probs: ``[B, K+1, V]`` float32/float16/bfloat16.
        uniforms: ``[B, K+1]`` float32 (ignored, may be None, when ``greedy``).
        greedy: argmax verification instead of rejection sampling.

    Returns:
        ``(token_ids [B, K+1] int64, num_emitted [B] int64)``.
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
    # Number accepted = length of the leading run of True.
    num_accepted = accept.to(torch.int64).cumprod(dim=-1).sum(dim=-1)
    q_row = target_probs.reshape(B * K1, V)[batch * K1 + num_accepted].to(torch.float32)

    if greedy:
        last = q_row.argmax(dim=-1)
    else:
        rejected = num_accepted < K
        if K == 0:
            residual = q_row
        else:
            row = num_accepted.clamp(max=K - 1)
            if draft_probs is None:
                p_row = torch.zeros_like(q_row)
                p_row.scatter_(1, ids.gather(1, row.unsqueeze(1)), 1.0)
            else:
                p_row = draft_probs.reshape(B * K, V)[batch * K + row].to(torch.float32)
            residual = torch.where(
                rejected.unsqueeze(1), torch.clamp(q_row - p_row, min=0.0), q_row
            )
            # All-zero residual (p == q up to rounding): fall back to q, as the contract says.
            empty = (residual.sum(dim=-1) == 0).unsqueeze(1)
            residual = torch.where(empty, q_row, residual)
        cdf = torch.cumsum(residual, dim=-1)
        threshold = uniforms[:, K] * cdf[:, -1]
        last = torch.searchsorted(cdf, threshold.unsqueeze(1), right=True).squeeze(1)
        # Rounding can put the threshold at the total; never step past the last positive token.
        positions = torch.arange(V, device=device)
        last_positive = torch.where(residual > 0, positions, 0).amax(dim=-1)
        last = torch.minimum(last, last_positive)

    positions = torch.arange(K1, device=device)
    padded_ids = torch.cat([ids, torch.zeros((B, 1), dtype=torch.int64, device=device)], dim=1)
    token_ids = torch.where(positions < num_accepted.unsqueeze(1), padded_ids, -1)
    token_ids = token_ids.scatter(1, num_accepted.unsqueeze(1), last.unsqueeze(1))
    return token_ids, num_accepted + 1
