"""The batched tensor algorithm shared by ``torch-vectorized`` and ``torch-compile``.

No Python loop over B or K and no host sync: every decision stays on the device.
"""

from __future__ import annotations

import torch

# Status bits (specsample.Status), as plain ints so that torch.compile sees constants.
_BAD_ID, _BAD_TARGET, _BAD_DRAFT, _BAD_UNIFORM, _ZERO_ROW, _OVERFLOW = 1, 2, 4, 8, 16, 32
_FLOAT32_MAX = 3.4028234663852886e38


def _bad(x: torch.Tensor) -> torch.Tensor:
    """Elementwise: NaN, infinite or negative (``-0.0`` is fine)."""
    return ~((x >= 0) & (x < float("inf")))


def _rows_bad(rows: torch.Tensor) -> torch.Tensor:
    """``[..., V] -> [...]``: the row holds a NaN, infinite or negative value (one min/max pass)."""
    lo, hi = torch.aminmax(rows, dim=-1)
    return ~((lo >= 0) & (hi < float("inf")))


def select_rows(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor | None,
    greedy: bool,
    check_uniforms: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rules 1 and 2: decide every draft, pick the row the last token is drawn from, and flag bad
    values among those read (docs/contract.md, "Status").

    Args:
        draft_token_ids: ``[B, K]`` int32/int64 (may hold out-of-range ids: flagged, never read).
        draft_probs: ``[B, K, V]`` or None (one-hot drafter).
        target_probs: ``[B, K+1, V]`` float32/float16/bfloat16.
        uniforms: ``[B, K+1]`` float32 (ignored, may be None, when ``greedy``).
        greedy: argmax verification instead of rejection sampling.
        check_uniforms: flag uniforms outside [0, 1) (the caller passed them explicitly).

    Returns:
        ``(num_accepted [B] int64, x, flags [B] int32)``: in greedy mode ``x`` is the last token
        ``[B]`` int64; in random mode it is the unnormalized distribution to draw it from,
        ``[B, V]`` float32. ``flags`` are the status bits; where they are not zero the other
        outputs are meaningless.
    """
    B, K1, V = target_probs.shape
    K = K1 - 1
    device = target_probs.device
    raw_ids = draft_token_ids.to(torch.int64)
    ids_bad = (raw_ids < 0) | (raw_ids >= V)
    ids = torch.where(ids_bad, 0, raw_ids)  # never index with an out-of-range id
    flags = torch.where(ids_bad.any(dim=-1), _BAD_ID, 0).to(torch.int32)
    batch = torch.arange(B, device=device)
    positions = torch.arange(K1, device=device)

    if greedy:
        # Walk rows 0..K: stop at the first bad row (flagged) or the first mismatch.
        rows_bad = _rows_bad(target_probs)  # [B, K+1]
        argmax = target_probs.argmax(dim=-1)  # [B, K+1]
        mismatch = torch.ones((B, K1), dtype=torch.bool, device=device)
        mismatch[:, :K] = raw_ids != argmax[:, :K]
        stop = torch.where(rows_bad | mismatch, positions, K1).amin(dim=-1)
        flags = torch.where(
            (flags == 0) & rows_bad.gather(1, stop.unsqueeze(1)).squeeze(1), _BAD_TARGET, flags
        ).to(torch.int32)
        return stop, argmax.gather(1, stop.unsqueeze(1)).squeeze(1), flags

    q_at = target_probs[:, :K].gather(-1, ids.unsqueeze(-1)).squeeze(-1).to(torch.float64)
    entry_flags = torch.where((_bad(q_at) & ~ids_bad).any(dim=-1), _BAD_TARGET, 0)
    if draft_probs is None:
        p_at = torch.ones_like(q_at)
    else:
        p_at = draft_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1).to(torch.float64)
        entry_flags = entry_flags | torch.where((_bad(p_at) & ~ids_bad).any(dim=-1), _BAD_DRAFT, 0)
    flags = flags | entry_flags.to(torch.int32)
    if check_uniforms:
        u_bad = ~((uniforms >= 0) & (uniforms < 1)).all(dim=-1)
        flags = flags | torch.where(u_bad, _BAD_UNIFORM, 0).to(torch.int32)
    # float64 makes u * p exact for float32 inputs, so decisions match the reference exactly.
    accept = uniforms[:, :K].to(torch.float64) * p_at < q_at
    # Number accepted = index of the first rejection, or K (a min, not a scan: nothing for
    # inductor's scan codegen to trip on).
    if K > 0:
        num_accepted = torch.where(accept, K, torch.arange(K, device=device)).amin(dim=-1)
    else:
        num_accepted = torch.zeros(B, dtype=torch.int64, device=device)
    q_row = target_probs.reshape(B * K1, V)[batch * K1 + num_accepted].to(torch.float32)
    row_flags = torch.where(_rows_bad(q_row), _BAD_TARGET, 0)
    if K == 0:
        weights = q_row
    else:
        rejected = num_accepted < K
        row = num_accepted.clamp(max=K - 1)
        if draft_probs is None:
            p_row = torch.zeros_like(q_row)
            p_row.scatter_(1, ids.gather(1, row.unsqueeze(1)), 1.0)
        else:
            p_row = draft_probs.reshape(B * K, V)[batch * K + row].to(torch.float32)
            p_bad = rejected & _rows_bad(p_row)
            row_flags = torch.where((row_flags == 0) & p_bad, _BAD_DRAFT, row_flags)
        residual = torch.where(rejected.unsqueeze(1), torch.clamp(q_row - p_row, min=0.0), q_row)
        # All-zero residual (p == q up to rounding): fall back to q, as the contract says.
        empty = (residual.sum(dim=-1) == 0).unsqueeze(1)
        weights = torch.where(empty, q_row, residual)
    total = weights.sum(dim=-1, dtype=torch.float64)
    row_flags = torch.where(
        row_flags != 0,
        row_flags,
        torch.where(total > _FLOAT32_MAX, _OVERFLOW, torch.where(total == 0, _ZERO_ROW, 0)),
    )
    flags = torch.where(flags == 0, row_flags.to(torch.int32), flags)
    return num_accepted, weights, flags


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
    draft_token_ids: torch.Tensor,
    num_accepted: torch.Tensor,
    last: torch.Tensor,
    flags: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build ``token_ids`` [B, K+1] (accepted drafts, the last token, then -1) and ``num_emitted``
    [B]; a request with non-zero ``flags`` [B] gets all -1 and 0."""
    B, K = draft_token_ids.shape
    device = draft_token_ids.device
    positions = torch.arange(K + 1, device=device)
    ids = draft_token_ids.to(torch.int64)
    padded_ids = torch.cat([ids, torch.zeros((B, 1), dtype=torch.int64, device=device)], dim=1)
    token_ids = torch.where(positions < num_accepted.unsqueeze(1), padded_ids, -1)
    token_ids = token_ids.scatter(1, num_accepted.unsqueeze(1), last.unsqueeze(1))
    ok = flags == 0
    return torch.where(ok.unsqueeze(1), token_ids, -1), torch.where(ok, num_accepted + 1, 0)


def verify_tensors(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor | None,
    greedy: bool,
    check_uniforms: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole contract on a batch: :func:`select_rows`, :func:`inverse_cdf_rows`, :func:`assemble`.

    Shapes as in :func:`select_rows`. Returns ``(token_ids [B, K+1] int64, num_emitted [B] int64,
    status [B] int32)``.
    """
    num_accepted, x, flags = select_rows(
        draft_token_ids, draft_probs, target_probs, uniforms, greedy, check_uniforms
    )
    K = draft_token_ids.shape[1]
    last = x if greedy else inverse_cdf_rows(x, uniforms[:, K])
    token_ids, num_emitted = assemble(draft_token_ids, num_accepted, last, flags)
    return token_ids, num_emitted, flags
