"""Block verification (Sun et al., ICLR 2025, arXiv 2403.10444) in float64: the reference for chains.

Token-wise verification (:func:`specsample.reference_verify`) stops at the first rejected draft.
Block verification decides the accepted prefix jointly: it keeps a prefix weight, compares each
coin with a threshold that also credits the residual mass of the next position, and accepts the
longest prefix whose coin passed, so a later pass overrides an earlier failure. The rule, in this
project's indexing, is stated in docs/rules.md.

The per-request functions (:func:`block_weights`, :func:`block_thresholds`,
:func:`block_residual`, :func:`accepted_length`) work on plain Python sequences of numbers, so the
same code runs on floats (the reference) and on :class:`fractions.Fraction` (exact checks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .contract import VerifyInputs, VerifyOutput
from .reference import bad_values, entry_flags, inverse_cdf, reference_coins, reference_verify
from .status import FLOAT32_MAX, Status
from .validation import empty_output

Row = Sequence[Any]  # one distribution over the vocabulary: floats or Fractions
_VECTOR_MIN = 64  # rows at least this long are summed by torch (floats only; same bits)


def _one_hot(token: int, like: Row) -> list[Any]:
    zero, one = like[0] * 0, like[0] * 0 + 1
    return [one if j == token else zero for j in range(len(like))]


def draft_rows(draft_ids: Sequence[int], p_rows: Sequence[Row] | None, q_rows: Sequence[Row]):
    """The draft rows as given, or one-hot rows at the drafted tokens when ``p_rows`` is None."""
    if p_rows is not None:
        return [list(r) for r in p_rows]
    return [_one_hot(x, q_rows[k]) for k, x in enumerate(draft_ids)]


def block_weights(
    draft_ids: Sequence[int], p_rows: Sequence[Row] | None, q_rows: Sequence[Row]
) -> list[Any]:
    """Prefix weights ``w[0..K]``: ``w[0] = 1``, ``w[k+1] = min(1, w[k] q[k][x_k] / p[k][x_k])``.

    Args:
        draft_ids: ``[K]`` drafted tokens ``x_0..x_{K-1}``.
        p_rows: ``[K][V]`` draft rows, or None for a deterministic drafter (``p[k][x_k] = 1``).
        q_rows: ``[K+1][V]`` target rows.

    A drafted token of draft probability 0 gets weight 1 if ``w[k] q[k][x_k] > 0`` and 0
    otherwise (the limit of the ratio, as the token-wise rule ``u p < q`` does).
    """
    one = q_rows[0][0] * 0 + 1
    w = [one]
    for k, x in enumerate(draft_ids):
        p = one if p_rows is None else p_rows[k][x]
        num = w[-1] * q_rows[k][x]
        if p > 0:
            w.append(min(one, num / p))
        else:
            w.append(one if num > 0 else one * 0)
    return w


def residual_mass(weight: Any, p_row: Row, q_row: Row) -> Any:
    """``Z = sum_x max(0, weight * q_row[x] - p_row[x])``, summed in index order."""
    if isinstance(weight, float) and len(q_row) >= _VECTOR_MIN:
        # The same float64 products, differences and left-to-right sum as the loop below (a CPU
        # cumsum accumulates in order), bit for bit, without a Python step per vocabulary entry.
        if len(p_row) != len(q_row):
            raise ValueError(f"p_row has {len(p_row)} entries but q_row has {len(q_row)}")
        q = torch.tensor(q_row, dtype=torch.float64)
        terms = (q * weight - torch.tensor(p_row, dtype=torch.float64)).clamp_min_(0.0)
        return float(torch.cumsum(terms, 0)[-1])
    zero = weight * 0
    return sum((max(zero, weight * q - p) for p, q in zip(p_row, q_row, strict=True)), zero)


def block_thresholds(
    draft_ids: Sequence[int], p_rows: Sequence[Row] | None, q_rows: Sequence[Row]
) -> list[Any]:
    """The thresholds ``h[0..K-1]`` the coins ``u[0..K-1]`` are compared with.

    ``h[k] = Z / (Z + 1 - w[k+1])`` with ``Z = residual_mass(w[k+1], p[k+1], q[k+1])`` for
    ``k < K-1`` (1 where the denominator is 0), and ``h[K-1] = w[K]``. With ``p_rows`` None the
    draft row ``k+1`` is one-hot at ``x_{k+1}`` (for rows summing to one, ``Z = w (1 - q(x))``).
    """
    K = len(draft_ids)
    w = block_weights(draft_ids, p_rows, q_rows)
    p_full = draft_rows(draft_ids, p_rows, q_rows)
    one = w[0]
    h = []
    for k in range(K):
        if k == K - 1:
            h.append(w[K])
            continue
        z = residual_mass(w[k + 1], p_full[k + 1], q_rows[k + 1])
        denom = z + one - w[k + 1]
        h.append(z / denom if denom > 0 else one)
    return h


def accepted_length(uniforms: Sequence[float], thresholds: Sequence[Any]) -> int:
    """``tau = max{k + 1 : u[k] < h[k]}``, or 0 when no coin passes (a later pass wins)."""
    tau = 0
    for k, (u, h) in enumerate(zip(uniforms, thresholds, strict=True)):
        if u < h:
            tau = k + 1
    return tau


def block_residual(weight: Any, p_row: Row, q_row: Row) -> list[Any]:
    """``max(0, weight * q_row - p_row)`` over the vocabulary, unnormalized.

    Falls back to ``q_row`` when it sums to zero (as the token-wise residual does); the exact
    checks show that a request reaches a zero residual with probability zero.
    """
    zero = weight * 0
    r = [max(zero, weight * q - p) for p, q in zip(p_row, q_row, strict=True)]
    if sum(r, zero) == 0:
        return list(q_row)
    return r


def final_row(
    tau: int,
    draft_ids: Sequence[int],
    p_rows: Sequence[Row] | None,
    q_rows: Sequence[Row],
) -> list[Any]:
    """The row the last token is drawn from after accepting ``tau`` drafts.

    ``q[K]`` when ``tau = K``; otherwise ``block_residual(w[tau], p[tau], q[tau])``.
    """
    K = len(draft_ids)
    if tau == K:
        return list(q_rows[K])
    w = block_weights(draft_ids, p_rows, q_rows)
    p_full = draft_rows(draft_ids, p_rows, q_rows)
    return block_residual(w[tau], p_full[tau], q_rows[tau])


def verify_request_block(
    draft_ids: Sequence[int],
    p_rows: Sequence[Row] | None,
    q_rows: Sequence[Row],
    uniforms: Sequence[float],
) -> list[int]:
    """One request: the emitted tokens (``tau`` accepted drafts, then the drawn token).

    ``uniforms`` holds ``K+1`` coins: ``uniforms[k]`` is compared with ``h[k]``, ``uniforms[K]``
    draws the last token by the inverse CDF of docs/contract.md rule 3.
    """
    K = len(draft_ids)
    tau = accepted_length(uniforms[:K], block_thresholds(draft_ids, p_rows, q_rows))
    r = torch.tensor(final_row(tau, draft_ids, p_rows, q_rows), dtype=torch.float64)
    return list(draft_ids[:tau]) + [inverse_cdf(r, float(uniforms[K]))]


def _block_request(
    ids: list[int],
    p_b: torch.Tensor | None,
    q_b: torch.Tensor,
    u_b: list[float],
    explicit_uniforms: bool,
) -> tuple[int, list[int]]:
    """One request under block verification: ``(status flags, emitted tokens)``.

    ``ids`` [K], ``p_b`` [K, V] or None, ``q_b`` [K+1, V] in their dtype, ``u_b`` [K+1]. The
    checks follow docs/rules.md ("Status"): step 1 as for the token rule; step 2, every row the
    thresholds and residuals may read, rows ``0..K-1`` of ``q`` and ``p`` in full (both bits may
    be set); step 3, the row the last token is drawn from.
    """
    K = len(ids)
    flags = entry_flags(ids, p_b, q_b, u_b, explicit_uniforms)
    if flags:
        return int(flags), []
    if K > 0 and bad_values(q_b[:K]):
        flags |= Status.BAD_TARGET_VALUE
    if K > 0 and p_b is not None and bad_values(p_b):
        flags |= Status.BAD_DRAFT_VALUE
    if flags:
        return int(flags), []
    q_rows = q_b.to(torch.float64).tolist()
    p_rows = None if p_b is None else p_b.to(torch.float64).tolist()
    tau = accepted_length(u_b[:K], block_thresholds(ids, p_rows, q_rows))
    if tau == K and bad_values(q_b[K]):
        return int(Status.BAD_TARGET_VALUE), []
    r = torch.tensor(final_row(tau, ids, p_rows, q_rows), dtype=torch.float64)
    total = float(r.sum())
    if total > FLOAT32_MAX:
        return int(Status.ROW_SUM_OVERFLOW), []
    if total == 0.0:
        return int(Status.ZERO_ROW), []
    return 0, list(ids[:tau]) + [inverse_cdf(r, u_b[K])]


def verify_validated_block(inputs: VerifyInputs) -> VerifyOutput:
    """Block verification of validated random-mode inputs in float64, one request at a time.

    ``inputs`` as :func:`specsample.validation.validate_inputs` returns them. Returns the
    :class:`specsample.VerifyOutput` on the inputs' device, ``status`` as docs/rules.md defines.
    """
    if inputs.batch_size == 0:
        return empty_output(inputs)
    B, K = inputs.batch_size, inputs.num_draft
    ids = inputs.draft_token_ids.cpu().to(torch.int64)
    q_all = inputs.target_probs.cpu()
    p_all = None if inputs.draft_probs is None else inputs.draft_probs.cpu()
    u_all = reference_coins(inputs, K)

    token_ids = torch.full((B, K + 1), -1, dtype=torch.int64)
    num_emitted = torch.zeros(B, dtype=torch.int64)
    status = torch.zeros(B, dtype=torch.int32)
    for b in range(B):
        flags, tokens = _block_request(
            ids[b].tolist(),
            None if p_all is None else p_all[b],
            q_all[b],
            u_all[b].tolist(),
            inputs.uniforms is not None,
        )
        status[b] = flags
        num_emitted[b] = len(tokens)
        if tokens:
            token_ids[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
    device = inputs.device
    return VerifyOutput(token_ids.to(device), num_emitted.to(device), status.to(device))


def reference_verify_block(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    *,
    mode: str = "random",
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
    validate: str = "status",
) -> VerifyOutput:
    """Block verification in float64, one request at a time: ``reference_verify(..., rule="block")``.

    Args:
        draft_token_ids: ``[B, K]`` int32/int64 drafted tokens.
        draft_probs: ``[B, K, V]`` float32/float16/bfloat16 draft rows, or None for a deterministic
            drafter (``p = one-hot(x)``).
        target_probs: ``[B, K+1, V]`` target rows, same dtype; row ``K`` is the bonus row.
        mode: ``"random"`` (block verification) or ``"greedy"`` (argmax verification, where block
            and token-wise verification coincide: the result is :func:`reference_verify`'s).
        generator: draws the uniforms when ``uniforms`` is None, exactly as the PyTorch backends
            and :func:`reference_verify` do.
        uniforms: ``[B, K+1]`` float32 in ``[0, 1)``: ``uniforms[b, k]`` is draft ``k``'s coin,
            ``uniforms[b, K]`` draws the last token.
        validate: ``"status"`` (default; bad values flag their request in ``status``) or
            ``"full"`` (raise ``ValueError`` on any bad value first), as for ``verify()``.

    Returns:
        :class:`specsample.VerifyOutput` on the inputs' device: ``token_ids`` ``[B, K+1]`` int64
        (``num_emitted[b]`` tokens, then -1), ``num_emitted`` ``[B]`` int64 in ``1..K+1`` (0 for
        a flagged request), ``status`` ``[B]`` int32: the bits of :class:`specsample.Status` that
        every backend claiming ``"block"`` must set (docs/rules.md, "Status").

    The rule is lossless for rows that sum to one; other weights are used as given.
    """
    return reference_verify(
        draft_token_ids,
        draft_probs,
        target_probs,
        mode=mode,
        generator=generator,
        uniforms=uniforms,
        validate=validate,
        rule="block",
    )
