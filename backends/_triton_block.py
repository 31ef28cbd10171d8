"""The ``triton`` backend's block-verification kernel (docs/rules.md): one launch per call.

Imported only lazily (by :mod:`specsample.backends.triton_backend` on the first ``rule="block"``
call in random mode), because it imports triton. Like the token kernel, it runs compiled or under
the CPU interpreter depending on ``TRITON_INTERPRET`` when this module is imported.

Grid: ``(B,)``, one program per request, tiles of ``BLOCK`` tokens:

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

The bytes read: ``2K`` full rows (``K`` without ``draft_probs``) plus the final row twice (the
second pass stops at the crossing tile; the row was just read and is usually in L2).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._triton_kernels import _any, _bad, _f32, _uniform, _write_out

INTERPRET = False  # set below, after the kernel exists

# status bits (specsample.Status; docs/rules.md, "Status")
_BAD_ID = tl.constexpr(1)
_BAD_TARGET = tl.constexpr(2)
_BAD_DRAFT = tl.constexpr(4)
_BAD_UNIFORM = tl.constexpr(8)
_ZERO_ROW = tl.constexpr(16)
_OVERFLOW = tl.constexpr(32)
_FMAX64 = tl.constexpr(3.4028234663852886e38)  # largest float32


@triton.jit
def _pick(x, k, kr):
    """Element ``k`` of the small vector ``x`` (indexed by ``kr``) as a scalar."""
    return tl.sum(tl.where(kr == k, x, 0), axis=0)


@triton.jit
def _row_tile(q_row, p_row, offs, V, w, x_k, use_res, HAS_P: tl.constexpr):
    """One tile of the final row in float64: ``max(0, w q - p)`` where ``use_res`` is 1 (``p``
    one-hot at ``x_k`` without draft rows), else (0) ``q``; 0 past the row's end."""
    m = offs < V
    q = _f32(tl.load(q_row + offs, mask=m, other=0.0)).to(tl.float64)
    if HAS_P:
        # no p bytes where the row is q itself
        p = _f32(tl.load(p_row + offs, mask=offs < V * use_res, other=0.0)).to(tl.float64)
    else:
        p = tl.where(offs == x_k, 1.0, 0.0).to(tl.float64)
    res = tl.maximum(w * q - p, 0.0)
    return tl.where(use_res != 0, res, q)


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
    V,
    K,
    K_P2: tl.constexpr,  # power of two > K
    BLOCK: tl.constexpr,
    HAS_P: tl.constexpr,
    HAS_U: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr,
):
    b = tl.program_id(0)
    b64 = b.to(tl.int64)
    kr = tl.arange(0, K_P2)
    kmask = kr < K
    ar = tl.arange(0, BLOCK)
    NT = tl.cdiv(V, BLOCK)

    # Step 1: ids, drafted entries, coins (as the token kernel).
    ids = tl.load(ids_ptr + b64 * K + kr, mask=kmask, other=0).to(tl.int64)
    valid = kmask & (ids >= 0) & (ids < V)
    flags = tl.where(_any(kmask & ~valid) > 0, _BAD_ID, 0)
    qrow0 = b64 * (K + 1)
    qx = _f32(tl.load(q_ptr + (qrow0 + kr) * V + ids, mask=valid, other=0.0))
    flags = flags | tl.where(_any(valid & _bad(qx)) > 0, _BAD_TARGET, 0)
    if HAS_P:
        px = _f32(tl.load(p_ptr + (b64 * K + kr) * V + ids, mask=valid, other=1.0))
        flags = flags | tl.where(_any(valid & _bad(px)) > 0, _BAD_DRAFT, 0)
    else:
        px = tl.full([K_P2], 1.0, tl.float32)
    if HAS_U:
        u = tl.load(u_ptr + b64 * (K + 1) + kr, mask=kr <= K, other=0.0)
        u_bad = (u != u) | (u < 0.0) | (u >= 1.0)
        flags = flags | tl.where(_any((kr <= K) & u_bad) > 0, _BAD_UNIFORM, 0)
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
    u64 = u.to(tl.float64)

    # Prefix weights w_0..w_K (float64), step by step as the reference: w_{k+1} =
    # min(1, w_k q / p), the ratio's limit where p = 0.
    qx64 = qx.to(tl.float64)
    px64 = px.to(tl.float64)
    zero64 = tl.zeros([K_P2], tl.float64).sum(axis=0)
    w = zero64 + 1.0
    wv = tl.where(kr == 0, w, 0.0)
    for k in range(0, K):
        num = w * _pick(qx64, k, kr)
        pk = _pick(px64, k, kr)
        ratio = tl.minimum(num / tl.where(pk > 0, pk, 1.0), 1.0)
        w = tl.where(pk > 0, ratio, tl.where(num > 0, 1.0, 0.0))
        wv = tl.where(kr == k + 1, w, wv)

    # Step 2: rows 0..K-1 of q and p in full (bad values), and the residual masses of rows 1..K-1,
    # turned into thresholds at once. A request flagged in step 1 reads no rows.
    nrows = tl.where(flags == 0, K, 0)
    hv = tl.zeros([K_P2], tl.float64)
    qbad = b * 0
    pbad = b * 0
    for k in range(0, nrows):
        q_row = q_ptr + (qrow0 + k) * V
        p_row = p_ptr + (b64 * K + k) * V
        wk = _pick(wv, k, kr)
        x_k = _pick(ids, k, kr)
        z = zero64
        for t in range(0, NT):
            offs = t * BLOCK + ar
            m = offs < V
            q = _f32(tl.load(q_row + offs, mask=m, other=0.0))
            qbad = tl.maximum(qbad, _any(_bad(q)))
            if HAS_P:
                p = _f32(tl.load(p_row + offs, mask=m, other=0.0))
                pbad = tl.maximum(pbad, _any(_bad(p)))
                p64 = p.to(tl.float64)
            else:
                p64 = tl.where(offs == x_k, 1.0, 0.0).to(tl.float64)
            z += tl.sum(tl.maximum(wk * q.to(tl.float64) - p64, 0.0), axis=0)
        denom = z + 1.0 - wk
        h = tl.where(denom > 0, z / tl.where(denom > 0, denom, 1.0), 1.0)
        hv = tl.where((kr == k - 1) & (k > 0), h, hv)
    rows_flags = tl.where(qbad > 0, _BAD_TARGET, 0) | tl.where(pbad > 0, _BAD_DRAFT, 0)
    flags = tl.where(flags == 0, rows_flags, flags)

    # Step 3: tau, then the final row.
    hv = tl.where(kr == K - 1, _pick(wv, K, kr), hv)
    tau = tl.max(tl.where(kmask & (u64 < hv), kr + 1, 0), axis=0)
    u_last = _pick(u64, K, kr)
    w_tau = _pick(wv, tau, kr)
    x_tau = _pick(ids, tau, kr)  # unused when tau = K
    q_row = q_ptr + (qrow0 + tau) * V
    p_row = p_ptr + (b64 * K + tl.minimum(tau, K - 1)) * V
    use_res = tl.where(tau < K, 1, 0)
    nt = tl.where(flags == 0, NT, 0)

    # Pass 1: the row's sum (and, for the bonus row, its bad values); a residual summing to 0
    # falls back to q_tau (read once more).
    total = zero64
    last_pos = -1
    lbad = b * 0
    for t in range(0, nt):
        offs = t * BLOCK + ar
        r = _row_tile(q_row, p_row, offs, V, w_tau, x_tau, use_res, HAS_P)
        total += tl.sum(r, axis=0)
        last_pos = tl.maximum(last_pos, tl.max(tl.where(r > 0, offs, -1), axis=0))
        if use_res == 0:
            q = _f32(tl.load(q_row + offs, mask=offs < V, other=0.0))
            lbad = tl.maximum(lbad, _any(_bad(q)))
    if (use_res != 0) & (total == 0):
        use_res = use_res * 0
        for t in range(0, nt):
            offs = t * BLOCK + ar
            r = _row_tile(q_row, p_row, offs, V, w_tau, x_tau, use_res, HAS_P)
            total += tl.sum(r, axis=0)
            last_pos = tl.maximum(last_pos, tl.max(tl.where(r > 0, offs, -1), axis=0))
    last_flags = tl.where(
        lbad > 0,
        _BAD_TARGET,
        tl.where(total > _FMAX64, _OVERFLOW, tl.where(total == 0, _ZERO_ROW, 0)),
    )
    flags = tl.where(flags == 0, last_flags, flags)

    # Pass 2: the inverse CDF, up to the tile where the running sum crosses the threshold.
    thr = u_last * total
    token = tl.maximum(last_pos, 0)
    done = tl.where(flags == 0, 0, 1)
    running = zero64
    t = 0
    while (t < nt) & (done == 0):
        offs = t * BLOCK + ar
        m = offs < V
        r = _row_tile(q_row, p_row, offs, V, w_tau, x_tau, use_res, HAS_P)
        s = tl.sum(r, axis=0)
        if running + s > thr:
            csum = running + tl.cumsum(r, axis=0)
            j = tl.min(tl.where(m & (csum > thr), ar, BLOCK), axis=0)
            jj = tl.minimum(j, BLOCK - 1)
            # never a zero-weight token: step back to the last positive entry at or before j
            pick = tl.max(tl.where((r > 0) & (ar <= jj), ar, -1), axis=0)
            pick = tl.where(pick < 0, tl.max(tl.where(r > 0, ar, 0), axis=0), pick)
            token = t * BLOCK + pick
            done = 1
        running += s
        t += 1
    _write_out(tok_ptr, num_ptr, st_ptr, b, b64, K, kr, ids, tau, token, flags)


INTERPRET = type(block_kernel).__name__ == "InterpretedFunction"


def block_config(vocab: int, interpret: bool) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` for a vocabulary size: one program streams whole rows, so tiles are
    large on a GPU; under the interpreter a tile is one numpy operation, the larger the faster."""
    block = max(32, 1 << (max(vocab, 1) - 1).bit_length())
    if interpret:
        return min(block, 8192), 1
    return min(block, 2048), 8 if block >= 2048 else 4


def launch_block(
    ids, p, q, u, seed_t, tok, num, status, seed_halves, offset_halves, B, K, V, has_p, has_u,
    seed_from_ptr,
) -> None:
    """Launch :func:`block_kernel` on ``B`` programs (the caller chose the device; triton launches
    on the current stream). Arguments as the token kernel's launch in ``triton_backend``."""
    block, warps = block_config(V, INTERPRET)
    k_p2 = 1 << K.bit_length()  # a power of two > K
    block_kernel[(B,)](
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
        V,
        K,
        K_P2=k_p2,
        BLOCK=block,
        HAS_P=has_p,
        HAS_U=has_u,
        SEED_FROM_PTR=seed_from_ptr,
        num_warps=warps,
    )
