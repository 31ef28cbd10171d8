"""The serving entry point in batched tensor ops, shared by the PyTorch backends (docs/serving.md).

No Python loop over requests or positions and no host sync. The sampling distributions
(temperature, top-k, top-p) are computed in float32 for every owned row, which is what an engine
does today ("softmax + filter in PyTorch, then verify"): the fused kernels read each row once
instead.
"""

from __future__ import annotations

import torch

from ._vectorized import assemble, inverse_cdf_rows

# Status bits (specsample.Status), as plain ints so that torch.compile sees constants.
_BAD_ID, _BAD_TARGET, _BAD_DRAFT, _BAD_UNIFORM, _ZERO_ROW = 1, 2, 4, 8, 16


def row_checks(rows: torch.Tensor, is_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., V] -> ([...] bad, [...] no_mass)``: a bad value (NaN or ``+inf``; for
    probabilities also negative) and no positive weight (all ``-inf`` logits / all-zero
    probabilities), in one min/max pass."""
    lo, hi = torch.aminmax(rows, dim=-1)
    if is_logits:
        return ~(hi < float("inf")), hi == float("-inf")
    return ~((lo >= 0) & (hi < float("inf"))), hi <= 0


def sampling_distribution(
    rows: torch.Tensor,
    is_logits: bool,
    temperature: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
) -> torch.Tensor:
    """The float32 sampling distribution of every row (specsample.reference_serving.transform_row).

    Args:
        rows: ``[B, R, V]`` logits or probabilities (float32/float16/bfloat16).
        is_logits: which of the two ``rows`` holds.
        temperature: ``[B]`` float32 ``> 0`` (greedy requests pass any positive value).
        top_k: ``[B]`` int64 (0 or ``>= V`` = off), or None when no request filters.
        top_p: ``[B]`` float32 in ``(0, 1]`` (1 = off), or None when no request filters.

    Returns:
        ``[B, R, V]`` float32, each row summing to 1 (0 for a row without mass; garbage for a row
        holding bad values, which the caller flags).
    """
    V = rows.shape[-1]
    x = rows.to(torch.float32)
    hi = x.amax(dim=-1, keepdim=True)
    T = temperature.to(torch.float32).reshape(-1, 1, 1)
    if is_logits:
        no_mass = hi == float("-inf")
        w = torch.exp((x - torch.where(no_mass, 0.0, hi)) / T)
    else:
        no_mass = hi <= 0
        w = torch.pow(x / torch.where(no_mass, 1.0, hi), 1.0 / T)
    w = torch.where(no_mass, 0.0, w)
    if top_k is not None:
        k = top_k.reshape(-1, 1, 1)
        active = (k > 0) & (k < V)
        ordered = torch.sort(x, dim=-1, descending=True).values
        kth = ordered.gather(-1, (k - 1).clamp(0, V - 1).expand(*x.shape[:2], 1))
        w = torch.where(active & (x < kth), 0.0, w)
    pi = w / w.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    if top_p is not None:
        p = top_p.to(torch.float32).reshape(-1, 1, 1)
        ordered = torch.sort(pi, dim=-1, descending=True).values
        above = torch.cumsum(ordered, dim=-1) - ordered
        above[..., 0] = 0.0
        kept = (above < p).sum(dim=-1, keepdim=True).clamp_min(1)
        tau = ordered.gather(-1, kept - 1)
        filtered = torch.where(pi >= tau, pi, 0.0)
        filtered = filtered / filtered.sum(dim=-1, keepdim=True).clamp_min(
            torch.finfo(torch.float32).tiny
        )
        pi = torch.where(p < 1, filtered, pi)
    return pi


def serving_select(
    draft_token_ids: torch.Tensor,
    num_draft_tokens: torch.Tensor,
    target: torch.Tensor,
    target_is_logits: bool,
    draft: torch.Tensor | None,
    draft_is_logits: bool,
    temperature: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    coins: torch.Tensor,
    param_flags: torch.Tensor,
    check_uniforms: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Status, decisions and the last token's distribution of every request.

    Shapes as in :class:`specsample.serving.ServingInputs` (``coins`` [B, K+1] float32).

    Returns:
        ``(num_accepted [B] int64, weights [B, V] float32, last_coin [B] float32, greedy_last [B]
        int64, greedy [B] bool, flags [B] int32)``: a random request draws its last token from
        ``weights`` with ``last_coin``; a greedy one emits ``greedy_last``.
    """
    B, K1, V = target.shape
    K = K1 - 1
    device = target.device
    positions = torch.arange(K1, device=device)
    num = num_draft_tokens.to(torch.int64)
    owned_rows = positions.unsqueeze(0) <= num.unsqueeze(1)  # [B, K+1]
    owned_drafts = owned_rows[:, :K] & (positions[:K].unsqueeze(0) < num.unsqueeze(1))
    greedy = temperature == 0
    random = ~greedy

    raw_ids = draft_token_ids.to(torch.int64)
    ids_bad = ((raw_ids < 0) | (raw_ids >= V)) & owned_drafts
    ids = torch.where(ids_bad | ~owned_drafts, 0, raw_ids)
    flags = param_flags.to(torch.int32) | torch.where(ids_bad.any(dim=-1), _BAD_ID, 0).to(
        torch.int32
    )
    rows_bad, no_mass = row_checks(target, target_is_logits)
    flags = flags | torch.where((rows_bad & owned_rows).any(dim=-1), _BAD_TARGET, 0).to(torch.int32)
    random_flags = torch.where((no_mass & owned_rows).any(dim=-1), _ZERO_ROW, 0)
    if check_uniforms:
        u_bad = ~((coins >= 0) & (coins < 1)) & owned_rows
        random_flags = random_flags | torch.where(u_bad.any(dim=-1), _BAD_UNIFORM, 0)
    if draft is not None and K > 0:
        draft_bad, _ = row_checks(draft, draft_is_logits)
        random_flags = random_flags | torch.where(
            (draft_bad & owned_drafts).any(dim=-1), _BAD_DRAFT, 0
        )
    flags = flags | torch.where(random, random_flags, 0).to(torch.int32)

    # Greedy requests: argmax of the raw rows (ties -> smallest index).
    argmax = target.argmax(dim=-1)  # [B, K+1]
    if K > 0:
        mismatch = (raw_ids != argmax[:, :K]) | ~owned_drafts
        stop = torch.where(mismatch, positions[:K], K).amin(dim=-1)
    else:
        stop = torch.zeros(B, dtype=torch.int64, device=device)
    greedy_last = argmax.gather(1, stop.unsqueeze(1)).squeeze(1)

    # Random requests: the chain rules on the filtered distributions.
    temp = torch.where(greedy, 1.0, temperature.to(torch.float32))
    q = sampling_distribution(target, target_is_logits, temp, top_k, top_p)  # [B, K+1, V]
    batch = torch.arange(B, device=device)
    if K > 0:
        q_at = q[:, :K].gather(-1, ids.unsqueeze(-1)).squeeze(-1).to(torch.float64)
        if draft is None:
            p = None
            p_at = torch.ones_like(q_at)
        else:
            p = (
                sampling_distribution(draft, True, temp, top_k, top_p)
                if draft_is_logits
                else draft.to(torch.float32)
            )
            p_at = p.gather(-1, ids.unsqueeze(-1)).squeeze(-1).to(torch.float64)
        accept = (coins[:, :K].to(torch.float64) * p_at < q_at) & owned_drafts
        num_accepted = torch.where(accept, K, positions[:K]).amin(dim=-1)
        num_accepted = torch.minimum(num_accepted, num)
    else:
        num_accepted = torch.zeros(B, dtype=torch.int64, device=device)
    q_row = q[batch, num_accepted]  # [B, V]
    if K > 0:
        rejected = num_accepted < num
        row = num_accepted.clamp(max=K - 1)
        if p is None:
            p_row = torch.zeros_like(q_row)
            p_row.scatter_(1, ids.gather(1, row.unsqueeze(1)), 1.0)
        else:
            p_row = p[batch, row]
        residual = torch.where(rejected.unsqueeze(1), torch.clamp(q_row - p_row, min=0.0), q_row)
        empty = (residual.sum(dim=-1) == 0).unsqueeze(1)
        weights = torch.where(empty, q_row, residual)
    else:
        weights = q_row
    last_coin = coins.gather(1, num.unsqueeze(1)).squeeze(1)
    n_acc = torch.where(greedy, stop, num_accepted)
    return n_acc, weights, last_coin, greedy_last, greedy, flags


