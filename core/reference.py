"""The float64 reference: the contract's definition, written for clarity rather than speed.

Conformance uses it as ground truth. Every probability is read in its dtype and converted to float64;
the rules of docs/contract.md (decisions, residual, inverse CDF, and which values are checked for
``status``) are applied one request at a time.
"""

from __future__ import annotations

import torch

from .contract import VerifyInputs, VerifyOutput
from .rng import draw_uniforms
from .status import FLOAT32_MAX, Status
from .validation import empty_output, resolve_validate, validate_inputs


def accept_draft(u: float, p: float, q: float) -> bool:
    """Rule 1: accept the draft token iff ``u * p < q`` (exact in float64 for float32 inputs)."""
    return u * p < q


def residual_positive_part(
    p_row: torch.Tensor | None, q_row: torch.Tensor, draft_token: int
) -> torch.Tensor:
    """``max(0, q - p)`` in float64, ``[V]``, with no fallback (p one-hot at ``draft_token`` when
    ``p_row`` is None). Its sum is the residual's mass, the probability of a rejection."""
    q = q_row.to(torch.float64)
    if p_row is None:
        p = torch.zeros_like(q)
        p[draft_token] = 1.0
    else:
        p = p_row.to(torch.float64)
    return torch.clamp(q - p, min=0.0)


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
    r = residual_positive_part(p_row, q_row, draft_token)
    if r.sum().item() == 0.0:
        r = q_row.to(torch.float64)
    return r


