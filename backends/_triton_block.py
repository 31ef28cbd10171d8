"""The ``triton`` backend's block-verification kernel (docs/rules.md): one launch per call.

Imported only lazily (by :mod:`specsample.backends.triton_backend` on the first ``rule="block"``
call in random mode), because it imports triton. Like the token kernel, it runs compiled or under
the CPU interpreter depending on ``TRITON_INTERPRET`` when this module is imported.

Grid: ``(G, C)``. Program ``(g, c)`` serves the ``ROWS`` requests of group ``g`` (1 on a GPU;
short rows are packed under the interpreter, see :func:`block_split_config`) and chunk ``c`` of the
vocabulary (``TPC`` tiles of ``BLOCK`` tokens). A tile holds rows ``0..K-1`` of ``q`` and ``p`` in
``[ROWS, KR_P2, BLOCK]`` blocks and the bonus row ``q_K`` in a ``[ROWS, BLOCK]`` block, all loaded
at once. Each program:

1. gathers the K ids, the drafted entries ``q_k(x_k)`` and ``p_k(x_k)`` and the K+1 coins (loaded or
   drawn by Philox exactly as the token kernel draws them: counter ``offset + b * (K+1) + k``) and
   computes the prefix weights ``w_0..w_K`` in float64, one step after another as the reference
   does (the same operations, so the same bits); every chunk program repeats this (L2 hits);
2. streams its chunk of every row: the bad-value checks of docs/rules.md ("Status", step 2) and,
   per row ``k < K``, ``max(0, w_k q_k - p_k)`` elementwise in float64 (the bonus row is ``q_K``
   itself), each thread adding its elements tile after tile; the chunk's sum of every row slot
   and its bad-value bits go to the workspace (``tot``, ``bad``);
3. counts itself in its group's counter; the program that completes the count (the last chunk to
   finish) adds the chunks' sums in a fixed order (so the totals do not depend on which program
   came last): the residual masses ``Z_k``, the thresholds ``h_{k-1} = Z_k / (Z_k + 1 - w_k)``
   (1 where the denominator is 0), ``h_{K-1} = w_K``, ``tau = max{k + 1 : u_k < h_k}``, the
   status and the final row's total ``Z_tau`` (the bonus row's sum when ``tau = K``);
4. finds the chunk whose running sum crosses ``u_K * total`` from the chunk sums, reads that chunk
   of the final row again (usually from L2) ``TG`` tiles at a time until the tile holding the
   threshold, and scans that tile with ``tl.cumsum``; a zero-weight token is never chosen, and a
   threshold rounded past the end takes the last positive token. A residual summing to 0 falls
   back to ``q_tau``, read whole by that program.

The bytes read per request: every row's full length once (``2K + 1`` rows, ``K + 1`` without
``draft_probs``), then up to one chunk of the final row again. A request flagged in step 1 reads
no row; one flagged in step 2 draws nothing. The same launch serves every batch size: at B = 1 a
request's rows are spread over the whole GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

from ._triton_kernels import _bad, _f32, _uniform
from ._triton_status import BAD_DRAFT, BAD_ID, BAD_TARGET, BAD_UNIFORM, OVERFLOW, ZERO_ROW

INTERPRET = False  # set below, after the kernel exists

_FMAX64 = tl.constexpr(3.4028234663852886e38)  # largest float32


@triton.jit
def _anyr(cond):
    """Per request (axis 1): 1 (int32) where any element of the row of ``cond`` is true."""
    return tl.max(tl.where(cond, 1, 0), axis=1)


@triton.jit
def _col(x, k, kr):
    """Column ``k`` of the ``[ROWS, K_P2]`` block ``x`` (indexed by ``kr``) as a ``[ROWS]`` vector."""
    return tl.sum(tl.where(kr[None, :] == k, x, 0), axis=1)


@triton.jit
def _at(x, idx, kr):
    """``x[r, idx[r]]`` for each request ``r`` of the ``[ROWS, K_P2]`` block ``x``."""
    return tl.sum(tl.where(kr[None, :] == idx[:, None], x, 0), axis=1)


@triton.jit
def _narrow(x, kr, kr2):
    """Columns ``0..KR_P2-1`` (indexed by ``kr2``) of the ``[ROWS, K_P2]`` block ``x``."""
    return tl.sum(tl.where(kr[None, None, :] == kr2[None, :, None], x[:, None, :], 0), axis=2)


@triton.jit
def _widen(y, kr2, kr):
    """The ``[ROWS, KR_P2]`` block ``y`` as columns ``0..KR_P2-1`` of a ``[ROWS, K_P2]`` block
    (0 elsewhere)."""
    return tl.sum(tl.where(kr2[None, :, None] == kr[None, None, :], y[:, :, None], 0.0), axis=1)


@triton.jit
def _pick_in_rows(r, m, base, thr, ar, BLOCK: tl.constexpr):
    """Per request (row of the ``[ROWS, BLOCK]`` tile ``r``, valid where ``m``): the index of the
    smallest j with ``base + cumsum(r)[j] > thr``, stepped back to the last positive entry at or
    before it (the tile's last positive entry if none crosses)."""
    csum = base[:, None] + tl.cumsum(r, axis=1)
    j = tl.min(tl.where(m & (csum > thr[:, None]), ar[None, :], BLOCK), axis=1)
    jj = tl.minimum(j, BLOCK - 1)
    pos = r > 0
    pick = tl.max(tl.where(pos & (ar[None, :] <= jj[:, None]), ar[None, :], -1), axis=1)
    return tl.where(pick < 0, tl.max(tl.where(pos, ar[None, :], 0), axis=1), pick)


@triton.jit
def _draw_q_rows(q_rows, V, todo, u, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Inverse-CDF draws from whole rows of ``q`` (the rare fallback: a residual that sums to 0),
    one per request where ``todo``: two passes (the row's float64 sum, then up to the crossing
    tile). Returns ``(token, total)``; the token is the last positive entry when rounding puts
    the threshold past the end, 0 for an all-zero row."""
    ar = tl.arange(0, BLOCK)
    NT = tl.cdiv(V, BLOCK)
    total = tl.zeros([ROWS], tl.float64)
    last_pos = tl.full([ROWS], -1, tl.int32)
    for t in range(0, NT):
        offs = t * BLOCK + ar
        m = todo[:, None] & (offs < V)[None, :]
        q = _f32(tl.load(q_rows[:, None] + offs[None, :], mask=m, other=0.0)).to(tl.float64)
        total += tl.sum(q, axis=1)
        last_pos = tl.maximum(last_pos, tl.max(tl.where(q > 0, offs[None, :], -1), axis=1))
    thr = u * total
    token = tl.maximum(last_pos, 0)
    left = todo & (total > 0)
    running = tl.zeros([ROWS], tl.float64)
    t = 0
    while (t < NT) & (tl.max(left.to(tl.int32), axis=0) > 0):
        offs = t * BLOCK + ar
        m = left[:, None] & (offs < V)[None, :]
        q = _f32(tl.load(q_rows[:, None] + offs[None, :], mask=m, other=0.0)).to(tl.float64)
        s = tl.sum(q, axis=1)
        cross = left & (running + s > thr)
        if tl.max(cross.to(tl.int32), axis=0) > 0:
            pick = _pick_in_rows(q, m, running, thr, ar, BLOCK)
            token = tl.where(cross, t * BLOCK + pick, token)
            left = left & ~cross
        running += s
        t += 1
    return token, total


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi", "B", "C", "TPC"])
def block_kernel(
    ids_ptr,  # [B, K] int32/int64
    p_ptr,  # [B, K, V] (unused when not HAS_P)
    q_ptr,  # [B, K+1, V]
    u_ptr,  # [B, K+1] float32 (unused when not HAS_U)
    seed_ptr,  # [1] int64 (unused when not SEED_FROM_PTR)
    tok_ptr,  # [B, K+1] int64 out
    num_ptr,  # [B] int64 out
    st_ptr,  # [B] int32 out: status bits
    tot_ptr,  # float64 [G * C * ROWS * K_P2]: each chunk's sum of every row slot (C > 1)
    bad_ptr,  # int32 [G * C * ROWS]: each chunk's bad-value bits (C > 1)
    cnt_ptr,  # int32 [G]: counters, zero between calls (C > 1)
    seed_lo,
    seed_hi,
    off_lo,
    off_hi,  # Philox key and base counter, as 32-bit halves (signed int32 bit patterns)
    B,
    V,
    K,
    C,  # chunks per request
    TPC,  # tiles per chunk
    K_P2: tl.constexpr,  # power of two > K (row slots 0..K)
    KR_P2: tl.constexpr,  # power of two >= K (the residual rows of a tile)
    TG: tl.constexpr,  # tiles of the final row read at once in step 4
    ROWS: tl.constexpr,  # requests per program
    BLOCK: tl.constexpr,  # tokens per tile
    C_P2: tl.constexpr,  # power of two >= C
    HAS_P: tl.constexpr,
    HAS_U: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr,
):
    g = tl.program_id(0)
    c = tl.program_id(1)
    g64 = g.to(tl.int64)
    rr = tl.arange(0, ROWS)
    rb = g64 * ROWS + rr.to(tl.int64)  # [R] requests
    rmask = rb < B
    kr = tl.arange(0, K_P2)
    kmask = rmask[:, None] & (kr < K)[None, :]  # [R, K_P2]
    ar = tl.arange(0, BLOCK)
    NT = tl.cdiv(V, BLOCK)
    K1 = K + 1

    # Step 1: ids, drafted entries, coins (as the token kernel), per request.
    ids = tl.load(ids_ptr + rb[:, None] * K + kr[None, :], mask=kmask, other=0).to(tl.int64)
    valid = kmask & (ids >= 0) & (ids < V)
    flags = tl.where(_anyr(kmask & ~valid) > 0, BAD_ID, 0)
    qrow0 = rb * K1
    qx = _f32(tl.load(q_ptr + (qrow0[:, None] + kr[None, :]) * V + ids, mask=valid, other=0.0))
    flags = flags | tl.where(_anyr(valid & _bad(qx)) > 0, BAD_TARGET, 0)
    if HAS_P:
        p_at = p_ptr + (rb[:, None] * K + kr[None, :]) * V + ids
        px = _f32(tl.load(p_at, mask=valid, other=1.0))
        flags = flags | tl.where(_anyr(valid & _bad(px)) > 0, BAD_DRAFT, 0)
    else:
        px = tl.full([ROWS, K_P2], 1.0, tl.float32)
    umask = rmask[:, None] & (kr <= K)[None, :]
    if HAS_U:
        u = tl.load(u_ptr + rb[:, None] * K1 + kr[None, :], mask=umask, other=0.0)
        u_bad = (u != u) | (u < 0.0) | (u >= 1.0)
        flags = flags | tl.where(_anyr(umask & u_bad) > 0, BAD_UNIFORM, 0)
    else:
        if SEED_FROM_PTR:
            seed = tl.load(seed_ptr)
            key_lo = seed.to(tl.uint32)
            key_hi = (seed >> 32).to(tl.uint32)
            off = seed * 0
        else:
            key_lo = seed_lo.to(tl.uint32, bitcast=True)
            key_hi = seed_hi.to(tl.uint32, bitcast=True)
            off = (off_hi.to(tl.int64) << 32) | off_lo.to(tl.uint32, bitcast=True).to(tl.int64)
        u = _uniform(key_lo, key_hi, off + rb[:, None] * K1 + kr[None, :])
    u64 = u.to(tl.float64)

    # Prefix weights w_0..w_K (float64), step by step as the reference: w_{k+1} =
    # min(1, w_k q / p), the ratio's limit where p = 0.
    qx64 = qx.to(tl.float64)
    px64 = px.to(tl.float64)
    w = tl.zeros([ROWS], tl.float64) + 1.0
    wv = tl.where(kr[None, :] == 0, w[:, None], 0.0)
    for k in range(0, K):
        num = w * _col(qx64, k, kr)
        pk = _col(px64, k, kr)
        ratio = tl.minimum(num / tl.where(pk > 0, pk, 1.0), 1.0)
        w = tl.where(pk > 0, ratio, tl.where(num > 0, 1.0, 0.0))
        wv = tl.where(kr[None, :] == k + 1, w[:, None], wv)

    # Step 2: this chunk of every row slot, the rows of a tile loaded at once: slots k < K are the
    # residuals max(0, w_k q_k - p_k) (p one-hot at x_k without draft rows) in a [ROWS, KR_P2,
    # BLOCK] tile, slot K the bonus row q_K in a [ROWS, BLOCK] tile. Each thread adds its elements
    # tile after tile in float64 (and ORs their bad-value bits); the block-wide sums come once, after
    # the chunk, so no barrier stands between one tile's loads and the next's. The next tile's
    # loads are issued before this one is added. A request flagged in step 1 reads no row.
    live = rmask & (flags == 0)
    kr2 = tl.arange(0, KR_P2)
    k3 = kr2[None, :, None]
    w3 = _narrow(wv, kr, kr2)[:, :, None]
    x3 = _narrow(ids, kr, kr2)[:, :, None]
    q3 = q_ptr + ((qrow0[:, None] + kr2[None, :]) * V)[:, :, None]
    p3 = p_ptr + (((rb * K)[:, None] + kr2[None, :]) * V)[:, :, None]
    m3 = live[:, None, None] & (k3 < K)
    qbonus = (q_ptr + (qrow0 + K) * V)[:, None]  # [R, 1]
    mb = live[:, None]
    t0 = c * TPC
    t1 = tl.minimum(t0 + TPC, NT)
    end = tl.minimum(t1 * BLOCK, V)  # this chunk's end (a token index)
    acc = tl.zeros([ROWS, KR_P2, BLOCK], tl.float64)
    acc_b = tl.zeros([ROWS, BLOCK], tl.float64)
    bad_q = tl.zeros([ROWS, KR_P2, BLOCK], tl.int32)
    bad_p = tl.zeros([ROWS, KR_P2, BLOCK], tl.int32)
    bad_b = tl.zeros([ROWS, BLOCK], tl.int32)
    offs = t0 * BLOCK + ar
    in3 = (offs < end)[None, None, :]
    qn = tl.load(q3 + offs[None, None, :], mask=m3 & in3, other=0.0)
    if HAS_P:
        pn = tl.load(p3 + offs[None, None, :], mask=m3 & in3, other=0.0)
    else:
        pn = qn
    bn = tl.load(qbonus + offs[None, :], mask=mb & (offs < end)[None, :], other=0.0)
    for t in range(t0, t1):
        offs = t * BLOCK + ar
        q = _f32(qn)
        qk = _f32(bn)
        if HAS_P:
            p = _f32(pn)
        # the next tile's loads (masked off past this chunk) before this tile's arithmetic
        nxt = offs + BLOCK
        in_n = nxt < end
        qn = tl.load(q3 + nxt[None, None, :], mask=m3 & in_n[None, None, :], other=0.0)
        if HAS_P:
            pn = tl.load(p3 + nxt[None, None, :], mask=m3 & in_n[None, None, :], other=0.0)
        bn = tl.load(qbonus + nxt[None, :], mask=mb & in_n[None, :], other=0.0)
        bad_q = bad_q | _bad(q).to(tl.int32)
        bad_b = bad_b | _bad(qk).to(tl.int32)
        if HAS_P:
            bad_p = bad_p | _bad(p).to(tl.int32)
            p64 = p.to(tl.float64)
        else:
            p64 = tl.where(offs[None, None, :] == x3, 1.0, 0.0).to(tl.float64)
        acc += tl.maximum(w3 * q.to(tl.float64) - p64, 0.0)
        acc_b += qk.to(tl.float64)
    run_res = tl.sum(acc, axis=2)  # [R, KR_P2]
    run_bonus = tl.sum(acc_b, axis=1)
    qbad = tl.max(tl.max(bad_q, axis=2), axis=1)
    pbad = tl.max(tl.max(bad_p, axis=2), axis=1)
    bbad = tl.max(bad_b, axis=1)
    bits = qbad | (pbad << 1) | (bbad << 2)
    # every slot's chunk sum in [ROWS, K_P2] (slot K: the bonus row)
    running = _widen(run_res, kr2, kr) + tl.where(kr[None, :] == K, run_bonus[:, None], 0.0)

    # Step 3: the chunk's sums to the workspace; the last program of the group goes on.
    if C > 1:
        mine = (g64 * C + c) * ROWS + rr
        tl.store(tot_ptr + mine[:, None] * K_P2 + kr[None, :], running)
        tl.store(bad_ptr + mine, bits)
        tl.debug_barrier()
        prev = tl.atomic_add(cnt_ptr + g, 1, sem="acq_rel")
    else:
        prev = C - 1
    if prev == C - 1:
        cr = tl.arange(0, C_P2)
        cm = cr < C
        if C > 1:
            tl.store(cnt_ptr + g, 0)
            their = (g64 * C + cr[:, None]) * ROWS + rr[None, :]  # [C_P2, R]
            tc3 = tl.load(
                tot_ptr + their[:, :, None] * K_P2 + kr[None, None, :],
                mask=cm[:, None, None],
                other=0.0,
                cache_modifier=".cg",
            )
            bits_c = tl.load(bad_ptr + their, mask=cm[:, None], other=0, cache_modifier=".cg")
        else:
            tc3 = tl.where(cr[:, None, None] == 0, running[None, :, :], 0.0)
            bits_c = tl.where(cr[:, None] == 0, bits[None, :], 0)
        z = tl.sum(tc3, axis=0)  # [R, K_P2]: every slot's total, chunks added in a fixed order

        # Thresholds: h_k = Z_{k+1} / (Z_{k+1} + 1 - w_{k+1}) for k < K - 1, h_{K-1} = w_K.
        denom = z + 1.0 - wv
        hz = tl.where(denom > 0, z / tl.where(denom > 0, denom, 1.0), 1.0)
        shift = (kr[:, None] + 1) == kr[None, :]  # [K_P2, K_P2]: column j = k + 1 of row k
        h = tl.sum(tl.where(shift[None, :, :], hz[:, None, :], 0.0), axis=2)
        h = tl.where(kr[None, :] == K - 1, _col(wv, K, kr)[:, None], h)
        passed = kmask & (u64 < h)
        tau = tl.max(tl.where(passed, kr[None, :] + 1, 0), axis=1)  # [R]

        qb_all = tl.max(bits_c & 1, axis=0)
        pb_all = tl.max(bits_c & 2, axis=0)
        bb_all = tl.max(bits_c & 4, axis=0)
        rows_flags = tl.where(qb_all > 0, BAD_TARGET, 0) | tl.where(pb_all > 0, BAD_DRAFT, 0)
        flags = tl.where(flags == 0, rows_flags, flags)
        flags = tl.where((flags == 0) & (tau == K) & (bb_all > 0), BAD_TARGET, flags)

        total = _at(z, tau, kr)
        u_last = _col(u64, K, kr)
        w_tau = _at(wv, tau, kr)
        x_tau = _at(ids, tau, kr)  # unused when tau = K
        q_rows = q_ptr + (qrow0 + tau) * V
        p_rows = p_ptr + (rb * K + tl.minimum(tau, K - 1)) * V
        use_res = tau < K
        token = tl.zeros([ROWS], tl.int32)
        # A residual summing to 0 (probability zero in exact arithmetic): draw from q_tau itself.
        refill = rmask & (flags == 0) & use_res & (total == 0)
        if tl.max(refill.to(tl.int32), axis=0) > 0:
            tok_f, total_f = _draw_q_rows(q_rows, V, refill, u_last, ROWS, BLOCK)
            token = tl.where(refill, tok_f, token)
            total = tl.where(refill, total_f, total)
        last_flags = tl.where(total > _FMAX64, OVERFLOW, tl.where(total == 0, ZERO_ROW, 0))
        flags = tl.where(flags == 0, last_flags, flags)
        draw = rmask & (flags == 0) & ~refill

        # Step 4: the crossing chunk from the chunk sums of slot tau; then that chunk of the final
        # row is read again (usually from L2) TG tiles at a time, the tile sums added in order, up
        # to the tile holding the threshold, which is read once more and scanned with tl.cumsum.
        # (Picking that tile out of the group's registers instead made ptxas spill 30 KB.)
        thr = u_last * total
        tau_col = kr[None, None, :] == tau[None, :, None]
        ct = tl.sum(tl.where(tau_col, tc3, 0.0), axis=2)  # [C_P2, R]: chunk sums of slot tau
        cumc = tl.cumsum(ct, axis=0)
        crossing = cm[:, None] & (cumc > thr[None, :]) & (ct > 0)
        cs = tl.min(tl.where(crossing, cr[:, None], C_P2), axis=0)
        last_c = tl.max(tl.where(cm[:, None] & (ct > 0), cr[:, None], 0), axis=0)
        cs = tl.where(cs == C_P2, last_c, cs)  # rounding past the end: the last positive chunk
        base = tl.sum(tl.where(cr[:, None] < cs[None, :], ct, 0.0), axis=0)
        thr_l = thr - base
        first = cs * TPC  # the chunk's first tile
        n_tiles = tl.minimum(TPC, NT - first)
        gr = tl.arange(0, TG)
        w_g = w_tau[:, None, None]
        x_g = x_tau[:, None, None]
        res_g = use_res[:, None, None]
        todo = draw
        run = tl.zeros([ROWS], tl.float64)
        sel_t = first
        sel_base = run
        last_t = first
        last_base = run
        i = 0
        while (i < TPC) & (tl.max(todo.to(tl.int32), axis=0) > 0):
            tix = i + gr  # tiles i.. of the chunk
            tm = todo[:, None] & (tix[None, :] < n_tiles[:, None])  # [R, TG]
            offs3 = ((first[:, None] + tix[None, :]) * BLOCK)[:, :, None] + ar[None, None, :]
            mt = tm[:, :, None] & (offs3 < V)
            qg = _f32(tl.load(q_rows[:, None, None] + offs3, mask=mt, other=0.0)).to(tl.float64)
            if HAS_P:
                pg = _f32(tl.load(p_rows[:, None, None] + offs3, mask=mt & res_g, other=0.0))
                pg64 = pg.to(tl.float64)
            else:
                pg64 = tl.where(offs3 == x_g, 1.0, 0.0).to(tl.float64)
            rg = tl.where(res_g, tl.maximum(w_g * qg - pg64, 0.0), qg)
            ts = tl.where(tm, tl.sum(rg, axis=2), 0.0)  # [R, TG] tile sums
            # running sums through each tile of the group, as a masked sum: triton 3.6 cannot
            # lower tl.cumsum over this [R, TG] layout (an assertion in its scan lowering)
            upto = gr[None, None, :] <= gr[None, :, None]  # [1, TG, TG]: tile i at or before j
            cts = run[:, None] + tl.sum(tl.where(upto, ts[:, None, :], 0.0), axis=2)
            gh = tl.min(tl.where(tm & (ts > 0) & (cts > thr_l[:, None]), gr[None, :], TG), axis=1)
            found = todo & (gh < TG)
            sel_t = tl.where(found, first + i + gh, sel_t)
            before_h = run + tl.sum(tl.where(gr[None, :] < gh[:, None], ts, 0.0), axis=1)
            sel_base = tl.where(found, before_h, sel_base)
            # the last tile with a positive sum so far (for a threshold past the chunk's end)
            gl = tl.max(tl.where(tm & (ts > 0), gr[None, :], -1), axis=1)
            upd = todo & ~found & (gl >= 0)
            last_t = tl.where(upd, first + i + gl, last_t)
            before_l = run + tl.sum(tl.where(gr[None, :] < gl[:, None], ts, 0.0), axis=1)
            last_base = tl.where(upd, before_l, last_base)
            run += tl.sum(ts, axis=1)
            todo = todo & ~found
            i += TG
        past = todo  # no tile crossed: rounding put the threshold past the chunk's end
        sel_t = tl.where(past, last_t, sel_t)
        sel_base = tl.where(past, last_base, sel_base)
        offs2 = sel_t[:, None] * BLOCK + ar[None, :]
        m2 = draw[:, None] & (offs2 < V)
        qt = _f32(tl.load(q_rows[:, None] + offs2, mask=m2, other=0.0)).to(tl.float64)
        if HAS_P:
            pt = _f32(tl.load(p_rows[:, None] + offs2, mask=m2 & use_res[:, None], other=0.0))
            pt64 = pt.to(tl.float64)
        else:
            pt64 = tl.where(offs2 == x_tau[:, None], 1.0, 0.0).to(tl.float64)
        rt = tl.where(use_res[:, None], tl.maximum(w_tau[:, None] * qt - pt64, 0.0), qt)
        pick = _pick_in_rows(rt, m2, sel_base, thr_l, ar, BLOCK)
        token = tl.where(draw, (sel_t * BLOCK + pick).to(tl.int32), token)

        # Outputs; a flagged request gets all -1, 0 emitted and its status bits.
        ok = flags == 0
        row = tl.where(kr[None, :] < tau[:, None], ids, -1)
        row = tl.where(kr[None, :] == tau[:, None], token.to(tl.int64)[:, None], row)
        row = tl.where(ok[:, None], row, -1)
        tl.store(tok_ptr + rb[:, None] * K1 + kr[None, :], row, mask=umask)
        tl.store(num_ptr + rb, tl.where(ok, tau + 1, 0).to(tl.int64), mask=rmask)
        tl.store(st_ptr + rb, flags.to(tl.int32), mask=rmask)


INTERPRET = type(block_kernel).__name__ == "InterpretedFunction"


def block_config(batch: int, vocab: int, interpret: bool) -> tuple[int, int, int]:
    """``(BLOCK, ROWS, num_warps)`` of a kernel that packs ``ROWS`` requests into ``[ROWS, BLOCK]``
    tiles (the serving kernel's packing): tiles are large for a long vocabulary; short rows are
    packed several requests to a program so that a tile stays a useful size. Under the
    interpreter each tile is one numpy operation and each program costs Python overhead: tiles of
    up to 64Ki elements, as many requests as fit.
    """
    block = max(32, 1 << (max(vocab, 1) - 1).bit_length())
    fill = 1 << (max(batch, 1) - 1).bit_length()
    if interpret:
        block = min(block, 8192)
        return block, max(1, min(fill, 65536 // block)), 1
    block = min(block, 2048)
    rows = max(1, min(fill, 2048 // block))
    return block, rows, 8 if block * rows >= 2048 else 4


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


# Compiled: elements of one [KR_P2, BLOCK] tile (the residual rows of a request at BLOCK tokens;
# 8 of q and 8 of p per thread at 4 warps: 16 per thread took 255 registers and spilled), and the
# programs per SM the batch is spread over (a request's rows over several SMs at small B). Chosen
# on an H100 over 2048-element tiles at 8 warps and 1, 2 or 4 programs per SM
# (docs/dev/triton-kernel.md).
TILE_ELEMS = 1024
PROGRAMS_PER_SM = 4
# At most this many chunks per request: the last program holds a [C_P2, ROWS, K_P2] block of
# chunk sums in registers.
MAX_CHUNK_SLOTS = 4096
# At most this many tiles per chunk (compiled): the last program reads the crossing chunk of the
# final row again, KR_P2 tiles per round trip.
MAX_TILES_PER_CHUNK = 32
# Compiled: elements of the final row read at once in step 4 (TG = this / BLOCK tiles).
TILE_GROUP_ELEMS = 1024
# The interpreter: elements of one [ROWS, K_P2, BLOCK] tile (one numpy operation each).
INTERPRET_TILE_ELEMS = 65536


@dataclass(frozen=True)
class BlockPlan:
    """A launch of :func:`block_kernel`: grid ``(groups, chunks)`` and its constexprs."""

    block: int  # BLOCK: tokens per tile
    rows: int  # ROWS: requests per program
    chunks: int  # C: programs per request group, each over tiles_per_chunk tiles
    tiles_per_chunk: int  # TPC
    num_warps: int
    k_p2: int  # K_P2: power of two > K
    kr_p2: int  # KR_P2: power of two >= K
    tile_group: int  # TG: tiles of the final row read at once in step 4
    c_p2: int  # C_P2: power of two >= C

    def groups(self, batch: int) -> int:
        return -(-batch // self.rows)

    def workspace(self, batch: int) -> tuple[int, int, int]:
        """``(float64, int32, counters)`` elements the launch needs: every chunk's sums of every
        row slot, its bad-value bits, one counter per group (none with one chunk)."""
        if self.chunks == 1:
            return 0, 0, 0
        slots = self.groups(batch) * self.chunks * self.rows
        return slots * self.k_p2, slots, self.groups(batch)


def block_split_config(
    batch: int, num_draft: int, vocab: int, n_sm: int, interpret: bool
) -> BlockPlan:
    """The launch of :func:`block_kernel` for a call.

    Compiled: one request per program (``ROWS = 1``), a tile of ``TILE_ELEMS`` elements over the
    residual rows (``BLOCK = TILE_ELEMS / KR_P2`` tokens, plus the bonus row's), and the vocabulary cut into as many
    chunks as spread the batch over ``PROGRAMS_PER_SM`` programs per SM, at least enough for
    ``MAX_TILES_PER_CHUNK`` tiles per chunk. ``C_P2`` follows the vocabulary and the draft count
    alone (the batch size and the chunking are runtime
    values), so a server whose batch size changes every step compiles one variant per vocabulary,
    draft-count bucket and dtypes. Under the interpreter: tiles of up to ``INTERPRET_TILE_ELEMS``
    elements with as many requests as fit in one, and two chunks per request at small batches so
    that the combine runs on the CPU too.
    """
    k_p2 = _next_pow2(num_draft + 1)
    kr_p2 = _next_pow2(num_draft)
    vp2 = max(16, _next_pow2(vocab))
    if interpret:
        block = min(vp2, max(16, 16384 // kr_p2))
        rows = max(1, min(_next_pow2(batch), INTERPRET_TILE_ELEMS // (kr_p2 * block)))
        warps = 1
        wanted = 2 if batch <= 4 else 1
    else:
        block = min(vp2, max(16, TILE_ELEMS // kr_p2))
        rows = 1
        warps = 8 if kr_p2 * block >= 2048 else 4
        wanted = -(-PROGRAMS_PER_SM * n_sm // max(batch, 1))
    tiles = -(-vocab // block)
    if not interpret:
        wanted = max(wanted, -(-tiles // MAX_TILES_PER_CHUNK))
    c_cap = max(1, MAX_CHUNK_SLOTS // (k_p2 * rows))
    c_p2 = _next_pow2(min(tiles, c_cap))
    wanted = max(1, min(wanted, tiles, c_p2))
    tpc = -(-tiles // wanted)
    chunks = -(-tiles // tpc)
    group = max(1, min(_next_pow2(tpc), TILE_GROUP_ELEMS // block)) if not interpret else 1
    return BlockPlan(block, rows, chunks, tpc, warps, k_p2, kr_p2, group, c_p2)


def launch_block(
    ids,
    p,
    q,
    u,
    seed_t,
    tok,
    num,
    status,
    workspace,
    plan: BlockPlan,
    seed_halves,
    offset_halves,
    B,
    K,
    V,
    has_p,
    has_u,
    seed_from_ptr,
) -> None:
    """Launch :func:`block_kernel` on ``(groups, chunks)`` programs of ``plan`` (the caller chose
    the device; triton launches on the current stream). Arguments as the token kernel's launch in
    ``triton_backend``; ``workspace`` has float64 ``f``, int32 ``i`` and zeroed int32
    ``counters`` of at least ``plan.workspace(B)`` elements; ``seed_halves`` and
    ``offset_halves`` are ``(low, high)`` int32 pairs."""
    block_kernel[(plan.groups(B), plan.chunks)](
        ids,
        p,
        q,
        u,
        seed_t,
        tok,
        num,
        status,
        workspace.f,
        workspace.i,
        workspace.counters,
        *seed_halves,
        *offset_halves,
        B,
        V,
        K,
        plan.chunks,
        plan.tiles_per_chunk,
        K_P2=plan.k_p2,
        KR_P2=plan.kr_p2,
        TG=plan.tile_group,
        ROWS=plan.rows,
        BLOCK=plan.block,
        C_P2=plan.c_p2,
        HAS_P=has_p,
        HAS_U=has_u,
        SEED_FROM_PTR=seed_from_ptr,
        num_warps=plan.num_warps,
        # the reference rounds w q, then subtracts p: no fused multiply-add
        enable_fp_fusion=False,
    )
