"""The ``triton`` backend's block-verification kernel (docs/rules.md): one launch per call.

Imported only lazily (by :mod:`specsample.backends.triton_backend` on the first ``rule="block"``
call in random mode), because it imports triton. Like the token kernel, it runs compiled or under
the CPU interpreter depending on ``TRITON_INTERPRET`` when this module is imported.

Grid: ``(ceil(B / ROWS),)``: each program serves ``ROWS`` requests (1 for long rows; short rows are
packed, see :func:`block_config`) in ``[ROWS, BLOCK]`` tiles, and for each request:

1. the K draft ids, the drafted entries ``q_k(x_k)`` and ``p_k(x_k)`` and the K+1 coins (loaded or
   drawn by Philox exactly as the token kernel draws them: counter ``offset + b * (K+1) + k``);
   the prefix weights ``w_0..w_K`` in float64, one step after another as the reference computes
   them (the same operations, so the same bits);
2. rows ``0..K-1`` of ``q`` and ``p`` in full: the bad-value checks of docs/rules.md ("Status",
   step 2) on every row, and the residual masses ``Z_k = sum_v max(0, w_k q_k(v) - p_k(v))`` of
   rows ``1..K-1``, elementwise and summed in float64;
3. the thresholds ``h_{k-1} = Z_k / (Z_k + 1 - w_k)`` (1 where the denominator is 0),
   ``h_{K-1} = w_K``, and ``tau = max{k + 1 : u_k < h_k}``;
4. the final row, streamed twice: its float64 sum (``max(0, w_tau q_tau - p_tau)``, the bonus row
   ``q_K`` when ``tau = K``, ``q_tau`` when the residual sums to 0), then the inverse CDF: the
   smallest ``j`` with ``cumsum(r)[j] > u_K * sum(r)``, found tile by tile and scanned with
   ``tl.cumsum`` in the crossing tile; a zero-weight token is never chosen, and a threshold
   rounded past the row's end takes the last positive token.

The bytes read per request: ``2K`` full rows (``K`` without ``draft_probs``) plus the final row
twice (the second pass stops at the crossing tile; when ``tau < K`` the row was streamed in step 2
and is often still in L2). A request flagged in step 1 reads no row; one flagged in step 2 draws
nothing.
"""