def inverse_cdf(r: torch.Tensor, u: float) -> int:
    """Rule 3: the smallest ``j`` with ``cumsum(r)[j] > u * sum(r)``.

    Args:
        r: ``[V]`` float64, unnormalized, non-negative.
        u: uniform in [0, 1).

    A token of probability zero is never chosen; when ``sum(r) == 0`` token 0 is returned (the
    contract flags such a request ``ZERO_ROW`` before drawing).
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


def reference_coins(inputs: VerifyInputs, num_coins: int) -> torch.Tensor:
    """The ``[B, num_coins + 1]`` coins of a reference call, float64 on the CPU: the caller's
    ``uniforms``, or drawn from the generator exactly as the PyTorch backends draw them."""
    u = inputs.uniforms
    if u is None:
        u = draw_uniforms(inputs.batch_size, num_coins, inputs.generator, inputs.device)
    return u.cpu().to(torch.float64)


def bad_values(x: torch.Tensor) -> bool:
    """True when any entry of ``x`` is NaN, infinite or negative (``-0.0`` is fine)."""
    x = x.to(torch.float64)
    return not bool(((x >= 0) & (x < float("inf"))).all())


def entry_flags(
    ids: list[int],
    p_b: torch.Tensor | None,
    q_b: torch.Tensor,
    u_b: list[float],
    explicit_uniforms: bool,
) -> Status:
    """Random mode, step 1 of docs/contract.md ("Status"), the same for every rule: the K ids,
    the drafted entries ``q[k, x_k]`` and ``p[k, x_k]`` of in-range ids, and explicit uniforms.

    ``ids`` [K], ``p_b`` [K, V] or None, ``q_b`` [K+1, V], ``u_b`` [K+1]. Returns the OR of the
    bits found (several may be set).
    """
    V = q_b.shape[1]
    flags = Status.OK
    for k, x in enumerate(ids):
        if not 0 <= x < V:
            flags |= Status.BAD_DRAFT_ID
            continue  # never read
        if bad_values(q_b[k, x]):
            flags |= Status.BAD_TARGET_VALUE
        if p_b is not None and bad_values(p_b[k, x]):
            flags |= Status.BAD_DRAFT_VALUE
    if explicit_uniforms and any(not (0.0 <= u < 1.0) for u in u_b):
        flags |= Status.BAD_UNIFORM
    return flags


def _verify_request(
    ids: list[int],
    p_b: torch.Tensor | None,
    q_b: torch.Tensor,
    u_b: list[float] | None,
    explicit_uniforms: bool,
    greedy: bool,
) -> tuple[int, list[int]]:
    """One request: ``(status flags, emitted tokens)``; the tokens are empty when flagged.

    ``ids`` [K], ``p_b`` [K, V] or None, ``q_b`` [K+1, V] in their dtype, ``u_b`` [K+1] (random
    mode). The checks follow docs/contract.md ("Status"): first every draft id (and in random mode
    the drafted entries and explicit uniforms), then the rows the decision reads.
    """
    K, V = len(ids), q_b.shape[1]
    flags = Status.OK
    if any(not 0 <= x < V for x in ids):
        flags |= Status.BAD_DRAFT_ID
    if greedy:
        if flags:
            return int(flags), []
        out: list[int] = []
        for k in range(K + 1):
            row = q_b[k].to(torch.float64)
            if bad_values(row):
                return int(Status.BAD_TARGET_VALUE), []
            best = int(torch.argmax(row))  # ties -> smallest index
            if k == K or ids[k] != best:
                return 0, out + [best]
            out.append(ids[k])
        raise AssertionError("unreachable")

    assert u_b is not None
    flags = entry_flags(ids, p_b, q_b, u_b, explicit_uniforms)
    if flags:
        return int(flags), []

    out = []
    stop = K  # the bonus row unless a draft is rejected
    for k, x in enumerate(ids):
        p = 1.0 if p_b is None else float(p_b[k, x].to(torch.float64))
        if not accept_draft(u_b[k], p, float(q_b[k, x].to(torch.float64))):
            stop = k
            break
        out.append(x)
    q_row = q_b[stop]
    if bad_values(q_row):
        return int(Status.BAD_TARGET_VALUE), []
    if stop < K:
        p_row = None if p_b is None else p_b[stop]
        if p_row is not None and bad_values(p_row):
            return int(Status.BAD_DRAFT_VALUE), []
        r = residual(p_row, q_row, ids[stop])
    else:
        r = q_row.to(torch.float64)
    total = float(r.sum())
    if total > FLOAT32_MAX:
        return int(Status.ROW_SUM_OVERFLOW), []
    if total == 0.0:
        return int(Status.ZERO_ROW), []
    return 0, out + [inverse_cdf(r, u_b[K])]


def reference_verify(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    *,
    mode: str = "random",
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
    validate: str = "status",
    check_finite: bool | None = None,
    rule: str = "token",
) -> VerifyOutput:
    """The contract in float64. Same arguments and output as :meth:`specsample.Backend.verify`.

    ``rule="block"`` is :func:`specsample.reference_block.reference_verify_block`.

    Without ``uniforms`` it draws them with :func:`specsample.rng.draw_uniforms` (as the PyTorch
    backends do), so it consumes the generator exactly like them. Runs on the CPU; the output is
    returned on the inputs' device. ``status`` flags exactly the requests and bits every backend
    must flag (docs/contract.md, "Status").
    """
    level = resolve_validate(validate, check_finite, stacklevel=2)
    inputs = validate_inputs(
        draft_token_ids,
        draft_probs,
        target_probs,
        mode=mode,
        generator=generator,
        uniforms=uniforms,
        validate=level,
        rule=rule,
    )
    if rule == "block" and mode == "random":
        from .reference_block import verify_validated_block

        return verify_validated_block(inputs)
    if inputs.batch_size == 0:
        return empty_output(inputs)
    B, K = inputs.batch_size, inputs.num_draft
    greedy = mode == "greedy"
    ids = inputs.draft_token_ids.cpu().to(torch.int64)
    q_all = inputs.target_probs.cpu()
    p_all = None if inputs.draft_probs is None else inputs.draft_probs.cpu()
    u_all = None if greedy else reference_coins(inputs, K)

    token_ids = torch.full((B, K + 1), -1, dtype=torch.int64)
    num_emitted = torch.zeros(B, dtype=torch.int64)
    status = torch.zeros(B, dtype=torch.int32)
    for b in range(B):
        flags, tokens = _verify_request(
            ids[b].tolist(),
            None if p_all is None else p_all[b],
            q_all[b],
            None if u_all is None else u_all[b].tolist(),
            inputs.uniforms is not None,
            greedy,
        )
        status[b] = flags
        num_emitted[b] = len(tokens)
        if tokens:
            token_ids[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
    device = inputs.device
    return VerifyOutput(token_ids.to(device), num_emitted.to(device), status.to(device))