def serving_tensors(
    draft_token_ids: torch.Tensor,
    num_draft_tokens: torch.Tensor,
    target: torch.Tensor,
    target_is_logits: bool,
    draft: torch.Tensor | None,
    draft_is_logits: bool,
    temperature: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    coins: torch.Tensor,
    param_flags: torch.Tensor,
    check_uniforms: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole serving call on a padded batch: ``(token_ids [B, K+1] int64, num_emitted [B]
    int64, status [B] int32)``. Arguments as in :func:`serving_select`."""
    n_acc, weights, last_coin, greedy_last, greedy, flags = serving_select(
        draft_token_ids, num_draft_tokens, target, target_is_logits, draft, draft_is_logits,
        temperature, top_k, top_p, coins, param_flags, check_uniforms,
    )  # fmt: skip
    return finish(draft_token_ids, n_acc, weights, last_coin, greedy_last, greedy, flags)


def finish(
    draft_token_ids: torch.Tensor,
    n_acc: torch.Tensor,
    weights: torch.Tensor,
    last_coin: torch.Tensor,
    greedy_last: torch.Tensor,
    greedy: torch.Tensor,
    flags: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse-CDF draw and the output rows from :func:`serving_select`'s results."""
    drawn = inverse_cdf_rows(weights, last_coin)
    last = torch.where(greedy, greedy_last, drawn)
    token_ids, num_emitted = assemble(draft_token_ids, n_acc, last, flags)
    return token_ids, num_emitted, flags


def serving_arguments(inputs) -> tuple:
    """The positional arguments of :func:`serving_tensors` from :class:`ServingInputs` (coins drawn
    here, on the device)."""
    from specsample.serving import serving_coins

    return (
        inputs.draft_token_ids,
        inputs.num_draft_tokens,
        inputs.target,
        inputs.target_is_logits,
        inputs.draft,
        inputs.draft_is_logits,
        inputs.temperature,
        inputs.top_k if inputs.uses_top_k else None,
        inputs.top_p if inputs.uses_top_p else None,
        serving_coins(inputs),
        inputs.param_flags,
        inputs.uniforms is not None,
    )
