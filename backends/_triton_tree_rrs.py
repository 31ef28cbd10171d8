"""Recursive rejection sampling over siblings, for the ``triton`` tree kernel (``_triton_tree.py``).

Device functions called by :func:`specsample.backends._triton_tree.tree_kernel` in random mode with
``draft_probs`` (``draft_sampling`` with or without replacement); the rule is
:func:`specsample.reference_tree.reference_verify_tree`'s ``_rrs_step`` (docs/contract-trees.md).

At a position with children ``c_0 .. c_{m-1}`` (index order), draft row ``p`` (the first
child's) and target row ``q``, once ``c_0`` is rejected (decided on the drafted entries, read up
front) the residuals are, in float64 as the reference computes them::

    r_0 = max(0, q - p)                 (q when that sums to zero)
    q'_k = r_{k-1} / S_{k-1}            S_k = sum(r_k)
    p'_k = p, or p with c_0..c_{k-1}'s tokens zeroed / P_k (without replacement)
    r_k = max(0, q'_k - p'_k)           (q'_k when that sums to zero)

and ``c_k`` is accepted iff ``u_k * p'_k(x_k) < q'_k(x_k)``. No vocabulary-sized buffer is kept:
every ``r_k`` is a function of the loaded ``q``, ``p`` and the scalars ``S``, ``P`` and the
fallback flags of the earlier steps, so pass ``j`` over the row recomputes ``r_{j-1}`` element by
element (j - 1 cheap steps per element) and reduces what the decision on ``c_j`` needs: ``S_{j-1}``
(both candidates: the clamp and its fallback), ``P_j``, and the entries at ``x_j``. The scalars
live in registers as vectors indexed by the step. One pass per tried sibling, plus two for the last
draw (sums per tile, then the crossing tile again), as float32 tiles of the float64 row (the
inverse-CDF tolerance of the conformance checks covers that rounding). A single child rejected
draws from the float32 residual exactly as the chain kernel does, so a chain gives ``verify()``'s
tokens.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._triton_kernels import _f32, _pick_in_tile, _tile_sum
from ._triton_status import BAD_DRAFT, BAD_TARGET, OVERFLOW, ZERO_ROW

_FMAX = tl.constexpr(3.4028234663852886e38)  # largest float32


@triton.jit
def crossing_tile(cum, thr, tr, NT, NT_P2: tl.constexpr):
    """``(tile, sum before it)``: the first of the ``NT`` tiles (``tr`` indexes ``[NT_P2]``) whose
    running sum ``cum`` exceeds ``thr``; a threshold rounded past the row's end takes the last tile
    with a positive sum."""
    tv = tr < NT
    tc = tl.min(tl.where(tv & (cum > thr), tr, NT_P2), axis=0)
    tmax = tl.max(tl.where(tv, cum, 0.0), axis=0)
    tc = tl.where(tc == NT_P2, tl.min(tl.where(tv & (cum >= tmax), tr, NT_P2), axis=0), tc)
    return tc, tl.max(tl.where(tr < tc, cum, 0.0), axis=0)


@triton.jit
def first_siblings(par, real, nodes, N_P2: tl.constexpr):
    """``[N_P2]`` int32: for every node, the first real node with its parent (the node whose
    draft row the siblings share; ``N_P2`` when there is none): one ``[N_P2, N_P2]`` compare."""
    same = (par[:, None] == par[None, :]) & real[None, :]
    return tl.min(tl.where(same, nodes[None, :], N_P2), axis=1)


@triton.jit
def _pick(vec, steps, k):
    """``vec[k]`` of a register vector indexed by ``steps``."""
    return tl.sum(tl.where(steps == k, vec, 0), axis=0)


@triton.jit
def _candidates(q, p, offs, j, S, F, P, ktok, steps, WITHOUT: tl.constexpr):
    """One tile (float64 ``q``, ``p``) of ``r_{j-1}``'s two candidates: the clamp
    ``max(0, q'_{j-1} - p'_{j-1})`` and the fallback ``q'_{j-1}``; and ``p`` with the tokens of
    children ``0 .. j-2`` zeroed. Steps ``< j - 1`` use their recorded sums and flags."""
    a = tl.maximum(q - p, 0.0)
    alt = q
    pz = p
    for k in range(1, j):
        r = tl.where(_pick(F, steps, k - 1) != 0, alt, a)
        qc = r / _pick(S, steps, k - 1)
        pz = tl.where(offs == _pick(ktok, steps, k - 1), 0.0, pz)
        if WITHOUT:
            pk = _pick(P, steps, k)
            pc = tl.where(pk > 0.0, pz / tl.where(pk > 0.0, pk, 1.0), pz)
        else:
            pc = p
        a = tl.maximum(qc - pc, 0.0)
        alt = qc
    return a, alt, pz


@triton.jit
def _load64(q_row, p_row, offs, V):
    m = offs < V
    q = _f32(tl.load(q_row + offs, mask=m, other=0.0))
    p = _f32(tl.load(p_row + offs, mask=m, other=0.0))
    return q, p


@triton.jit
def _step_pass(
    q_row, p_row, V, j, x, S, F, P, ktok, steps, BLOCK: tl.constexpr, WITHOUT: tl.constexpr
):
    """Pass ``j`` over the row: ``(sum of the clamp, sum of the fallback, both at x, p(x), P_j,
    bad q, bad p)`` for the decision on child ``j`` (token ``x``)."""
    ar = tl.arange(0, BLOCK)
    z = tl.zeros([BLOCK], tl.float64).sum(axis=0)
    sa = z
    salt = z
    ax = z
    altx = z
    px = z
    pn = z
    qbad = j * 0
    pbad = j * 0
    drop = _pick(ktok, steps, j - 1)
    for t in range(0, tl.cdiv(V, BLOCK)):
        offs = t * BLOCK + ar
        q, p = _load64(q_row, p_row, offs, V)
        qbad = tl.maximum(qbad, tl.max(tl.where((q != q) | (q < 0.0) | (q > _FMAX), 1, 0), axis=0))
        pbad = tl.maximum(pbad, tl.max(tl.where((p != p) | (p < 0.0) | (p > _FMAX), 1, 0), axis=0))
        q = q.to(tl.float64)
        p = p.to(tl.float64)
        a, alt, pz = _candidates(q, p, offs, j, S, F, P, ktok, steps, WITHOUT)
        sa += tl.sum(a, axis=0)
        salt += tl.sum(alt, axis=0)
        hit = offs == x
        ax += tl.sum(tl.where(hit, a, 0.0), axis=0)
        altx += tl.sum(tl.where(hit, alt, 0.0), axis=0)
        px += tl.sum(tl.where(hit, p, 0.0), axis=0)
        if WITHOUT:
            pn += tl.sum(tl.where(offs == drop, 0.0, pz), axis=0)
    return sa, salt, ax, altx, px, pn, qbad, pbad


@triton.jit
def _last_draw(
    q_row,
    p_row,
    V,
    m,
    u,
    S,
    F,
    P,
    ktok,
    steps,
    NT_P2: tl.constexpr,
    BLOCK: tl.constexpr,
    WITHOUT: tl.constexpr,
):
    """Every child rejected: the last token from ``r_{m-1}`` by the inverse CDF with coin ``u``.
    Returns ``(token, flags)`` (``ROW_SUM_OVERFLOW`` / ``ZERO_ROW`` from the float64 sum)."""
    ar = tl.arange(0, BLOCK)
    tr = tl.arange(0, NT_P2)
    NT = tl.cdiv(V, BLOCK)
    z = tl.zeros([NT_P2], tl.float64)
    sa = z.sum(axis=0)
    salt = sa
    run_a = sa
    run_alt = sa
    cum_a = z
    cum_alt = z
    for t in range(0, NT):
        offs = t * BLOCK + ar
        q, p = _load64(q_row, p_row, offs, V)
        a, alt, _ = _candidates(
            q.to(tl.float64), p.to(tl.float64), offs, m, S, F, P, ktok, steps, WITHOUT
        )
        sa += tl.sum(a, axis=0)
        salt += tl.sum(alt, axis=0)
        run_a += _tile_sum(a.to(tl.float32))
        run_alt += _tile_sum(alt.to(tl.float32))
        cum_a = tl.where(tr == t, run_a, cum_a)
        cum_alt = tl.where(tr == t, run_alt, cum_alt)
    use_alt = sa == 0.0
    total64 = tl.where(use_alt, salt, sa)
    flags = tl.where(total64 > _FMAX, OVERFLOW, tl.where(total64 == 0.0, ZERO_ROW, 0))
    token = m * 0
    if flags == 0:
        cum = tl.where(use_alt, cum_alt, cum_a)
        total = tl.where(use_alt, run_alt, run_a)
        thr = u.to(tl.float64) * total
        tc, tile_base = crossing_tile(cum, thr, tr, NT, NT_P2)
        offs = tc * BLOCK + ar
        q, p = _load64(q_row, p_row, offs, V)
        a, alt, _ = _candidates(
            q.to(tl.float64), p.to(tl.float64), offs, m, S, F, P, ktok, steps, WITHOUT
        )
        r = tl.where(use_alt, alt, a).to(tl.float32)
        token = tc * BLOCK + _pick_in_tile(r, ar, offs < V, tile_base, thr, BLOCK)
    return token, flags


@triton.jit
def residual_draw(q_row, p_row, V, u, NT_P2: tl.constexpr, BLOCK: tl.constexpr):
    """One child rejected: the last token from the float32 residual ``max(0, q - p)`` (``q`` when
    that sums to zero), as the chain kernel draws it. Returns ``(token, flags)``: bad target
    values first, then bad draft values, then the sum's ``ROW_SUM_OVERFLOW`` / ``ZERO_ROW``."""
    ar = tl.arange(0, BLOCK)
    tr = tl.arange(0, NT_P2)
    NT = tl.cdiv(V, BLOCK)
    run_r = tl.zeros([NT_P2], tl.float64).sum(axis=0)
    run_q = run_r
    cum_r = tl.zeros([NT_P2], tl.float64)
    cum_q = cum_r
    zero = (u * 0.0).to(tl.int32)  # a tensor: V may be specialized to a constant
    qbad = zero
    pbad = zero
    for t in range(0, NT):
        offs = t * BLOCK + ar
        q, p = _load64(q_row, p_row, offs, V)
        qbad = tl.maximum(qbad, tl.max(tl.where((q != q) | (q < 0.0) | (q > _FMAX), 1, 0), axis=0))
        pbad = tl.maximum(pbad, tl.max(tl.where((p != p) | (p < 0.0) | (p > _FMAX), 1, 0), axis=0))
        run_r += _tile_sum(tl.maximum(q - p, 0.0))
        run_q += _tile_sum(q)
        cum_r = tl.where(tr == t, run_r, cum_r)
        cum_q = tl.where(tr == t, run_q, cum_q)
    use_q = run_r == 0.0
    total = tl.where(use_q, run_q, run_r)
    flags = tl.where(
        qbad > 0,
        BAD_TARGET,
        tl.where(
            pbad > 0,
            BAD_DRAFT,
            tl.where(total > _FMAX, OVERFLOW, tl.where(total == 0.0, ZERO_ROW, 0)),
        ),
    )
    token = zero
    if flags == 0:
        cum = tl.where(use_q, cum_q, cum_r)
        thr = u.to(tl.float64) * total
        tc, tile_base = crossing_tile(cum, thr, tr, NT, NT_P2)
        offs = tc * BLOCK + ar
        q, p = _load64(q_row, p_row, offs, V)
        r = tl.where(use_q, q, tl.maximum(q - p, 0.0))
        token = tc * BLOCK + _pick_in_tile(r, ar, offs < V, tile_base, thr, BLOCK)
    return token, flags


