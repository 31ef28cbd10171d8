"""Converters between the padded and the flattened (engine) layouts of a serving batch.

Padded layout: ``draft_token_ids`` ``[B, K]`` with ``num_draft_tokens`` ``[B]`` (request ``b`` owns
positions ``0 .. num_draft_tokens[b] - 1``; the rest is padding, never read), target rows
``[B, K+1, V]`` (request ``b`` owns rows ``0 .. num_draft_tokens[b]``, the last of them its bonus
row), draft rows ``[B, K, V]``, coins ``[B, K+1]``, output tokens ``[B, K+1]``.

Flattened layout (what engines build): ``draft_token_ids`` ``[T]``, the drafts of all requests one
after the other, and ``cu_num_draft_tokens`` ``[B]``, the inclusive running sum of the per-request
counts (``cu_num_draft_tokens[-1] == T``). Request ``b`` with ``K_b`` drafts and
``s_b = cu_num_draft_tokens[b] - K_b`` owns drafts ``s_b .. s_b + K_b - 1``, draft rows (``[T, V]``)
at the same indices, and ``K_b + 1`` target rows (``[T + B, V]``) at ``s_b + b .. s_b + b + K_b``:
its verified positions followed by its bonus row, as a target forward pass over each request's
``K_b + 1`` query positions lays them out. Flattened coins and output tokens (``[T + B]``) use the
target rows' indices.

Every converter is tensor ops on the inputs' device: no host sync, except where a docstring says so.
"""

from __future__ import annotations

import torch


def num_draft_from_cu(cu_num_draft_tokens: torch.Tensor) -> torch.Tensor:
    """``[B]`` int64 per-request draft counts from the inclusive running sum ``[B]``."""
    cu = cu_num_draft_tokens.to(torch.int64)
    return cu - torch.cat([cu.new_zeros(1), cu[:-1]])


def flat_row_index(
    cu_num_draft_tokens: torch.Tensor, max_num_draft_tokens: int, *, bonus: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each padded slot lives in a flattened tensor.

    Args:
        cu_num_draft_tokens: ``[B]`` int32/int64 inclusive running sum of the draft counts.
        max_num_draft_tokens: ``K``, the padded width (at least every count).
        bonus: True for target rows, coins and output tokens (``K_b + 1`` rows per request, flat
            length ``T + B``); False for drafts and draft rows (``K_b`` per request, length ``T``).

    Returns:
        ``(index, valid)``, both ``[B, K + 1]`` (``bonus``) or ``[B, K]``: ``index`` int64 flat
        positions (meaningless where ``valid`` is False), ``valid`` bool, True for the slots the
        request owns.
    """
    cu = cu_num_draft_tokens.to(torch.int64)
    num = num_draft_from_cu(cu)
    start = cu - num
    width = max_num_draft_tokens + (1 if bonus else 0)
    positions = torch.arange(width, device=cu.device)
    if bonus:
        start = start + torch.arange(cu.shape[0], device=cu.device)
        valid = positions <= num.unsqueeze(1)
    else:
        valid = positions < num.unsqueeze(1)
    return start.unsqueeze(1) + positions, valid


def flat_to_padded(
    flat: torch.Tensor,
    cu_num_draft_tokens: torch.Tensor,
    max_num_draft_tokens: int,
    *,
    bonus: bool,
    fill: float | int = 0,
) -> torch.Tensor:
    """Gather a flattened tensor ``[N, ...]`` into the padded layout ``[B, K(+1), ...]``.

    ``N`` is ``T + B`` when ``bonus`` (target rows, coins, tokens) and ``T`` otherwise (drafts, draft
    rows). Slots a request does not own hold ``fill``. Indices outside ``[0, N)`` (an inconsistent
    ``cu_num_draft_tokens``) are clamped, never dereferenced.
    """
    index, valid = flat_row_index(cu_num_draft_tokens, max_num_draft_tokens, bonus=bonus)
    n = flat.shape[0]
    if n == 0:
        shape = (*index.shape, *flat.shape[1:])
        return torch.full(shape, fill, dtype=flat.dtype, device=flat.device)
    gathered = flat[index.clamp(0, n - 1)]
    mask = valid.reshape(*valid.shape, *([1] * (flat.dim() - 1)))
    return torch.where(mask, gathered, torch.as_tensor(fill, dtype=flat.dtype, device=flat.device))


def padded_to_flat(
    padded: torch.Tensor,
    cu_num_draft_tokens: torch.Tensor,
    num_rows: int,
    *,
    bonus: bool,
    fill: float | int = 0,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scatter a padded tensor ``[B, K(+1), ...]`` into the flattened layout ``[num_rows, ...]``.

    ``num_rows`` is ``T + B`` when ``bonus`` and ``T`` otherwise. Only requests where ``keep`` [B]
    bool is True (all when None) are written; flat rows no written request owns hold ``fill``.
    """
    B, width = padded.shape[:2]
    max_k = width - (1 if bonus else 0)
    index, valid = flat_row_index(cu_num_draft_tokens, max_k, bonus=bonus)
    valid = valid & (index >= 0) & (index < num_rows)
    if keep is not None:
        valid = valid & keep.unsqueeze(1)
    target = torch.where(valid, index, num_rows).reshape(-1)  # slot num_rows is a drop slot
    rest = padded.shape[2:]
    out = torch.full((num_rows + 1, *rest), fill, dtype=padded.dtype, device=padded.device)
    out[target] = padded.reshape(B * width, *rest)
    return out[:num_rows]


def padded_to_flat_drafts(
    draft_token_ids: torch.Tensor, num_draft_tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(draft_token_ids [T], cu_num_draft_tokens [B] int64)`` from the padded ``[B, K]`` ids and
    ``[B]`` counts. Reads ``T`` on the host (one sync when the counts are on a GPU)."""
    cu = torch.cumsum(num_draft_tokens.to(torch.int64), dim=0)
    total = int(cu[-1]) if cu.numel() else 0
    return padded_to_flat(draft_token_ids, cu, total, bonus=False), cu


#: keyword arguments of a serving call laid out like the target rows (``T + B`` flat rows) and like
#: the draft rows (``T``); the others are per request and keep their ``[B]`` layout
_TARGET_LIKE = ("target_probs", "target_logits", "uniforms")
_DRAFT_LIKE = ("draft_probs", "draft_logits")


def padded_to_flat_call(
    draft_token_ids: torch.Tensor, kwargs: dict
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A padded-layout ``verify_serving`` call in the flattened layout: ``(draft_token_ids [T],
    cu_num_draft_tokens [B] int64, kwargs)`` for ``verify_serving_flat``. ``kwargs`` must hold
    ``num_draft_tokens``; its target-shaped and draft-shaped tensors are scattered to flat rows,
    the per-request ones kept. Reads ``T`` on the host (one sync when the counts are on a GPU)."""
    flat_ids, cu = padded_to_flat_drafts(draft_token_ids, kwargs["num_draft_tokens"])
    T, B = flat_ids.shape[0], draft_token_ids.shape[0]
    flat = {}
    for name, value in kwargs.items():
        if name in _TARGET_LIKE and value is not None:
            value = padded_to_flat(value, cu.to(value.device), T + B, bonus=True)
        elif name in _DRAFT_LIKE and value is not None:
            value = padded_to_flat(value, cu.to(value.device), T, bonus=False)
        if name != "num_draft_tokens":
            flat[name] = value
    return flat_ids, cu, flat
