"""The ``triton`` backend's tree kernel: one ``@triton.jit`` launch per ``verify_tree`` call.

Imported lazily by :mod:`specsample.backends.triton_backend` (it imports triton). The rules are
defined by :func:`specsample.reference_tree.reference_verify_tree` (docs/contract-trees.md); this
kernel implements greedy mode, the random target-only rule (``draft_probs=None``) and recursive
rejection sampling with draft probabilities (siblings drawn with or without replacement; the
sibling steps are in ``_triton_tree_rrs.py``).

Grid: ``(B, C)``: ``C`` programs per request in greedy mode and under the target-only rule
(:func:`tree_chunks`), each walking the same path over its share of the rows, else one. A program
holds the request's tree in registers as
vectors over the ``N`` nodes (tokens, parents, the drafted entries ``q[parent position, token]``,
the coins) and walks from the root:

1. Structure, before any probability is read: ``num_nodes`` in ``0..N``, every real node's parent
   ``-1`` or an earlier node (``BAD_TREE``); when ``max_depth < num_nodes`` the depths (each
   node's ``max_depth``-th ancestor, one vector gather per level); under the target-only and
   without-replacement rules, repeated sibling tokens (``REPEATED_SIBLING``; the nodes against 16
   earlier nodes at a time). No step loops over the nodes one by one. The children of a position are the real nodes whose parent it
   is: a vector compare, no layout is built.
2. Values read up front: the real nodes' ids (``BAD_DRAFT_ID``); in random mode the drafted entries
   and the coins (``BAD_TARGET_VALUE``, ``BAD_UNIFORM``), with draft probabilities also each node's
   entry in its first sibling's draft row (``BAD_DRAFT_VALUE``).
3. The walk. Greedy: the argmax of the position's row over ``BLOCK`` tiles (smallest id on ties;
   a bad value flags the request), then the first child holding it. With ``C > 1`` the child
   that can be the argmax comes from the drafted entries (the largest, smallest token on ties);
   each program reads its tiles of the row, records their maximum and stops where they refute
   that child, and the last program to finish takes the walk to the least stop and the token to
   that row's argmax over every program's records. Target-only: the first
   child's coin walks the raw CDF of the children's entries in node order, in float64 and one
   child at a time (the reference's order of additions: its decisions are matched bit for bit).
   With draft probabilities: the first child is accepted iff ``u * p(x) < q(x)`` on the drafted
   entries (float64, as ``verify()``); after a rejection the later children are decided on the
   residual rows, recomputed per pass in float64 (``_triton_tree_rrs.py``).
4. The last token (random mode): by the inverse CDF of the stop position's row with its children's
   tokens removed (the row itself when that leaves nothing), with the last coin. Pass 1 keeps the
   running sum after each tile in registers (float32 tile sums, float64 running sums, as the chain
   kernel does); the pick re-reads the one tile where the threshold is crossed. With ``C > 1`` each
   program writes its tiles' float64 sums to the workspace and the last of the request's programs
   to finish (an atomic counter, reset by it) adds them in tile order and picks. With draft
   probabilities the row is the float32 residual ``max(0, q - p)`` after one rejected child (the
   chain kernel's), the last float64 residual (as float32 tiles) after several.

Randomness: the chain kernel's Philox stream, counter ``offset + b * (N+1) + i`` for node i's coin
and ``i = N`` for the last draw, so a chain draws exactly ``verify()``'s coins.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import _triton_tree_rrs as _rrs
from ._triton_kernels import _f32, _pick_in_tile, _tile_sum, _uniform
from ._triton_status import (
    BAD_DRAFT,
    BAD_ID,
    BAD_TARGET,
    BAD_TREE,
    BAD_UNIFORM,
    OVERFLOW,
    REPEATED,
    ZERO_ROW,
)

_BIG = tl.constexpr(2147483647)
_FMAX = tl.constexpr(3.4028234663852886e38)  # largest float32


@triton.jit
def _drop_tokens(r, offs, base, tok, drop, nodes, N_P2: tl.constexpr, BLOCK: tl.constexpr):
    """The tile ``r`` (float32, tokens ``base .. base + BLOCK - 1``) with the tokens of the nodes
    in ``drop`` set to zero; one pass per such token that falls in this tile."""
    inr = drop & (tok >= base) & (tok < base + BLOCK)
    k = tl.min(tl.where(inr, nodes, N_P2), axis=0)
    while k < N_P2:
        x = tl.sum(tl.where(nodes == k, tok, 0), axis=0)
        r = tl.where(offs == x, 0.0, r)
        k = tl.min(tl.where(inr & (nodes > k), nodes, N_P2), axis=0)
    return r


@triton.jit
def _too_deep(par_row, real, nodes, D):
    """1 when a real node lies deeper than ``D`` (the root's children at depth 1), else 0, for a
    tree whose parents are valid (-1 or an earlier node): node i is too deep iff its D-th ancestor
    (the 0-th is i) is a node. ``D`` vector gathers from the parents in memory (``par_row``, L1
    hits), one per level, and no reduction per node."""
    anc = tl.where(real, nodes, -1).to(tl.int64)
    for _ in range(0, D):  # anc: each node's ancestor that many levels up, or -1
        anc = tl.load(par_row + anc, mask=anc >= 0, other=-1)
    return tl.max(tl.where(anc >= 0, 1, 0), axis=0)


@triton.jit
def _repeats_sibling(ids_row, par_row, par, tok, real, nodes, n, JB: tl.constexpr):
    """1 when a real node has an earlier sibling with its token, else 0: the nodes against ``JB``
    columns of earlier nodes at a time, the columns read from memory (no per-node reduction)."""
    jr = tl.arange(0, JB)
    rep = n * 0
    for j0 in range(0, n, JB):
        cj = j0 + jr
        mj = cj < n
        pj = tl.load(par_row + cj, mask=mj, other=-2)
        tj = tl.load(ids_row + cj, mask=mj, other=-1).to(tl.int64)
        same = (real[:, None] & mj[None, :]) & (cj[None, :] < nodes[:, None])
        same = same & (par[:, None] == pj[None, :]) & (tok[:, None] == tj[None, :])
        rep = tl.maximum(rep, tl.max(tl.max(tl.where(same, 1, 0), axis=1), axis=0))
    return rep


@triton.jit
def _range_argmax(row, V, t0, t1, BLOCK: tl.constexpr):
    """``(max, argmax, bad)`` of a target row over its tiles ``t0 .. t1 - 1``: the largest value
    (float32), the smallest id holding it, and 1 when those tiles hold a NaN, infinite or negative
    value."""
    ar = tl.arange(0, BLOCK)
    m_run = float("-inf")
    i_run = 0
    rbad = 0
    for t in range(t0, t1):
        offs = t * BLOCK + ar
        v = _f32(tl.load(row + offs, mask=offs < V, other=float("-inf")))
        tm = tl.max(v, axis=0)
        ti = tl.min(tl.where(v == tm, offs, _BIG), axis=0)
        upd = tm > m_run  # strict: an earlier tile keeps a tie
        i_run = tl.where(upd, ti, i_run)
        m_run = tl.where(upd, tm, m_run)
        rbad = tl.maximum(
            rbad,
            tl.max(tl.where((offs < V) & ((v != v) | (v < 0.0) | (v > _FMAX)), 1, 0), axis=0),
        )
    return m_run, i_run, rbad


@triton.jit
def _greedy_combine(ws, C, D_P2: tl.constexpr, NT_P2: tl.constexpr):
    """The last program of a split greedy walk: ``(s, token, bad)`` from the ``C`` programs'
    records at ``ws`` (``3 D_P2 + 1`` float64 each: per depth the tiles' maximum, its smallest id,
    the bad bit; then the depth the program stopped at). The walk stops at the least of those
    depths; the token is the argmax of that row over every program's tiles (smallest id on ties)."""
    cr = tl.arange(0, NT_P2)
    cm = cr < C
    rec = ws + cr * (3 * D_P2 + 1)
    stop = tl.load(rec + 3 * D_P2, mask=cm, other=1e9, cache_modifier=".cg")
    s = tl.min(stop, axis=0).to(tl.int32)
    m = tl.load(rec + s, mask=cm, other=float("-inf"), cache_modifier=".cg")
    i = tl.load(rec + D_P2 + s, mask=cm, other=0.0, cache_modifier=".cg")
    bad = tl.load(rec + 2 * D_P2 + s, mask=cm, other=0.0, cache_modifier=".cg")
    top = tl.max(m, axis=0)
    token = tl.min(tl.where(cm & (m == top), i, 1e18), axis=0).to(tl.int64)
    return s, token, tl.where(tl.max(bad, axis=0) > 0.0, 1, 0)


@triton.jit
def _draw(
    q_row, V, u, tok, drop, nodes, N_P2: tl.constexpr, NT_P2: tl.constexpr, BLOCK: tl.constexpr
):
    """The last token from ``q_row`` without the tokens of the nodes in ``drop`` (the row itself
    when that sums to zero), by the inverse CDF with the coin ``u``, in one program. Returns
    ``(token, flags)``: ``BAD_TARGET_VALUE`` for a bad row, ``ROW_SUM_OVERFLOW`` / ``ZERO_ROW`` for
    its sum."""
    tr = tl.arange(0, NT_P2)
    NT = tl.cdiv(V, BLOCK)
    run_r = tl.zeros([NT_P2], tl.float64).sum(axis=0)
    run_q = run_r
    cum_r = tl.zeros([NT_P2], tl.float64)
    cum_q = cum_r
    qbad = 0
    for t in range(0, NT):
        r_sum, q_sum, bad = _tile_sums(q_row, V, t, tok, drop, nodes, N_P2, BLOCK)
        qbad = tl.maximum(qbad, bad)
        run_r += r_sum
        run_q += q_sum
        cum_r = tl.where(tr == t, run_r, cum_r)
        cum_q = tl.where(tr == t, run_q, cum_q)
    return _draw_pick(
        q_row, V, u, tok, drop, nodes, run_r, run_q, cum_r, cum_q, qbad, N_P2, NT_P2, BLOCK
    )


@triton.jit
def _tile_sums(q_row, V, t, tok, drop, nodes, N_P2: tl.constexpr, BLOCK: tl.constexpr):
    """Tile ``t`` of ``q_row``: its float64 sums (:func:`_tile_sum`) without and with the tokens
    of the nodes in ``drop``, and 1 (int32) when it holds a NaN, infinite or negative value."""
    offs = t * BLOCK + tl.arange(0, BLOCK)
    q = _f32(tl.load(q_row + offs, mask=offs < V, other=0.0))
    bad = tl.max(tl.where((q != q) | (q < 0.0) | (q > _FMAX), 1, 0), axis=0)
    r = _drop_tokens(q, offs, t * BLOCK, tok, drop, nodes, N_P2, BLOCK)
    return _tile_sum(r), _tile_sum(q), bad


@triton.jit
def _draw_pick(
    q_row,
    V,
    u,
    tok,
    drop,
    nodes,
    run_r,
    run_q,
    cum_r,
    cum_q,
    qbad,
    N_P2: tl.constexpr,
    NT_P2: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """:func:`_draw`'s end, from the row's sums: ``run_r`` / ``run_q`` the float64 totals without
    and with the dropped tokens, ``cum_r`` / ``cum_q`` ``[NT_P2]`` the running totals after each
    tile, ``qbad`` the bad-value bit. Re-reads the one tile where the threshold is crossed."""
    ar = tl.arange(0, BLOCK)
    tr = tl.arange(0, NT_P2)
    NT = tl.cdiv(V, BLOCK)
    use_q = run_r == 0.0
    total = tl.where(use_q, run_q, run_r)
    cum = tl.where(use_q, cum_q, cum_r)
    flags = tl.where(
        qbad > 0,
        BAD_TARGET,
        tl.where(total > _FMAX, OVERFLOW, tl.where(total == 0.0, ZERO_ROW, 0)),
    )
    token = u.to(tl.int32) * 0
    if flags == 0:
        thr = u.to(tl.float64) * total
        tc, tile_base = _rrs.crossing_tile(cum, thr, tr, NT, NT_P2)
        offs = tc * BLOCK + ar
        m = offs < V
        q = _f32(tl.load(q_row + offs, mask=m, other=0.0))
        r = tl.where(use_q, q, _drop_tokens(q, offs, tc * BLOCK, tok, drop, nodes, N_P2, BLOCK))
        token = tc * BLOCK + _pick_in_tile(r, ar, m, tile_base, thr, BLOCK)
    return token, flags


@triton.jit
def _draw_part(
    q_row, V, t0, t1, c, tok, drop, nodes, ws_row, N_P2: tl.constexpr, NT_P2: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """One program's share of a split draw: tiles ``t0 .. t1 - 1`` of ``q_row``. Their float64 tile
    sums without and with the dropped tokens go to ``ws_row[t]`` and ``ws_row[NT_P2 + t]``, the
    bad-value bit of chunk ``c`` to ``ws_row[2 NT_P2 + c]``."""
    qbad = 0
    for t in range(t0, t1):
        r_sum, q_sum, bad = _tile_sums(q_row, V, t, tok, drop, nodes, N_P2, BLOCK)
        qbad = tl.maximum(qbad, bad)
        tl.store(ws_row + t, r_sum)
        tl.store(ws_row + NT_P2 + t, q_sum)
    tl.store(ws_row + 2 * NT_P2 + c, qbad.to(tl.float64))


@triton.jit
def _draw_combine(
    q_row, V, u, C, tok, drop, nodes, ws_row, N_P2: tl.constexpr, NT_P2: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """The last program of a split draw: the running totals from every chunk's tile sums (added
    in tile order, as :func:`_draw` adds them), then :func:`_draw_pick`."""
    tr = tl.arange(0, NT_P2)
    tv = tr < tl.cdiv(V, BLOCK)
    rs = tl.load(ws_row + tr, mask=tv, other=0.0, cache_modifier=".cg")
    qs = tl.load(ws_row + NT_P2 + tr, mask=tv, other=0.0, cache_modifier=".cg")
    bad = tl.load(ws_row + 2 * NT_P2 + tr, mask=tr < C, other=0.0, cache_modifier=".cg")
    cum_r = tl.cumsum(rs, axis=0)
    cum_q = tl.cumsum(qs, axis=0)
    run_r = tl.max(tl.where(tr == NT_P2 - 1, cum_r, 0.0), axis=0)
    run_q = tl.max(tl.where(tr == NT_P2 - 1, cum_q, 0.0), axis=0)
    qbad = tl.where(tl.max(bad, axis=0) > 0.0, 1, 0)
    return _draw_pick(
        q_row, V, u, tok, drop, nodes, run_r, run_q, cum_r, cum_q, qbad, N_P2, NT_P2, BLOCK
    )


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def tree_kernel(
    ids_ptr,  # [B, N] int32/int64
    par_ptr,  # [B, N] int64
    cnt_ptr,  # [B] int64: num_nodes
    q_ptr,  # [B, N+1, V]
    p_ptr,  # [B, N, V] (unused when not HAS_P)
    u_ptr,  # [B, N+1] float32 (unused when not HAS_U)
    seed_ptr,  # [1] int64 (unused when not SEED_FROM_PTR)
    tok_ptr,  # [B, D+1] int64 out
    acc_ptr,  # [B, D] int64 out
    num_ptr,  # [B] int64 out
    st_ptr,  # [B] int32 out: status bits
    wsf_ptr,  # float64 scratch when C > 1: greedy [B, C, 3 D_P2 + 1], target-only [B, 3 NT_P2]
    ctr_ptr,  # [B] int32 zeroed counters when C > 1 (each request's last program resets its own)
    seed_lo,
    seed_hi,
    off_lo,
    off_hi,  # Philox key and base counter, as 32-bit halves (signed int32 bit patterns)
    V,
    N,
    D,
    C,  # programs per request (grid axis 1): > 1 only in greedy mode and for the target-only rule
    TPC,  # tiles of a row per program when C > 1
    N_P2: tl.constexpr,  # power of two > N
    D_P2: tl.constexpr,  # power of two > min(D, N): the longest possible path, and the token
    NT_P2: tl.constexpr,  # power of two >= the tiles of a row
    BLOCK: tl.constexpr,
    GREEDY: tl.constexpr,
    HAS_U: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr,
    DISTINCT: tl.constexpr,  # the rule needs distinct sibling tokens
    HAS_P: tl.constexpr = False,  # random mode with draft probabilities
    WITHOUT: tl.constexpr = False,  # siblings drawn without replacement
):
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    b64 = b.to(tl.int64)
    nodes = tl.arange(0, N_P2)
    n64 = tl.load(cnt_ptr + b)
    n_bad = (n64 < 0) | (n64 > N)
    n = tl.where(n_bad, 0, n64).to(tl.int32)  # checked before the cast: no wrap-around
    real = (nodes < n) & (nodes < N)
    par = tl.load(par_ptr + b64 * N + nodes, mask=real, other=-1)
    tok = tl.load(ids_ptr + b64 * N + nodes, mask=nodes < N, other=0).to(tl.int64)

    # 1. Structure (no probability is read before it is known to be valid).
    tree_bad = tl.where(
        n_bad, 1, tl.max(tl.where(real & ((par < -1) | (par >= nodes)), 1, 0), axis=0)
    )
    if (tree_bad == 0) & (D < n):
        tree_bad = _too_deep(par_ptr + b64 * N, real, nodes, D)
    flags = tl.where(tree_bad > 0, BAD_TREE, 0)
    if DISTINCT:
        if tree_bad == 0:
            rep = _repeats_sibling(
                ids_ptr + b64 * N, par_ptr + b64 * N, par, tok, real, nodes, n, 16
            )
            flags = tl.where(rep > 0, REPEATED, flags)
    # a vector compare: the interpreter gives a scalar compare's mask the wrong dtype
    ok = real & ((nodes * 0 + flags) == 0)
    id_ok = (tok >= 0) & (tok < V)
    vflags = tl.where(tl.max(tl.where(ok & ~id_ok, 1, 0), axis=0) > 0, BAD_ID, 0)
    live = ok & id_ok

    q_base = b64 * (N + 1)
    ptok = tl.full([D_P2], -1, tl.int64)  # tokens of the accepted path
    pnode = tl.full([D_P2], -1, tl.int64)  # its nodes
    dr = tl.arange(0, D_P2)
    s = b * 0  # accepted so far
    pos = b * 0  # the walk's position: 0 the root, i + 1 node i
    token = b64 * 0
    writer = chunk == 0  # the program that writes the request's output
    if GREEDY:
        flags = tl.where(flags == 0, vflags, flags)
        done = tl.where(flags != 0, 1, 0)
        if C > 1:
            # Split: each program reads its tiles of every row along the path. The child that can
            # be the argmax is known from the drafted entries (the largest, smallest token on
            # ties); a program stops where its tiles refute it (a larger value, or an equal one at
            # a smaller id), hold a bad value, or the position has no child. Every program walks
            # the same path up to the first such stop of any, which is where the walk stops.
            qx = _f32(tl.load(q_ptr + (q_base + par + 1) * V + tok, mask=live, other=0.0))
            t0 = chunk * TPC
            t1 = tl.minimum(t0 + TPC, tl.cdiv(V, BLOCK))
            ws_row = wsf_ptr + (b64 * C + chunk) * (3 * D_P2 + 1)
            if done == 0:
                while done == 0:
                    kids = live & (par == pos - 1)
                    vmax = tl.max(tl.where(kids, qx, float("-inf")), axis=0)
                    tstar = tl.min(tl.where(kids & (qx == vmax), tok, V), axis=0)
                    cand = tl.min(tl.where(kids & (tok == tstar), nodes, N_P2), axis=0)
                    m, i, rbad = _range_argmax(q_ptr + (q_base + pos) * V, V, t0, t1, BLOCK)
                    tl.store(ws_row + s, m.to(tl.float64))
                    tl.store(ws_row + D_P2 + s, i.to(tl.float64))
                    tl.store(ws_row + 2 * D_P2 + s, rbad.to(tl.float64))
                    refuted = (m > vmax) | ((m == vmax) & (i < tstar))
                    take = (rbad == 0) & (cand < N_P2) & ~refuted
                    ptok = tl.where(take & (dr == s), tstar, ptok)
                    pnode = tl.where(take & (dr == s), cand.to(tl.int64), pnode)
                    s = tl.where(take, s + 1, s)
                    pos = tl.where(take, cand + 1, pos)
                    done = tl.where(take, 0, 1)
                tl.store(ws_row + 3 * D_P2, s.to(tl.float64))
                tl.debug_barrier()
                prev = tl.atomic_add(ctr_ptr + b, 1, sem="acq_rel")
                writer = prev == C - 1
                if writer:
                    tl.store(ctr_ptr + b, 0)
                    s, token, gbad = _greedy_combine(wsf_ptr + b64 * C * (3 * D_P2 + 1), C,
                                                     D_P2, NT_P2)  # fmt: skip
                    flags = tl.where(gbad > 0, BAD_TARGET, flags)
        else:
            while done == 0:
                _, best, rbad = _range_argmax(
                    q_ptr + (q_base + pos) * V, V, 0, tl.cdiv(V, BLOCK), BLOCK
                )
                c = tl.min(tl.where(live & (par == pos - 1) & (tok == best), nodes, N_P2), axis=0)
                take = (rbad == 0) & (c < N_P2)
                flags = tl.where(rbad > 0, BAD_TARGET, flags)
                ptok = tl.where(take & (dr == s), best.to(tl.int64), ptok)
                pnode = tl.where(take & (dr == s), c.to(tl.int64), pnode)
                s = tl.where(take, s + 1, s)
                pos = tl.where(take, c + 1, pos)
                token = tl.where(take, token, best.to(tl.int64))
                done = tl.where(take, 0, 1)
    else:
        # 2. The values read up front: drafted entries in the parent's row, the coins.
        qx = _f32(tl.load(q_ptr + (q_base + par + 1) * V + tok, mask=live, other=0.0))
        vflags = vflags | tl.where(
            tl.max(tl.where(live & ((qx != qx) | (qx < 0.0) | (qx > _FMAX)), 1, 0), axis=0) > 0,
            BAD_TARGET,
            0,
        )
        if HAS_P:  # node i's drafted entry in its first sibling's draft row
            fs = _rrs.first_siblings(par, real, nodes, N_P2)
            px = _f32(tl.load(p_ptr + (b64 * N + fs) * V + tok, mask=live, other=1.0))
            pbad = tl.max(tl.where(live & ((px != px) | (px < 0.0) | (px > _FMAX)), 1, 0), axis=0)
            vflags = vflags | tl.where(pbad > 0, BAD_DRAFT, 0)
        else:
            px = qx * 0.0 + 1.0
        if HAS_U:
            u = tl.load(u_ptr + b64 * (N + 1) + nodes, mask=nodes <= N, other=0.0)
            u_bad = (u != u) | (u < 0.0) | (u >= 1.0)
            read = ok | (nodes == N)
            vflags = vflags | tl.where(
                tl.max(tl.where(read & u_bad, 1, 0), axis=0) > 0, BAD_UNIFORM, 0
            )
        else:
            if SEED_FROM_PTR:
                sd = tl.load(seed_ptr)
                key_lo = sd.to(tl.uint32)
                key_hi = (sd >> 32).to(tl.uint32)
                off = b64 * 0
            else:
                key_lo = seed_lo.to(tl.uint32, bitcast=True)
                key_hi = seed_hi.to(tl.uint32, bitcast=True)
                off = (off_hi.to(tl.int64) << 32) | off_lo.to(tl.uint32, bitcast=True).to(tl.int64)
            u = _uniform(key_lo, key_hi, off + b64 * (N + 1) + nodes)
        flags = tl.where(flags == 0, vflags, flags)
        u_last = tl.sum(tl.where(nodes == N, u, 0), axis=0)
        done = tl.where(flags != 0, 1, 0)
        while done == 0:
            kids = live & (par == pos - 1)
            c = tl.min(tl.where(kids, nodes, N_P2), axis=0)
            u0 = tl.sum(tl.where(nodes == c, u, 0), axis=0).to(tl.float64)
            row = q_ptr + (q_base + pos) * V
            hit = c * 0 - 1
            t = c * 0
            f = c * 0
            if HAS_P:
                # 3'. Recursive rejection sampling: the first child on its drafted entries, the
                # later ones on the residual rows (_triton_tree_rrs.py).
                if c < N_P2:
                    p0 = tl.sum(tl.where(nodes == c, px, 0), axis=0).to(tl.float64)
                    q0 = tl.sum(tl.where(nodes == c, qx, 0), axis=0).to(tl.float64)
                    m = tl.sum(tl.where(kids, 1, 0), axis=0)
                    p_row = p_ptr + (b64 * N + c) * V
                    if u0 * p0 < q0:
                        hit = c
                    elif m == 1:
                        t, f = _rrs.residual_draw(row, p_row, V, u_last, NT_P2, BLOCK)
                    else:
                        hit, t, f = _rrs.siblings(
                            row, p_row, V, u, u_last, kids, tok, nodes, N_P2, NT_P2, BLOCK,
                            WITHOUT,
                        )  # fmt: skip
                else:  # a leaf
                    t, f = _draw(row, V, u_last, tok, kids, nodes, N_P2, NT_P2, BLOCK)
            else:
                # 3. One coin walks the raw CDF of the children's entries, one child at a time.
                lo = u0 * 0.0
                while c < N_P2:
                    qc = tl.sum(tl.where(nodes == c, qx, 0), axis=0).to(tl.float64)
                    hi = lo + qc
                    take = (qc > 0.0) & (lo <= u0) & (u0 < hi)
                    hit = tl.where(take, c, hit)
                    lo = hi
                    nxt = tl.min(tl.where(kids & (nodes > c), nodes, N_P2), axis=0)
                    c = tl.where(take, N_P2, nxt)
                if hit < 0:
                    # 4. No child accepted (or a leaf): the last token, in this program, or
                    # split over the request's C programs (each walked the same path): every
                    # program sums its tiles, the last to arrive combines them and draws.
                    if C > 1:
                        t0 = chunk * TPC
                        ws_row = wsf_ptr + b64 * 3 * NT_P2
                        _draw_part(
                            row, V, t0, tl.minimum(t0 + TPC, tl.cdiv(V, BLOCK)), chunk, tok, kids,
                            nodes, ws_row, N_P2, NT_P2, BLOCK,
                        )  # fmt: skip
                        tl.debug_barrier()
                        prev = tl.atomic_add(ctr_ptr + b, 1, sem="acq_rel")
                        writer = prev == C - 1
                        if writer:
                            tl.store(ctr_ptr + b, 0)
                            t, f = _draw_combine(
                                row, V, u_last, C, tok, kids, nodes, ws_row, N_P2, NT_P2, BLOCK
                            )
                    else:
                        t, f = _draw(row, V, u_last, tok, kids, nodes, N_P2, NT_P2, BLOCK)
            if hit >= 0:
                ptok = tl.where(dr == s, tl.sum(tl.where(nodes == hit, tok, 0), axis=0), ptok)
                pnode = tl.where(dr == s, hit.to(tl.int64), pnode)
                s += 1
                pos = hit + 1
            else:
                token = t.to(tl.int64)
                flags = f
                done = 1

    if writer:
        store_path(tok_ptr, acc_ptr, num_ptr, st_ptr, b, D, dr, s, ptok, pnode, token, flags, D_P2)


@triton.jit
def store_path(tok_ptr, acc_ptr, num_ptr, st_ptr, b, D, dr, s, ptok, pnode, token, flags,
               D_P2: tl.constexpr):  # fmt: skip
    """Write request ``b``'s output: the ``s`` accepted drafts ``ptok`` (nodes ``pnode``, both
    ``[D_P2]`` indexed by ``dr``) then ``token`` into row ``b`` of ``token_ids`` [B, D+1], the nodes
    into ``accepted_nodes`` [B, D], ``s + 1`` into ``num_emitted`` and ``flags`` into ``status``; a
    flagged request gets -1 rows and 0 tokens."""
    b64 = b.to(tl.int64)
    good = flags == 0
    row = tl.where(dr < s, ptok, -1)
    row = tl.where(dr == s, token.to(tl.int64), row)
    tl.store(tok_ptr + b64 * (D + 1) + dr, tl.where(good, row, -1), mask=dr <= D)
    tl.store(acc_ptr + b64 * D + dr, tl.where(good & (dr < s), pnode, -1), mask=dr < D)
    for j in range(D_P2, D + 1, D_P2):  # max_depth > N: the columns no path reaches
        tl.store(tok_ptr + b64 * (D + 1) + j + dr, ptok * 0 - 1, mask=j + dr <= D)
        tl.store(acc_ptr + b64 * D + j + dr, ptok * 0 - 1, mask=j + dr < D)
    tl.store(num_ptr + b, tl.where(good, s + 1, 0).to(tl.int64))
    tl.store(st_ptr + b, flags.to(tl.int32))


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def tree_block(vocab: int, interpret: bool) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` of the tree kernel for a vocabulary of ``vocab`` tokens."""
    cap = 1024 if interpret else 4096
    block = min(cap, max(32, _next_pow2(vocab)))
    return block, (8 if block >= 4096 else 4)


def tree_chunks(batch: int, vocab: int, n_sm: int, interpret: bool) -> tuple[int, int]:
    """``(C, TPC)``: programs per request and tiles of a row per program, in greedy mode and under
    the target-only rule (with draft probabilities one program per request). Compiled, as many programs
    as put about two per SM over the batch, at most one per tile; under the interpreter, two per
    request up to B = 4 so that the combine runs on the CPU too."""
    block, _ = tree_block(vocab, interpret)
    tiles = -(-vocab // block)
    wanted = (2 if batch <= 4 else 1) if interpret else (2 * n_sm) // max(batch, 1)
    wanted = max(1, min(wanted, tiles))
    tpc = -(-tiles // wanted)
    return -(-tiles // tpc), tpc


def launch_tree(inputs, dummy, split32, n_sm: int = 1, workspace=None, chunks: int | None = None):
    """Run :func:`tree_kernel` on validated :class:`~specsample.contract_tree.TreeVerifyInputs`
    (greedy, or random with any ``draft_sampling``); returns ``TreeVerifyOutput``.

    ``dummy`` is a 1-element int64 tensor on the device (for unused pointers), ``split32`` splits a
    64-bit value into two signed-int32 halves. No host sync: the coins come from the caller or
    from the generator's Philox state as in ``verify()``. Greedy mode and the target-only rule
    spread the rows they read over ``C`` programs per request (:func:`tree_chunks` from ``n_sm``, the device's SM count,
    or ``chunks``); they combine through ``workspace(nf, nc)``, which returns at least ``nf``
    float64 elements and ``nc`` zeroed int32 counters (the last program of a request resets its
    counter). Without ``workspace`` the kernel runs one program per request.
    """
    import torch
    from specsample.contract_tree import TreeVerifyOutput

    from .triton_backend import philox_key

    B, N, V, D = inputs.batch_size, inputs.num_nodes_max, inputs.vocab_size, inputs.max_depth
    device = inputs.device
    greedy = inputs.mode == "greedy"
    has_u = inputs.uniforms is not None and not greedy
    has_p = inputs.draft_probs is not None and not greedy and N > 0
    tok = torch.empty((B, D + 1), dtype=torch.int64, device=device)
    acc = torch.empty((B, D), dtype=torch.int64, device=device)
    num = torch.empty((B,), dtype=torch.int64, device=device)
    status = torch.empty((B,), dtype=torch.int32, device=device)

    seed_t, seed_from_ptr, seed, offset = dummy, False, 0, 0
    if not greedy and not has_u:  # verify()'s key and counters, so a chain gives its coins
        seed_t, seed_from_ptr, seed, offset = philox_key(
            inputs.generator, device, B * (N + 1), dummy
        )
    block, warps = tree_block(V, INTERPRET)
    nt_p2 = _next_pow2(-(-V // block))
    split, tpc = 1, nt_p2
    if not has_p and workspace is not None:
        split, tpc = tree_chunks(B, V, n_sm, INTERPRET)
        if chunks is not None:
            tiles = -(-V // block)
            tpc = -(-tiles // max(1, min(chunks, tiles)))
            split = -(-tiles // tpc)
    d_p2 = _next_pow2(min(D, N) + 1)
    wsf, counters = dummy.view(torch.float64), dummy.view(torch.int32)
    if split > 1:  # greedy: records per program and depth; target-only: tile sums per request
        wsf, counters = workspace(B * (split * (3 * d_p2 + 1) if greedy else 3 * nt_p2), B)
    tree_kernel[(B, split)](
        inputs.draft_token_ids if N > 0 else dummy,
        inputs.parents if N > 0 else dummy,
        inputs.num_nodes,
        inputs.target_probs,
        inputs.draft_probs if has_p else dummy,
        inputs.uniforms if has_u else dummy,
        seed_t,
        tok,
        acc if D > 0 else dummy,
        num,
        status,
        wsf,
        counters,
        *split32(seed),
        *split32(offset),
        V,
        N,
        D,
        split,
        tpc,
        N_P2=_next_pow2(N + 1),
        D_P2=d_p2,
        NT_P2=nt_p2,
        BLOCK=block,
        GREEDY=greedy,
        HAS_U=has_u,
        SEED_FROM_PTR=seed_from_ptr,
        DISTINCT=inputs.needs_distinct_siblings,
        HAS_P=has_p,
        WITHOUT=inputs.draft_sampling == "without_replacement",
        num_warps=warps,
    )
    return TreeVerifyOutput(tok, num, acc, status)


# True when triton decorated the kernel for its CPU interpreter (TRITON_INTERPRET=1 at import time).
INTERPRET = type(tree_kernel).__name__ == "InterpretedFunction"