@triton.jit
def siblings(
    q_row,
    p_row,
    V,
    u,
    u_last,
    kids,
    tok,
    nodes,
    N_P2: tl.constexpr,
    NT_P2: tl.constexpr,
    BLOCK: tl.constexpr,
    WITHOUT: tl.constexpr,
):
    """Children ``1 .. m-1`` of a position whose first child was rejected (``m >= 2``).

    ``u`` [N_P2] the coins by node. Returns ``(accepted node or -1, last token, flags)``.
    """
    steps = nodes
    ktok = tl.zeros([N_P2], tl.int64)
    knode = tl.full([N_P2], N_P2, tl.int32)
    c = tl.min(tl.where(kids, nodes, N_P2), axis=0)
    m = c * 0
    while c < N_P2:  # the children ranked in index order
        ktok = tl.where(steps == m, tl.sum(tl.where(nodes == c, tok, 0), axis=0), ktok)
        knode = tl.where(steps == m, c, knode)
        c = tl.min(tl.where(kids & (nodes > c), nodes, N_P2), axis=0)
        m += 1
    S = tl.zeros([N_P2], tl.float64)
    P = tl.zeros([N_P2], tl.float64)
    F = tl.zeros([N_P2], tl.int32)
    hit = m * 0 - 1
    token = m * 0
    flags = m * 0
    j = m * 0 + 1
    while j < m:
        x = _pick(ktok, steps, j)
        sa, salt, ax, altx, px, pn, qbad, pbad = _step_pass(
            q_row, p_row, V, j, x, S, F, P, ktok, steps, BLOCK, WITHOUT
        )
        fj = sa == 0.0
        sj = tl.where(fj, salt, sa)
        S = tl.where(steps == j - 1, sj, S)
        F = tl.where(steps == j - 1, tl.where(fj, 1, 0), F)
        P = tl.where(steps == j, pn, P)
        if j == 1:  # the rows are read whole for the first time: their values are checked
            flags = tl.where(qbad > 0, BAD_TARGET, tl.where(pbad > 0, BAD_DRAFT, 0))
        flags = tl.where((flags == 0) & (sj == 0.0), ZERO_ROW, flags)
        qcur = tl.where(fj, altx, ax) / tl.where(sj == 0.0, 1.0, sj)
        if WITHOUT:
            pcur = tl.where(pn > 0.0, px / tl.where(pn > 0.0, pn, 1.0), px)
        else:
            pcur = px
        node = _pick(knode, steps, j)
        uj = tl.sum(tl.where(nodes == node, u, 0.0), axis=0).to(tl.float64)
        take = (flags == 0) & (uj * pcur < qcur)
        hit = tl.where(take, node, hit)
        j = tl.where(take | (flags != 0), m + 1, j + 1)
    if (hit < 0) & (flags == 0):
        token, flags = _last_draw(
            q_row, p_row, V, m, u_last, S, F, P, ktok, steps, NT_P2, BLOCK, WITHOUT
        )
    return hit, token, flags
