"""Helpers of the block-verification checks: the coupled comparison with the float64 reference.

Token-wise decisions ``u * p < q`` can be evaluated exactly in float64. A block threshold
``h_k = Z / (Z + 1 - w)`` is a ratio of full-vocabulary sums, which no fixed-precision backend
evaluates exactly, so a decision may differ from the reference's only where the coin lies within
:func:`specsample.conformance.check_common.cdf_epsilon` of the reference's threshold (recomputed in
float64 for that request); every other decision must match. The last token obeys the token checks'
rule: it may differ only where the inverse-CDF threshold lies within the same tolerance of a
cumulative boundary of the row sampled from.
"""

from __future__ import annotations

import torch
from specsample.contract import VerifyOutput
from specsample.reference import reference_verify
from specsample.reference_block import block_thresholds, final_row

from .check_common import cdf_epsilon, check_output, where
from .checks import CheckFailed, Target


def _request_rows(ids, draft, tgt, b):
    xs = ids[b].cpu().to(torch.int64).tolist()
    q_rows = tgt[b].cpu().to(torch.float64).tolist()
    p_rows = None if draft is None else draft[b].cpu().to(torch.float64).tolist()
    return xs, p_rows, q_rows


def _check_tau(label, b, got_tau, ref_tau, u_b, h, eps) -> int:
    """The backend's accepted length must follow from the reference's decisions, with flips only
    at near-ties; returns the number of near-tie flips used."""
    K = len(h)
    flips = 0
    bad: list[str] = []
    for k in range(K):
        want_pass = u_b[k] < h[k]
        if k == got_tau - 1:
            needed = True  # the backend's last passing coin
        elif k >= got_tau:
            needed = False  # every later coin failed
        else:
            continue  # coins before tau do not change tau
        if needed != want_pass:
            if abs(u_b[k] - h[k]) <= eps:
                flips += 1
            else:
                bad.append(
                    f"coin {k}: u={u_b[k]!r}, h={h[k]!r}, so it must "
                    f"{'pass' if want_pass else 'fail'}"
                )
    if bad:
        raise CheckFailed(
            f"block accept decision {where(label, b)}: the backend accepted {got_tau} drafts, the "
            f"reference {ref_tau} (tau = the last k+1 with u[k] < h[k]); {'; '.join(bad)} "
            f"(beyond the near-tie tolerance {eps:.3g})"
        )
    return flips


def compare_block_to_reference(
    target: Target,
    ids: torch.Tensor,
    draft: torch.Tensor | None,
    tgt: torch.Tensor,
    u: torch.Tensor,
    *,
    label: str,
    tolerance: bool = True,
    out: VerifyOutput | None = None,
) -> int:
    """Run ``rule="block"`` with uniforms ``u`` and compare with the float64 reference.

    Returns the number of proven near-tie differences (decisions or last tokens).
    """
    if out is None:
        out = target.verify(ids, draft, tgt, uniforms=u, rule="block")
    V = tgt.shape[-1]
    check_output(out, ids, V, tgt.device, label)
    ref = reference_verify(ids, draft, tgt, uniforms=u, rule="block")
    t_b, t_r = out.token_ids.cpu(), ref.token_ids.cpu()
    n_b, n_r = out.num_emitted.cpu(), ref.num_emitted.cpu()
    eps = cdf_epsilon(V) if tolerance else 0.0
    near = 0
    uu = u.cpu().to(torch.float64)
    for b in torch.nonzero((t_b != t_r).any(dim=1)).flatten().tolist():
        xs, p_rows, q_rows = _request_rows(ids, draft, tgt, b)
        K = len(xs)
        got_tau, ref_tau = int(n_b[b]) - 1, int(n_r[b]) - 1
        if got_tau != ref_tau:
            h = block_thresholds(xs, p_rows, q_rows)
            near += _check_tau(label, b, got_tau, ref_tau, uu[b, :K].tolist(), h, eps)
        r = torch.tensor(final_row(got_tau, xs, p_rows, q_rows), dtype=torch.float64)
        got = int(t_b[b, got_tau])
        cdf = torch.cumsum(r, 0)
        total = float(cdf[-1])
        thr = float(uu[b, K]) * total
        lo = float(cdf[got - 1]) if got > 0 else 0.0
        hi = float(cdf[got])
        what = (
            "the bonus token" if got_tau == K else f"the draw from max(0, w q - p) at row {got_tau}"
        )
        if r[got] <= 0:
            raise CheckFailed(
                f"block last token {where(label, b)}: {what}: the backend emitted {got}, which has "
                f"probability 0 in the row sampled from (reference token {int(t_r[b, got_tau])} "
                f"after {ref_tau} accepted)"
            )
        if got_tau == ref_tau and int(t_r[b, got_tau]) == got:
            continue
        if not lo - eps * total <= thr < hi + eps * total:
            raise CheckFailed(
                f"block inverse CDF {where(label, b)}: {what}: the backend emitted {got}, the "
                f"reference {int(t_r[b, min(ref_tau, K)])}; u*sum(r)={thr!r} lies outside token "
                f"{got}'s interval [{lo!r}, {hi!r}) beyond the tolerance {eps:.3g}*sum(r)"
            )
        near += 1
    return near
