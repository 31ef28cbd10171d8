"""Block verification for ``torch-loop``: the rule of docs/rules.md written out position by
position, one request at a time, with host reads (readable, not fast)."""

from __future__ import annotations

import torch
from specsample.status import FLOAT32_MAX, Status


def _bad(x: torch.Tensor) -> bool:
    """NaN, infinite or negative anywhere in ``x`` (one host read)."""
    return not bool(((x >= 0) & (x < float("inf"))).all().item())


def _draft_row(p_all: torch.Tensor | None, b: int, k: int, x: int, like: torch.Tensor):
    """Draft row ``k`` of request ``b`` in float64: one-hot at ``x`` when ``p_all`` is None."""
    if p_all is None:
        p = torch.zeros_like(like)
        p[x] = 1.0
        return p
    return p_all[b, k].to(torch.float64)


def block_request(
    b: int,
    xs: list[int],
    p_all: torch.Tensor | None,
    q_all: torch.Tensor,
    u: torch.Tensor,
) -> tuple[int, list[int]]:
    """Request ``b`` after step 1 of the status checks passed: ``(status flags, tokens)``.

    ``xs`` the K in-range drafted ids, ``p_all`` [B, K, V] or None, ``q_all`` [B, K+1, V],
    ``u`` [B, K+1]. Step 2 reads rows ``0..K-1`` of q and p in full, step 3 the final row.
    """
    K = len(xs)
    flags = Status.OK
    if K and _bad(q_all[b, :K]):
        flags |= Status.BAD_TARGET_VALUE
    if K and p_all is not None and _bad(p_all[b]):
        flags |= Status.BAD_DRAFT_VALUE
    if flags:
        return int(flags), []

    # 1. Prefix weights: w[k+1] = min(1, w[k] q_k(x_k) / p_k(x_k)).
    w = [1.0]
    for k, x in enumerate(xs):
        q = float(q_all[b, k, x].item())
        p = 1.0 if p_all is None else float(p_all[b, k, x].item())
        num = w[-1] * q
        w.append(min(1.0, num / p) if p > 0 else (1.0 if num > 0 else 0.0))

    # 2. Thresholds: h[k] = Z / (Z + 1 - w[k+1]) with Z the residual mass of row k+1; h[K-1] = w[K].
    h = []
    for k in range(K - 1):
        q_next = q_all[b, k + 1].to(torch.float64)
        p_next = _draft_row(p_all, b, k + 1, xs[k + 1], q_next)
        z = float(torch.clamp(w[k + 1] * q_next - p_next, min=0.0).sum().item())
        denom = z + 1.0 - w[k + 1]
        h.append(z / denom if denom > 0 else 1.0)
    if K:
        h.append(w[K])

    # 3. Accept the longest prefix whose coin passed (a later pass overrides earlier failures).
    tau = 0
    for k in range(K):
        if float(u[b, k].item()) < h[k]:
            tau = k + 1

    # 4. The row the last token is drawn from.
    q_row = q_all[b, tau].to(torch.float64)
    if tau == K:
        if _bad(q_row):
            return int(Status.BAD_TARGET_VALUE), []
        r = q_row
    else:
        p_row = _draft_row(p_all, b, tau, xs[tau], q_row)
        r = torch.clamp(w[tau] * q_row - p_row, min=0.0)
        if r.sum().item() == 0.0:
            r = q_row
    total = float(r.sum().item())
    if total > FLOAT32_MAX:
        return int(Status.ROW_SUM_OVERFLOW), []
    if total == 0.0:
        return int(Status.ZERO_ROW), []
    cdf = torch.cumsum(r, dim=0)
    threshold = float(u[b, K].item()) * cdf[-1].item()
    last = int((cdf > threshold).to(torch.int8).argmax().item())
    if cdf[last].item() <= threshold:  # rounding put the threshold at the total
        last = int(torch.nonzero(r > 0)[-1].item())
    return 0, xs[:tau] + [last]