from __future__ import annotations

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
def _row_tile(q_rows, p_rows, offs, V, live, w, x_k, use_res, HAS_P: tl.constexpr):
    """One ``[ROWS, BLOCK]`` tile of the final rows in float64: ``max(0, w q - p)`` where
    ``use_res`` is 1 (``p`` one-hot at ``x_k`` without draft rows), else ``q``; 0 past the row's
    end and in requests that are not ``live`` (no bytes read there)."""
    m = live[:, None] & (offs < V)[None, :]
    q = _f32(tl.load(q_rows[:, None] + offs[None, :], mask=m, other=0.0)).to(tl.float64)
    if HAS_P:
        # no p bytes where the row is q itself
        mp = m & (use_res != 0)[:, None]
        p = _f32(tl.load(p_rows[:, None] + offs[None, :], mask=mp, other=0.0)).to(tl.float64)
    else:
        p = tl.where(offs[None, :] == x_k[:, None], 1.0, 0.0).to(tl.float64)
    res = tl.maximum(w[:, None] * q - p, 0.0)
    return tl.where((use_res != 0)[:, None], res, q)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def block_kernel(
    ids_ptr,  # [B, K] int32/int64
    p_ptr,  # [B, K, V] (unused when not HAS_P)
    q_ptr,  # [B, K+1, V]
    u_ptr,  # [B, K+1] float32 (unused when not HAS_U)
    seed_ptr,  # [1] int64 (unused when not SEED_FROM_PTR)
    tok_ptr,  # [B, K+1] int64 out
    num_ptr,  # [B] int64 out
    st_ptr,  # [B] int32 out: status bits
    seed_lo,
    seed_hi,
    off_lo,
    off_hi,  # Philox key and base counter, as 32-bit halves (signed int32 bit patterns)
    B,
    V,
    K,
    K_P2: tl.constexpr,  # power of two > K
    ROWS: tl.constexpr,  # requests per program
    BLOCK: tl.constexpr,
    HAS_P: tl.constexpr,
    HAS_U: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr,
):
    rb = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)  # [R] requests
    rmask = rb < B
    kr = tl.arange(0, K_P2)
    kmask = rmask[:, None] & (kr < K)[None, :]  # [R, K_P2]
    ar = tl.arange(0, BLOCK)
    NT = tl.cdiv(V, BLOCK)

    # Step 1: ids, drafted entries, coins (as the token kernel), per request.
    ids = tl.load(ids_ptr + rb[:, None] * K + kr[None, :], mask=kmask, other=0).to(tl.int64)
    valid = kmask & (ids >= 0) & (ids < V)
    flags = tl.where(_anyr(kmask & ~valid) > 0, BAD_ID, 0)
    qrow0 = rb * (K + 1)
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
        u = tl.load(u_ptr + rb[:, None] * (K + 1) + kr[None, :], mask=umask, other=0.0)
        u_bad = (u != u) | (u < 0.0) | (u >= 1.0)
        flags = flags | tl.where(_anyr(umask & u_bad) > 0, BAD_UNIFORM, 0)
    else:
        if SEED_FROM_PTR:
            seed = tl.load(seed_ptr)  # not ``s``: the draw's loop below carries an ``s`` of its own
            key_lo = seed.to(tl.uint32)
            key_hi = (seed >> 32).to(tl.uint32)
            off = seed * 0
        else:
            key_lo = seed_lo.to(tl.uint32, bitcast=True)
            key_hi = seed_hi.to(tl.uint32, bitcast=True)
            off = (off_hi.to(tl.int64) << 32) | off_lo.to(tl.uint32, bitcast=True).to(tl.int64)
        u = _uniform(key_lo, key_hi, off + rb[:, None] * (K + 1) + kr[None, :])
    u64 = u.to(tl.float64)

    # Prefix weights w_0..w_K (float64), step by step as the reference: w_{k+1} =
    # min(1, w_k q / p), the ratio's limit where p = 0.
    qx64 = qx.to(tl.float64)
    px64 = px.to(tl.float64)
    zero64 = tl.zeros([ROWS], tl.float64)
    w = zero64 + 1.0
    wv = tl.where(kr[None, :] == 0, w[:, None], 0.0)
    for k in range(0, K):
        num = w * _col(qx64, k, kr)
        pk = _col(px64, k, kr)
        ratio = tl.minimum(num / tl.where(pk > 0, pk, 1.0), 1.0)
        w = tl.where(pk > 0, ratio, tl.where(num > 0, 1.0, 0.0))
        wv = tl.where(kr[None, :] == k + 1, w[:, None], wv)

    # Step 2: rows 0..K-1 of q and p in full (bad values), and the residual masses of rows 1..K-1,
    # turned into thresholds at once. A request flagged in step 1 reads no rows.
    live = rmask & (flags == 0)
    hv = tl.zeros([ROWS, K_P2], tl.float64)
    qbad = flags * 0
    pbad = flags * 0
    for k in range(0, K):
        q_rows = q_ptr + (qrow0 + k) * V
        p_rows = p_ptr + (rb * K + k) * V
        wk = _col(wv, k, kr)
        x_k = _col(ids, k, kr)
        z = zero64
        for t in range(0, NT):
            offs = t * BLOCK + ar
            m = live[:, None] & (offs < V)[None, :]
            q = _f32(tl.load(q_rows[:, None] + offs[None, :], mask=m, other=0.0))
            qbad = tl.maximum(qbad, _anyr(_bad(q)))
            if HAS_P:
                p = _f32(tl.load(p_rows[:, None] + offs[None, :], mask=m, other=0.0))
                pbad = tl.maximum(pbad, _anyr(_bad(p)))
                p64 = p.to(tl.float64)
            else:
                p64 = tl.where(offs[None, :] == x_k[:, None], 1.0, 0.0).to(tl.float64)
            z += tl.sum(tl.maximum(wk[:, None] * q.to(tl.float64) - p64, 0.0), axis=1)
        denom = z + 1.0 - wk
        h = tl.where(denom > 0, z / tl.where(denom > 0, denom, 1.0), 1.0)
        hv = tl.where((kr[None, :] == k - 1) & (k > 0), h[:, None], hv)
    rows_flags = tl.where(qbad > 0, BAD_TARGET, 0) | tl.where(pbad > 0, BAD_DRAFT, 0)
    flags = tl.where(flags == 0, rows_flags, flags)

    # Step 3: tau, then the final row.
    hv = tl.where(kr[None, :] == K - 1, _col(wv, K, kr)[:, None], hv)
    passed = kmask & (u64 < hv)
    tau = tl.max(tl.where(passed, kr[None, :] + 1, 0), axis=1)  # [R]
    u_last = _col(u64, K, kr)
    w_tau = _at(wv, tau, kr)
    x_tau = _at(ids, tau, kr)  # unused when tau = K
    q_rows = q_ptr + (qrow0 + tau) * V
    p_rows = p_ptr + (rb * K + tl.minimum(tau, K - 1)) * V
    use_res = tl.where(tau < K, 1, 0)
    live = rmask & (flags == 0)

    # Pass 1: the row's sum (and, for the bonus row, its bad values); a residual summing to 0
    # falls back to q_tau (read once more).
    total = zero64
    last_pos = tl.full([ROWS], -1, tl.int32)
    lbad = flags * 0
    for t in range(0, NT):
        offs = t * BLOCK + ar
        r = _row_tile(q_rows, p_rows, offs, V, live, w_tau, x_tau, use_res, HAS_P)
        total += tl.sum(r, axis=1)
        last_pos = tl.maximum(last_pos, tl.max(tl.where(r > 0, offs[None, :], -1), axis=1))
        lbad = tl.maximum(lbad, _anyr((use_res == 0)[:, None] & _bad(r.to(tl.float32))))
    refill = live & (use_res != 0) & (total == 0)
    if tl.max(refill.to(tl.int32), axis=0) > 0:
        use_res = tl.where(refill, 0, use_res)
        for t in range(0, NT):
            offs = t * BLOCK + ar
            r = _row_tile(q_rows, p_rows, offs, V, refill, w_tau, x_tau, use_res, HAS_P)
            total += tl.sum(r, axis=1)
            last_pos = tl.maximum(last_pos, tl.max(tl.where(r > 0, offs[None, :], -1), axis=1))
    last_flags = tl.where(
        lbad > 0,
        BAD_TARGET,
        tl.where(total > _FMAX64, OVERFLOW, tl.where(total == 0, ZERO_ROW, 0)),
    )
    flags = tl.where(flags == 0, last_flags, flags)

    # Pass 2: the inverse CDF, each request up to the tile where its running sum crosses its
    # threshold.
    thr = u_last * total
    token = tl.maximum(last_pos, 0)
    todo = rmask & (flags == 0)
    running = zero64
    t = 0
    while (t < NT) & (tl.max(todo.to(tl.int32), axis=0) > 0):
        offs = t * BLOCK + ar
        m = (offs < V)[None, :]
        r = _row_tile(q_rows, p_rows, offs, V, todo, w_tau, x_tau, use_res, HAS_P)
        s = tl.sum(r, axis=1)
        cross = todo & (running + s > thr)
        if tl.max(cross.to(tl.int32), axis=0) > 0:
            csum = running[:, None] + tl.cumsum(r, axis=1)
            j = tl.min(tl.where(m & (csum > thr[:, None]), ar[None, :], BLOCK), axis=1)
            jj = tl.minimum(j, BLOCK - 1)
            # never a zero-weight token: step back to the last positive entry at or before j
            pos = r > 0
            pick = tl.max(tl.where(pos & (ar[None, :] <= jj[:, None]), ar[None, :], -1), axis=1)
            pick = tl.where(pick < 0, tl.max(tl.where(pos, ar[None, :], 0), axis=1), pick)
            token = tl.where(cross, t * BLOCK + pick, token)
            todo = todo & ~cross
        running += s
        t += 1

    # Outputs; a flagged request gets all -1, 0 emitted and its status bits.
    ok = flags == 0
    row = tl.where(kr[None, :] < tau[:, None], ids, -1)
    row = tl.where(kr[None, :] == tau[:, None], token.to(tl.int64)[:, None], row)
    row = tl.where(ok[:, None], row, -1)
    tl.store(tok_ptr + rb[:, None] * (K + 1) + kr[None, :], row, mask=umask)
    tl.store(num_ptr + rb, tl.where(ok, tau + 1, 0).to(tl.int64), mask=rmask)
    tl.store(st_ptr + rb, flags.to(tl.int32), mask=rmask)


