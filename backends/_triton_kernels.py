"""The ``triton`` backend's kernel: one ``@triton.jit`` launch per verify call.

Imported only lazily (by :mod:`specsample.backends.triton_backend` on first use), because it imports
triton. Whether it runs compiled or under the CPU interpreter is fixed when this module is imported:
triton reads ``TRITON_INTERPRET`` when the kernel is decorated.

Grid: ``(B, C)``. Program ``(b, c)`` serves request ``b`` and chunk ``c`` of the vocabulary (``C``
chunks of ``TPC`` tiles of ``BLOCK`` tokens). Every program first decides the request's draft tokens
(a handful of scalar loads, repeated by each chunk program: they hit L2), then reads its chunk of the
one row that decides the last token. With ``C > 1`` the chunk results go through a small workspace
and the last program to finish (an atomic counter per request, reset by that program) makes the
final choice: a long row is spread over many SMs at small batch sizes.

Random mode (the contract's rules; ``specsample.reference`` is the float64 definition):
  1. accept draft k iff ``u_k * p_k(x_k) < q_k(x_k)``, evaluated in float64, where the product of two
     float32 numbers is exact: the decisions equal the reference's bit for bit;
  2. the first rejection k* picks the row ``r = max(0, q_k* - p_k*)`` (``p`` one-hot when
     ``draft_probs`` is None), all accepted picks ``q_K``; a residual summing to 0 falls back to q;
  3. the last token is the smallest j with ``cumsum(r)[j] > u_K * sum(r)``. Pass 1 reads the chunk
     once and keeps the running sum after each tile in registers; the choice then needs only the
     one tile where the threshold is crossed, re-read (from L2) and scanned with ``tl.cumsum``.
     A token with ``r == 0`` is never chosen, and a threshold rounded past a tile's end falls back
     to the last positive token before it.
Greedy mode: each chunk program computes its chunk's argmax (smallest index on ties) of rows
0, 1, ... and stops at the first row where its chunk proves the draft is not the argmax; k* is the
smallest such row over the chunks (each chunk has read up to it), and the last token is the argmax
of row k*, combined over the chunks.

Randomness: Philox-4x32-10 keyed by the torch generator's seed, counter ``offset + b * (K+1) + k``
(``k = K`` is the final draw, so accept and final draws never share a number); 24 random bits give
``u`` in [0, 1) exactly as torch's float32 ``rand`` does. Under CUDA graph capture the seed is read
from a device tensor instead (``SEED_FROM_PTR``), drawn by a torch op the graph replays.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._triton_status import BAD_DRAFT, BAD_ID, BAD_TARGET, BAD_UNIFORM, OVERFLOW, ZERO_ROW

# True when triton decorated the kernel for its CPU interpreter (TRITON_INTERPRET=1 at import time).
INTERPRET = False  # set below, after the kernel exists

_BIG = tl.constexpr(2147483647)
_FMAX = tl.constexpr(3.4028234663852886e38)  # largest float32


@triton.jit
def _f32(x):
    """A loaded probability as float32. bfloat16 is widened from its bits (a 16-bit shift, exact
    for every value; triton's CPU interpreter garbles bfloat16 subnormals in a plain cast, the GPU
    does not, and both give this)."""
    if x.dtype == tl.bfloat16:
        return (x.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    return x.to(tl.float32)


@triton.jit
def _bad(x):
    """Elementwise (float32): NaN, infinite or negative; ``-0.0`` is fine."""
    return (x != x) | (x < 0.0) | (x > _FMAX)


@triton.jit
def _any(cond):
    """1 (int32) when any element of the boolean tensor is true, else 0."""
    return tl.max(tl.where(cond, 1, 0), axis=0)


@triton.jit
def _tile_sum(r):
    """A tile's residual sum (float32) as float64, an overflow to +inf kept finite but above the
    float32 range (so the row is flagged ``ROW_SUM_OVERFLOW``, and +inf never meets -inf)."""
    t = tl.sum(r, axis=0).to(tl.float64)
    return tl.where(t > _FMAX, 6.805646932770577e38, t)


@triton.jit
def _encode_bad(total, qbad, pbad):
    """A chunk's residual sum carrying its bad-value flags: NaN for a bad target value, -inf for a
    bad draft value (valid sums are >= 0; NaN wins when chunks are added, as target wins over draft
    in the status)."""
    total = tl.where(pbad > 0, float("-inf"), total)
    return tl.where(qbad > 0, float("nan"), total)


@triton.jit
def _classify(total):
    """Status bits of a row from its (encoded) residual sum; 0 for a positive, finite sum."""
    return tl.where(
        total != total,
        BAD_TARGET,
        tl.where(total < 0, BAD_DRAFT, tl.where(total > _FMAX, OVERFLOW, 0)),
    )


@triton.jit
def _uniform(key_lo, key_hi, ctr):
    """Philox-4x32-10 of the 64-bit counter ``ctr`` (tensor of int64) -> float32 in [0, 1)."""
    c0 = ctr.to(tl.uint32)
    c1 = (ctr >> 32).to(tl.uint32)
    zero = c0 * 0
    r, _, _, _ = tl.philox_impl(c0, c1, zero, zero, key_lo, key_hi)
    return (r >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _load_tile(q_row, p_row, offs, lim, p_lim, HAS_P: tl.constexpr):
    """Raw q (and p) of one tile, masked to ``offs < lim`` (``p``: also ``< p_lim``). ``p_lim`` is
    V for a rejected request, else 0: an accepted request draws from the bonus row and its p load
    is masked off (no bytes)."""
    q = tl.load(q_row + offs, mask=offs < lim, other=0.0)
    if HAS_P:
        p = tl.load(p_row + offs, mask=offs < tl.minimum(lim, p_lim), other=0.0)
    else:
        p = q
    return q, p


@triton.jit
def _combine(q, p, offs, x_hot, HAS_P: tl.constexpr):
    """The residual (float32) from a loaded tile; ``x_hot`` is the rejected draft id for a one-hot
    drafter (``draft_probs`` None), else -1."""
    q = _f32(q)
    if HAS_P:
        r = tl.maximum(q - _f32(p), 0.0)
    else:
        r = tl.where(offs == x_hot, tl.maximum(q - 1.0, 0.0), q)
    return r


@triton.jit
def _residual(q_row, p_row, offs, V, p_lim, x_hot, HAS_P: tl.constexpr):
    """One tile of the row the last token is drawn from (float32)."""
    q, p = _load_tile(q_row, p_row, offs, V, p_lim, HAS_P)
    return _combine(q, p, offs, x_hot, HAS_P)


@triton.jit
def _pick_in_tile(r, ar, m, tile_base, thr, BLOCK: tl.constexpr):
    """Index in the tile of the smallest j with ``tile_base + cumsum(r)[j] > thr``, stepped back
    to the last positive entry at or before it (last positive of the tile if none crosses)."""
    csum = tl.cumsum(r, axis=0)
    j = tl.min(tl.where(m & (tile_base + csum > thr), ar, BLOCK), axis=0)
    jj = tl.minimum(j, BLOCK - 1)
    pick = tl.max(tl.where((r > 0) & (ar <= jj), ar, -1), axis=0)
    return tl.where(pick < 0, tl.max(tl.where(r > 0, ar, 0), axis=0), pick)


@triton.jit
def _sample_full_row(row, V, u, BLOCK: tl.constexpr):
    """Inverse-CDF draw from a whole row in two passes (the rare fallback: a residual that sums to
    zero). Returns ``(token, row sum)``; the token is 0 for an all-zero row."""
    ar = tl.arange(0, BLOCK)
    NT = tl.cdiv(V, BLOCK)
    total = tl.zeros([BLOCK], tl.float64).sum(axis=0)
    last_pos = -1
    for t in range(0, NT):
        offs = t * BLOCK + ar
        q = _f32(tl.load(row + offs, mask=offs < V, other=0.0))
        total += tl.sum(q, axis=0).to(tl.float64)
        last_pos = tl.maximum(last_pos, tl.max(tl.where(q > 0, offs, -1), axis=0))
    thr = u.to(tl.float64) * total
    token = tl.maximum(last_pos, 0)
    done = (total <= 0).to(tl.int32)
    running = total * 0.0
    t = 0
    while (t < NT) & (done == 0):
        offs = t * BLOCK + ar
        m = offs < V
        q = _f32(tl.load(row + offs, mask=m, other=0.0))
        s = tl.sum(q, axis=0).to(tl.float64)
        if running + s > thr:
            token = t * BLOCK + _pick_in_tile(q, ar, m, running, thr, BLOCK)
            done = 1
        running += s
        t += 1
    return token, total


@triton.jit
def _write_out(tok_ptr, num_ptr, st_ptr, b, b64, K, kr, ids, kstar, token, flags):
    """The request's outputs; a flagged request gets all -1, 0 emitted and its status bits."""
    ok = flags == 0
    row = tl.where(kr < kstar, ids, -1)
    row = tl.where(kr == kstar, token.to(tl.int64), row)
    row = tl.where(ok, row, -1)
    tl.store(tok_ptr + b64 * (K + 1) + kr, row, mask=kr <= K)
    tl.store(num_ptr + b, tl.where(ok, kstar + 1, 0).to(tl.int64))
    tl.store(st_ptr + b, flags.to(tl.int32))


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def verify_kernel(
    ids_ptr,  # [B, K] int32/int64
    p_ptr,  # [B, K, V] (unused when not HAS_P)
    q_ptr,  # [B, K+1, V]
    u_ptr,  # [B, K+1] float32 (unused when not HAS_U)
    seed_ptr,  # [1] int64 (unused when not SEED_FROM_PTR)
    tok_ptr,  # [B, K+1] int64 out
    num_ptr,  # [B] int64 out
    st_ptr,  # [B] int32 out: status bits
    wsf_ptr,  # float64 workspace, B*C*FSLOT (used when C > 1)
    wsi_ptr,  # int32 workspace, B*C*ISLOT (greedy, C > 1)
    cnt_ptr,  # int32 [B] counters, zero between calls (C > 1)
    seed_lo,
    seed_hi,
    off_lo,
    off_hi,  # Philox key and base counter, as 32-bit halves (signed int32 bit patterns)
    V,
    K,
    C,
    TPC,  # chunks per request, tiles per chunk
    FSLOT,
    ISLOT,  # workspace slot sizes per (request, chunk)
    K_P2: tl.constexpr,  # power of two > K
    NT_P2: tl.constexpr,  # power of two >= TPC
    C_P2: tl.constexpr,  # power of two >= C
    BLOCK: tl.constexpr,
    GREEDY: tl.constexpr,
    HAS_P: tl.constexpr,
    HAS_U: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr,
    PREFETCH: tl.constexpr,  # double-buffer pass 1's tile loads (random mode)
    ALL_ROWS: tl.constexpr,  # greedy, one tile per chunk: load all K+1 rows at once
):
    b = tl.program_id(0)
    c = tl.program_id(1)
    b64 = b.to(tl.int64)
    kr = tl.arange(0, K_P2)
    kmask = kr < K
    # All K draft ids and q (p) at them in two dependent loads, not K: the decision loop below is
    # register-only, so its early exit costs no memory latency per draft.
    ids = tl.load(ids_ptr + b64 * K + kr, mask=kmask, other=0).to(tl.int64)
    valid = kmask & (ids >= 0) & (ids < V)  # an out-of-range id is flagged, never read
    flags = tl.where(_any(kmask & ~valid) > 0, BAD_ID, 0)
    qrow0 = b64 * (K + 1)
    qx = _f32(tl.load(q_ptr + (qrow0 + kr) * V + ids, mask=valid, other=0.0))
    NT = tl.cdiv(V, BLOCK)
    t0 = c * TPC
    t1 = tl.minimum(t0 + TPC, NT)
    ar = tl.arange(0, BLOCK)
    tr = tl.arange(0, NT_P2)
    cr = tl.arange(0, C_P2)
    cm = cr < C
    slot = (b64 * C + c) * FSLOT
    islot = (b64 * C + c) * ISLOT

    if GREEDY and ALL_ROWS:
        # Small batches: a chunk of one tile, all K+1 rows loaded at once (one memory latency, not
        # K+1; the rows past the first mismatch are read for nothing, which is cheap when B is
        # small).
        rows = kr[:, None]
        offs2 = (t0 * BLOCK + ar)[None, :]
        v = _f32(
            tl.load(
                q_ptr + (qrow0 + rows) * V + offs2,
                mask=(rows <= K) & (offs2 < V),
                other=float("-inf"),
            )
        )
        m_rows = tl.max(v, axis=1)
        i_rows = tl.min(tl.where(v == m_rows[:, None], offs2, _BIG), axis=1)
        # a row holding a bad value stops the walk (flagged); -1 marks it in the workspace
        rbad = tl.max(tl.where((rows <= K) & (offs2 < V) & _bad(v), 1, 0), axis=1)
        i_rows = tl.where(rbad > 0, -1, i_rows)
        beaten = (m_rows > qx) | ((m_rows == qx) & (i_rows < ids))
        rej = (kr >= K) | (valid == 0) | beaten | (rbad > 0)
        kc = tl.min(tl.where(rej, kr, K_P2), axis=0)
        if C > 1:
            tl.store(wsf_ptr + slot + kr, m_rows, mask=kr <= kc)
            tl.store(wsi_ptr + islot + kr, i_rows, mask=kr <= kc)
            tl.store(wsi_ptr + islot + K_P2, kc)
            tl.debug_barrier()
            prev = tl.atomic_add(cnt_ptr + b, 1, sem="acq_rel")
        else:
            prev = C - 1
        if prev == C - 1:
            if C > 1:
                tl.store(cnt_ptr + b, 0)
                wi = wsi_ptr + (b64 * C + cr) * ISLOT
                kcs = tl.load(wi + K_P2, mask=cm, other=_BIG, cache_modifier=".cg")
                kstar = tl.min(kcs, axis=0)
                vals = tl.load(
                    wsf_ptr + (b64 * C + cr) * FSLOT + kstar,
                    mask=cm,
                    other=float("-inf"),
                    cache_modifier=".cg",
                )
                idxs = tl.load(wi + kstar, mask=cm, other=_BIG, cache_modifier=".cg")
                vmax = tl.max(vals, axis=0)
                token = tl.min(tl.where(cm & (vals == vmax), idxs, _BIG), axis=0)
                row_bad = _any(cm & (idxs == -1))
            else:
                kstar = kc
                token = tl.sum(tl.where(kr == kc, i_rows, 0), axis=0)
                row_bad = tl.where(token == -1, 1, 0)
            flags = tl.where((flags == 0) & (row_bad > 0), BAD_TARGET, flags)
            _write_out(tok_ptr, num_ptr, st_ptr, b, b64, K, kr, ids, kstar, token, flags)
    elif GREEDY:
        k = 0
        stop = K
        best_i = 0
        while k <= stop:
            q_row = q_ptr + (qrow0 + k) * V
            m_run = float("-inf")
            i_run = 0
            rbad = 0
            for t in range(t0, t1):
                offs = t * BLOCK + ar
                v = _f32(tl.load(q_row + offs, mask=offs < V, other=float("-inf")))
                tm = tl.max(v, axis=0)
                ti = tl.min(tl.where(v == tm, offs, _BIG), axis=0)
                upd = tm > m_run  # strict: an earlier tile keeps a tie (smallest index wins)
                i_run = tl.where(upd, ti, i_run)
                m_run = tl.where(upd, tm, m_run)
                rbad = tl.maximum(rbad, _any((offs < V) & _bad(v)))
            # a row holding a bad value stops the walk (flagged); -1 marks it in the workspace
            i_run = tl.where(rbad > 0, -1, i_run)
            if C > 1:
                tl.store(wsf_ptr + slot + k, m_run)
                tl.store(wsi_ptr + islot + k, i_run)
            sel = kr == k
            xk = tl.sum(tl.where(sel, ids, 0), axis=0)
            qxk = tl.sum(tl.where(sel, qx, 0.0), axis=0)
            vk = tl.sum(tl.where(sel & valid, 1, 0), axis=0)
            # This chunk proves row k's argmax is not x_k (row K, the bonus row, always stops).
            beaten = (m_run > qxk) | ((m_run == qxk) & (i_run < xk))
            rej = (k >= K) | (vk == 0) | beaten | (rbad > 0)
            stop = tl.where(rej, k, stop)
            best_i = i_run
            k += 1
        if C > 1:
            tl.store(wsi_ptr + islot + K_P2, k - 1)
            tl.debug_barrier()
            prev = tl.atomic_add(cnt_ptr + b, 1, sem="acq_rel")
        else:
            prev = C - 1
        if prev == C - 1:
            if C > 1:
                tl.store(cnt_ptr + b, 0)
                wi = wsi_ptr + (b64 * C + cr) * ISLOT
                kcs = tl.load(wi + K_P2, mask=cm, other=_BIG, cache_modifier=".cg")
                kstar = tl.min(kcs, axis=0)
                vals = tl.load(
                    wsf_ptr + (b64 * C + cr) * FSLOT + kstar,
                    mask=cm,
                    other=float("-inf"),
                    cache_modifier=".cg",
                )
                idxs = tl.load(wi + kstar, mask=cm, other=_BIG, cache_modifier=".cg")
                vmax = tl.max(vals, axis=0)
                token = tl.min(tl.where(cm & (vals == vmax), idxs, _BIG), axis=0)
                row_bad = _any(cm & (idxs == -1))
            else:
                kstar = k - 1
                token = best_i
                row_bad = tl.where(token == -1, 1, 0)
            flags = tl.where((flags == 0) & (row_bad > 0), BAD_TARGET, flags)
            _write_out(tok_ptr, num_ptr, st_ptr, b, b64, K, kr, ids, kstar, token, flags)
    else:
        flags = flags | tl.where(_any(valid & _bad(qx)) > 0, BAD_TARGET, 0)
        if HAS_P:
            px = _f32(tl.load(p_ptr + (b64 * K + kr) * V + ids, mask=valid, other=1.0))
            flags = flags | tl.where(_any(valid & _bad(px)) > 0, BAD_DRAFT, 0)
        else:
            px = tl.full([K_P2], 1.0, tl.float32)
        if HAS_U:
            u = tl.load(u_ptr + b64 * (K + 1) + kr, mask=kr <= K, other=0.0)
            u_bad = (u != u) | (u < 0.0) | (u >= 1.0)
            flags = flags | tl.where(_any((kr <= K) & u_bad) > 0, BAD_UNIFORM, 0)
        else:
            if SEED_FROM_PTR:
                s = tl.load(seed_ptr)
                key_lo = s.to(tl.uint32)
                key_hi = (s >> 32).to(tl.uint32)
                off = b64 * 0
            else:
                key_lo = seed_lo.to(tl.uint32, bitcast=True)
                key_hi = seed_hi.to(tl.uint32, bitcast=True)
                off = (off_hi.to(tl.int64) << 32) | off_lo.to(tl.uint32, bitcast=True).to(tl.int64)
            u = _uniform(key_lo, key_hi, off + b64 * (K + 1) + kr)
        # Rule 1 in float64: the product of two float32 numbers is exact there.
        acc = valid & (u.to(tl.float64) * px.to(tl.float64) < qx.to(tl.float64))
        kstar = tl.min(tl.where(kmask & ~acc, kr, K), axis=0)
        rejected = kstar < K
        x_star = tl.sum(tl.where(kr == kstar, ids, 0), axis=0)
        p_lim = tl.where(rejected, V, 0)
        x_hot = tl.where(rejected, x_star, -1)
        u_last = tl.sum(tl.where(kr == K, u, 0.0), axis=0)
        q_row = q_ptr + (qrow0 + kstar) * V
        p_row = p_ptr + (b64 * K + kstar) * V

        # Pass 1: the chunk's residual sums, the running total after each tile kept in registers.
        # Tile sums are float32, the running sums float64: the inverse CDF then errs by about a
        # tile's rounding, not the whole row's.
        # Masked-off loads read 0.0, which is not a bad value.
        running = tl.zeros([NT_P2], tl.float64).sum(axis=0)
        cum = tl.zeros([NT_P2], tl.float64)
        qbad = b * 0
        pbad = b * 0
        if PREFETCH:
            # Register double buffering: the next tile's loads are in flight while this one is
            # reduced.
            lim = tl.minimum(t1 * BLOCK, V)
            qn, pn = _load_tile(q_row, p_row, t0 * BLOCK + ar, lim, p_lim, HAS_P)
            for t in range(t0, t1):
                qc, pc = qn, pn
                qn, pn = _load_tile(q_row, p_row, (t + 1) * BLOCK + ar, lim, p_lim, HAS_P)
                qbad = tl.maximum(qbad, _any(_bad(_f32(qc))))
                if HAS_P:
                    pbad = tl.maximum(pbad, _any(_bad(_f32(pc))))
                r = _combine(qc, pc, t * BLOCK + ar, x_hot, HAS_P)
                running += _tile_sum(r)
                cum = tl.where(tr == t - t0, running, cum)
        else:
            for t in range(t0, t1):
                offs = t * BLOCK + ar
                qc, pc = _load_tile(q_row, p_row, offs, V, p_lim, HAS_P)
                qbad = tl.maximum(qbad, _any(_bad(_f32(qc))))
                if HAS_P:
                    pbad = tl.maximum(pbad, _any(_bad(_f32(pc))))
                r = _combine(qc, pc, offs, x_hot, HAS_P)
                running += _tile_sum(r)
                cum = tl.where(tr == t - t0, running, cum)
        running = _encode_bad(running, qbad, pbad)

        if C > 1:
            tl.store(wsf_ptr + slot, running)
            tl.store(wsf_ptr + slot + 1 + tr, cum, mask=tr < t1 - t0)
            tl.debug_barrier()
            prev = tl.atomic_add(cnt_ptr + b, 1, sem="acq_rel")
        else:
            prev = C - 1
        if prev == C - 1:
            if C > 1:
                tl.store(cnt_ptr + b, 0)
                tot = tl.load(
                    wsf_ptr + (b64 * C + cr) * FSLOT, mask=cm, other=0.0, cache_modifier=".cg"
                )
                cumc = tl.cumsum(tot, axis=0)
                total = tl.sum(tl.where(cr == C - 1, cumc, 0.0), axis=0)
                thr = u_last.to(tl.float64) * total
                cs = tl.min(tl.where(cm & (cumc > thr) & (tot > 0), cr, C_P2), axis=0)
                cs = tl.where(cs == C_P2, tl.max(tl.where(cm & (tot > 0), cr, 0), axis=0), cs)
                base = tl.sum(tl.where(cr < cs, tot, 0.0), axis=0)
                nt = tl.minimum(TPC, NT - cs * TPC)
                tc = tl.load(
                    wsf_ptr + (b64 * C + cs) * FSLOT + 1 + tr,
                    mask=tr < nt,
                    other=0.0,
                    cache_modifier=".cg",
                )
            else:
                total = running
                thr = u_last.to(tl.float64) * total
                cs = 0
                base = total * 0.0
                nt = t1 - t0
                tc = cum
            fl2 = _classify(total)
            token = b * 0
            if fl2 != 0:
                token = b * 0  # flagged: no draw
            elif total > 0:
                # The tile of chunk cs where the running sum crosses the threshold. ``tc`` grows
                # tile by tile in sequence, so a crossing tile has a positive sum; a threshold that
                # rounding put past the chunk's end takes the last tile with a positive sum.
                thr_l = thr - base
                tv = tr < nt
                tl_ = tl.min(tl.where(tv & (tc > thr_l), tr, NT_P2), axis=0)
                tmax = tl.max(tl.where(tv, tc, 0.0), axis=0)
                tl_ = tl.where(
                    tl_ == NT_P2, tl.min(tl.where(tv & (tc >= tmax), tr, NT_P2), axis=0), tl_
                )
                tile_base = tl.max(tl.where(tr < tl_, tc, 0.0), axis=0)
                t = cs * TPC + tl_
                offs = t * BLOCK + ar
                m = offs < V
                r = _residual(q_row, p_row, offs, V, p_lim, x_hot, HAS_P)
                token = t * BLOCK + _pick_in_tile(r, ar, m, tile_base, thr_l, BLOCK)
            else:
                # The residual is all zero (p >= q everywhere): draw from q itself (rule 2).
                token, q_total = _sample_full_row(q_row, V, u_last, BLOCK)
                fl2 = tl.where(q_total > _FMAX, OVERFLOW, tl.where(q_total > 0, 0, ZERO_ROW))
            flags = tl.where(flags == 0, fl2, flags)
            _write_out(tok_ptr, num_ptr, st_ptr, b, b64, K, kr, ids, kstar, token, flags)


INTERPRET = type(verify_kernel).__name__ == "InterpretedFunction"