INTERPRET = type(block_kernel).__name__ == "InterpretedFunction"


def block_config(batch: int, vocab: int, interpret: bool) -> tuple[int, int, int]:
    """``(BLOCK, ROWS, num_warps)``: tokens per tile, requests per program, warps.

    A program streams whole rows, so tiles are large for a long vocabulary; short rows are packed
    several requests to a program (``ROWS``) so that a tile stays a useful size. Under the
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


def launch_block(
    ids,
    p,
    q,
    u,
    seed_t,
    tok,
    num,
    status,
    seed_halves,
    offset_halves,
    B,
    K,
    V,
    has_p,
    has_u,
    seed_from_ptr,
) -> None:
    """Launch :func:`block_kernel` on ``ceil(B / ROWS)`` programs (the caller chose the device;
    triton launches on the current stream). Arguments as the token kernel's launch in
    ``triton_backend``; ``seed_halves`` and ``offset_halves`` are ``(low, high)`` int32 pairs."""
    block, rows, warps = block_config(B, V, INTERPRET)
    k_p2 = 1 << K.bit_length()  # a power of two > K
    block_kernel[(-(-B // rows),)](
        ids,
        p,
        q,
        u,
        seed_t,
        tok,
        num,
        status,
        *seed_halves,
        *offset_halves,
        B,
        V,
        K,
        K_P2=k_p2,
        ROWS=rows,
        BLOCK=block,
        HAS_P=has_p,
        HAS_U=has_u,
        SEED_FROM_PTR=seed_from_ptr,
        num_warps=warps,
    )
