"""The ``triton`` backend's serving kernels (docs/serving.md): one launch per serving call with
target probabilities, two with target logits.

Imported only lazily (by :mod:`specsample.backends.triton_backend` on the first serving call),
because it imports triton. It runs compiled or under the CPU interpreter depending on
``TRITON_INTERPRET`` when :mod:`specsample.backends._triton_kernels` is imported.

:func:`serving_kernel`, grid ``(ceil(B / ROWS),)``: each program serves ``ROWS`` requests in
``[ROWS, BLOCK]`` tiles (:func:`serving_config`: compiled, the constexprs follow the vocabulary,
not the batch). With target logits, :func:`serving_rows_kernel` runs first and does steps 2 and
4's row work for every owned row in parallel; the walk then reads its records. Logits or
probabilities are read in their dtype and widened to float32; no probability row is ever written.
Per request:

1. the draft ids, the parameters and the coins (explicit ``uniforms``; the request's own Philox
   stream from ``seeds`` / ``offsets``, word ``n % 4`` of counter ``n // 4``, as
   :func:`specsample.philox.philox_stream_uniforms`; or a generator's key, drawn as the token
   kernel draws);
2. a check pass over every owned row: the bad-value and no-mass checks of the status, and each
   target row's maximum and argmax (ties to the smallest id);
3. greedy requests: accepted while the draft equals the argmax; the last token is the argmax of
   the stopping row;
4. sampling requests, row after row until the first rejection: :func:`_row_params` finds the
   row's filter thresholds and normaliser (see there), the accept test ``u * p'(x) < q'(x)`` runs
   on the two values at the draft id;
5. the last row (the rejecting one, or the bonus row), streamed twice: the residual's sum
   ``max(0, q' - p')`` (``q'`` when it is all zero), then the inverse CDF with the request's last
   coin, found tile by tile.

Filters are thresholds on the raw value's *ordered key* (the float32 bit pattern mapped to an
int32 that sorts as the value): the weight ``w = exp((x - max) / T)`` (logits) or
``(x / max) ** (1 / T)`` (probabilities) increases with ``x``, so "the k-th largest value" and
"the least probable token top-p keeps" are both keys, found by bisection over the key range with
one counting (top-k) or summing (top-p) pass per step. Weights and sums are float64.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from ._triton_block import _anyr, _at, _col
from ._triton_kernels import _f32
from ._triton_status import BAD_DRAFT, BAD_ID, BAD_TARGET, BAD_UNIFORM, ZERO_ROW

_FMAX = tl.constexpr(3.4028234663852886e38)  # largest float32
_KEY_MIN = tl.constexpr(-2147483648)  # below every value's key: "keep everything"

# coin sources (the runtime ``coins`` argument)
COINS_UNIFORMS = 0  # explicit [B, K+1] float32
COINS_SEEDS = 1  # per-request seeds / offsets, the serving Philox stream
COINS_KEY = 2  # one generator key: the token kernel's stream, counter offset + b * (K+1) + i


@triton.jit
def _put(x, k, v, kr):
    """``x`` with column ``k`` replaced by the ``[ROWS]`` vector ``v``."""
    return tl.where(kr[None, :] == k, v[:, None], x)


@triton.jit
def _key(x):
    """The ordered int32 key of float32 values (not NaN): ``a < b`` iff ``key(a) < key(b)``;
    ``-0.0`` and ``0.0`` share key 0."""
    bits = x.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return tl.where(x == 0.0, 0, key)


@triton.jit
def _skey(x, SHIFT: tl.constexpr):
    """``_key(x) >> SHIFT`` as int64. Values widened from a 16-bit type have their low float32 bits
    zero (bfloat16: 16, float16: 13), so the shifted key still orders and separates them, and a
    bisection over it takes 16 (19) steps instead of 32."""
    k = _key(x)
    if SHIFT > 0:
        k = k >> SHIFT
    return k.to(tl.int64)


@triton.jit
def _is_bad(x, IS_LOGITS: tl.constexpr):
    """Elementwise (float32): a value the status flags. Logits: NaN or ``+inf`` (``-inf`` masks a
    token). Probabilities: NaN, infinite or negative (``-0.0`` is fine)."""
    if IS_LOGITS:
        return (x != x) | (x > _FMAX)
    else:
        return (x != x) | (x < 0.0) | (x > _FMAX)


@triton.jit
def _no_mass(top, IS_LOGITS: tl.constexpr):
    """``[ROWS]``: the row maximum ``top`` leaves no positive weight."""
    if IS_LOGITS:
        return top == float("-inf")
    else:
        return top <= 0.0


@triton.jit
def _weight(x, top, temp, IS_LOGITS: tl.constexpr):
    """Float64 weights of the float32 values ``x``, given the row maximum ``top`` (float32) and the
    temperature ``temp`` (``> 0``), both broadcastable to ``x``: ``exp((x - top) / T)`` for logits,
    ``(x / top) ** (1 / T)`` for probabilities; 0 where ``x`` or the whole row has no mass."""
    t64 = temp.to(tl.float64)
    if IS_LOGITS:
        fine = (top > float("-inf")) & (x > float("-inf"))
        shift = tl.where(fine, x, 0.0).to(tl.float64) - tl.where(fine, top, 0.0).to(tl.float64)
        w = tl.exp(shift / t64)
    else:
        fine = (top > 0.0) & (x > 0.0)
        ratio = tl.where(fine, x, 1.0).to(tl.float64) / tl.where(fine, top, 1.0).to(tl.float64)
        # T = 1 exactly as the reference's power (q / max q) ** 1: the filters' boundaries hold
        w = tl.where(t64 == 1.0, ratio, tl.exp(tl.log(ratio) / t64))
    return tl.where(fine, w, 0.0)


@triton.jit
def _load(rows, offs, live, V, IS_LOGITS: tl.constexpr):
    """One ``[ROWS, BLOCK]`` float32 tile of the rows starting at ``rows`` ``[ROWS]`` (pointers),
    only for ``live`` requests; elsewhere ``-inf`` (logits) or 0 (probabilities), the values that
    carry no weight."""
    m = live[:, None] & (offs < V)[None, :]
    if IS_LOGITS:
        x = tl.load(rows[:, None] + offs[None, :], mask=m, other=float("-inf"))
    else:
        x = tl.load(rows[:, None] + offs[None, :], mask=m, other=0.0)
    return _f32(x), m


@triton.jit
def _row_params(
    rows,
    live,
    top,
    temp,
    top_k,
    top_p,
    V,
    IS_LOGITS: tl.constexpr,
    USE_TOP_K: tl.constexpr,
    USE_TOP_P: tl.constexpr,
    BLOCK: tl.constexpr,
    SHIFT: tl.constexpr,
):
    """The sampling distribution of one row per request (``transform_row``), as ``(cut, z)``:
    token ``j`` has probability ``w_j / z`` where ``skey(x_j) >= cut`` (:func:`_skey` with
    ``SHIFT``), else 0.

    ``rows`` ``[ROWS]`` row pointers, ``live`` which requests need the row, ``top`` its maximum
    (float32), ``temp`` / ``top_p`` float32 and ``top_k`` int64 ``[ROWS]``.

    - top-k: ``cut_k`` is the key of the k-th largest value, the largest key ``t`` with
      ``#{key >= t} >= k`` (ties at the boundary all kept);
    - top-p: with ``Z`` the weight the top-k set keeps, ``cut_p`` is the smallest key ``t`` with
      ``sum{w_j : key_j > t, key_j >= cut_k} < p * Z``: a token is kept iff the tokens strictly
      more probable than it hold less than ``p`` (tokens tied with the last kept one kept too);
    - ``z``: the weight of the kept set.
    """
    ar = tl.arange(0, BLOCK)
    NT = tl.cdiv(V, BLOCK)
    top2 = top[:, None]
    temp2 = temp[:, None]
    hi_key = _skey(top, SHIFT)
    key_min = tl.full(top.shape, _KEY_MIN, tl.int64) >> SHIFT  # below every key: keep everything
    cut = key_min
    if USE_TOP_K:
        active = live & (top_k > 0) & (top_k < V)
        lo = key_min  # #{key >= lo} = V >= k
        hi = hi_key + 1  # #{key >= hi} = 0 < k
        go = active & (hi - lo > 1)
        while tl.max(go.to(tl.int32), axis=0) > 0:
            mid = (lo + hi) >> 1
            count = tl.zeros(top.shape, tl.int64)
            for t in range(0, NT):
                offs = t * BLOCK + ar
                x, m = _load(rows, offs, go, V, IS_LOGITS)
                count += tl.sum(tl.where(m & (_skey(x, SHIFT) >= mid[:, None]), 1, 0), axis=1)
            enough = count >= top_k
            lo = tl.where(go & enough, mid, lo)
            hi = tl.where(go & ~enough, mid, hi)
            go = active & (hi - lo > 1)
        cut = tl.where(active, lo, cut)
    z = tl.zeros(top.shape, tl.float64)
    if tl.max(live.to(tl.int32), axis=0) > 0:  # (rows of greedy requests need no weights)
        for t in range(0, NT):
            offs = t * BLOCK + ar
            x, m = _load(rows, offs, live, V, IS_LOGITS)
            keep = m & (_skey(x, SHIFT) >= cut[:, None])
            z += tl.sum(tl.where(keep, _weight(x, top2, temp2, IS_LOGITS), 0.0), axis=1)
    if USE_TOP_P:
        active = live & (top_p < 1.0)
        goal = top_p.to(tl.float64) * z
        lo = cut - 1  # the mass above lo is z: not < p * z
        hi = hi_key  # nothing lies above the maximum: 0 < p * z
        go = active & (hi - lo > 1)
        while tl.max(go.to(tl.int32), axis=0) > 0:
            mid = (lo + hi) >> 1
            above = tl.zeros(top.shape, tl.float64)
            for t in range(0, NT):
                offs = t * BLOCK + ar
                x, m = _load(rows, offs, go, V, IS_LOGITS)
                kx = _skey(x, SHIFT)
                sel = m & (kx > mid[:, None]) & (kx >= cut[:, None])
                above += tl.sum(tl.where(sel, _weight(x, top2, temp2, IS_LOGITS), 0.0), axis=1)
            small = above < goal
            hi = tl.where(go & small, mid, hi)
            lo = tl.where(go & ~small, mid, lo)
            go = active & (hi - lo > 1)
        cut_p = tl.where(active, hi, cut)
        moved = active & (cut_p != cut)
        cut = cut_p
        if tl.max(moved.to(tl.int32), axis=0) > 0:
            z2 = tl.zeros(top.shape, tl.float64)
            for t in range(0, NT):
                offs = t * BLOCK + ar
                x, m = _load(rows, offs, moved, V, IS_LOGITS)
                keep = m & (_skey(x, SHIFT) >= cut[:, None])
                z2 += tl.sum(tl.where(keep, _weight(x, top2, temp2, IS_LOGITS), 0.0), axis=1)
            z = tl.where(moved, z2, z)
    return cut, z


@triton.jit
def _prob(x, top, temp, cut, z, IS_LOGITS: tl.constexpr, SHIFT: tl.constexpr):
    """Float64 probabilities ``w / z`` of the float32 values ``x`` (0 where the shifted key is
    below ``cut``); ``top``, ``temp``, ``cut`` and ``z`` broadcastable to ``x``."""
    w = _weight(x, top, temp, IS_LOGITS)
    keep = (_skey(x, SHIFT) >= cut) & (z > 0)
    return tl.where(keep, w / tl.where(z > 0, z, 1.0), 0.0)


@triton.jit
def _uniform_serving(key_lo, key_hi, n):
    """Number ``n`` (int64 tensor) of the serving Philox stream: word ``n % 4`` of
    Philox-4x32-10(counter ``n // 4``, subsequence 0) -> float32 in [0, 1)."""
    ctr = n >> 2
    c0 = ctr.to(tl.uint32)
    c1 = (ctr >> 32).to(tl.uint32)
    zero = c0 * 0
    r0, r1, r2, r3 = tl.philox_impl(c0, c1, zero, zero, key_lo, key_hi)
    lane = n & 3
    r = tl.where(lane == 0, r0, tl.where(lane == 1, r1, tl.where(lane == 2, r2, r3)))
    return (r >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _uniform_token(key_lo, key_hi, ctr):
    """The token kernel's stream: word 0 of Philox-4x32-10(counter ``ctr``) -> float32 in [0, 1)."""
    c0 = ctr.to(tl.uint32)
    c1 = (ctr >> 32).to(tl.uint32)
    zero = c0 * 0
    r, _, _, _ = tl.philox_impl(c0, c1, zero, zero, key_lo, key_hi)
    return (r >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _row_at(
    cuts, zs, k, kr, rows, need, top, temp, top_k, top_p, V, IS_LOGITS: tl.constexpr,
    USE_TOP_K: tl.constexpr, USE_TOP_P: tl.constexpr, BLOCK: tl.constexpr, SHIFT: tl.constexpr,
    ROWS_FIRST: tl.constexpr,
):  # fmt: skip
    """``(cut, z, cuts, zs)``: row ``k``'s distribution (:func:`_row_params`) for the ``[ROWS]``
    requests, read from column ``k`` of the ``[ROWS, K_P2]`` records ``cuts`` / ``zs`` (with
    ``ROWS_FIRST``) or computed from ``rows`` where ``need`` and kept in them."""
    if ROWS_FIRST:
        cut = _col(cuts, k, kr)
        z = _col(zs, k, kr)
    else:
        cut, z = _row_params(
            rows, need, top, temp, top_k, top_p, V, IS_LOGITS, USE_TOP_K, USE_TOP_P, BLOCK, SHIFT
        )
        cuts = _put(cuts, k, cut, kr)
        zs = _put(zs, k, z, kr)
    return cut, z, cuts, zs


#: bits of a row record's flags (serving_rows_kernel)
ROW_BAD = tl.constexpr(1)  # a value the status flags
ROW_EMPTY = tl.constexpr(2)  # no NaN and no mass: the row's maximum carries no weight


@triton.jit
def _scan_row(rows, live, V, IS_LOGITS: tl.constexpr, ARG: tl.constexpr, BLOCK: tl.constexpr):
    """One pass over one row per request (``rows`` ``[ROWS]`` pointers, ``live`` ``[ROWS]``):
    ``(top, arg, bad, nan)``, the maximum (float32, ``-inf`` when no value is read), the smallest id
    holding it (int64; with ``ARG``, else 0), and int32 flags: a value the status flags, a NaN."""
    ar = tl.arange(0, BLOCK)
    top = tl.full(live.shape, float("-inf"), tl.float32)
    arg = tl.zeros(live.shape, tl.int64)
    bad = tl.zeros(live.shape, tl.int32)
    nan = tl.zeros(live.shape, tl.int32)
    if tl.max(live.to(tl.int32), axis=0) > 0:
        for t in range(0, tl.cdiv(V, BLOCK)):
            offs = t * BLOCK + ar
            x, m = _load(rows, offs, live, V, IS_LOGITS)
            bad = tl.maximum(bad, _anyr(m & _is_bad(x, IS_LOGITS)))
            nan = tl.maximum(nan, _anyr(m & (x != x)))  # NaN makes the reference's maximum NaN
            xs = tl.where(m & (x == x), x, float("-inf"))
            tile_top = tl.max(xs, axis=1)
            if ARG:
                first = tl.min(tl.where(xs == tile_top[:, None], offs[None, :], 2147483647), axis=1)
                arg = tl.where(tile_top > top, first.to(tl.int64), arg)
            top = tl.maximum(top, tile_top)
    return top, arg, bad, nan


@triton.jit(do_not_specialize=["B", "K"])
def serving_rows_kernel(
    num_draft_ptr,  # [B] int64 draft counts in [0, K]
    q_ptr,  # [B, K+1, V] target logits or probabilities
    d_ptr,  # [B, K, V] draft logits or probabilities (unused when not HAS_DRAFT)
    temp_ptr,  # [B] float32 (0 = greedy)
    top_k_ptr,  # [B] int64 (0 = off)
    top_p_ptr,  # [B] float32 (1 = off)
    pflags_ptr,  # [B] int32 status bits found by validation
    top_ptr,  # [B, 2K+1] float32 out: row maximum (target rows 0..K, then draft rows 0..K-1)
    arg_ptr,  # [B, 2K+1] int64 out: the target rows' argmax
    rflag_ptr,  # [B, 2K+1] int32 out: ROW_BAD | ROW_EMPTY
    cut_ptr,  # [B, 2K+1] int64 out: the sampling rows' (cut, z) (_row_params)
    z_ptr,  # [B, 2K+1] float64 out
    B,
    V,
    K,
    ROWS: tl.constexpr,  # rows per program
    BLOCK: tl.constexpr,
    TARGET_LOGITS: tl.constexpr,
    HAS_DRAFT: tl.constexpr,
    DRAFT_LOGITS: tl.constexpr,
    USE_TOP_K: tl.constexpr,
    USE_TOP_P: tl.constexpr,
    Q_SHIFT: tl.constexpr,
    D_SHIFT: tl.constexpr,
):
    """Step 2 and the rows' distributions of :func:`serving_kernel`, every row in parallel.

    Grid ``(ceil(B (K+1) / ROWS), 2)`` (axis 1 is 1 without draft rows): axis 1 = 0 takes target
    row ``f = b (K+1) + k``, 1 takes draft row ``f = b K + k``, ``ROWS`` rows per program. A
    request's owned rows are recorded at columns ``k`` (target) and ``K + 1 + k`` (draft) of its
    ``[2K+1]`` records; other columns are left unwritten. Every sampling row (of a request whose
    parameters are valid and whose row is clean) gets its ``(cut, z)``, including the rows past the
    first rejection, which the one-program walk would not read: in exchange no row waits for the
    one before it.
    """
    f = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    if tl.program_id(1) == 0:
        valid = f < B * (K + 1)
        b = f // (K + 1)
        k = f % (K + 1)
        nd = tl.load(num_draft_ptr + b, mask=valid, other=0).to(tl.int64)
        live = valid & (k <= nd)
        temp = tl.load(temp_ptr + b, mask=valid, other=0.0)
        rand = live & (temp != 0.0) & (tl.load(pflags_ptr + b, mask=valid, other=1) == 0)
        rows = q_ptr + f * V
        top, arg, bad, nan = _scan_row(rows, live, V, TARGET_LOGITS, True, BLOCK)
        cut, z = _row_params(
            rows, rand & (bad == 0), top, tl.where(rand & (temp > 0.0), temp, 1.0),
            tl.load(top_k_ptr + b, mask=valid, other=0).to(tl.int64),
            tl.load(top_p_ptr + b, mask=valid, other=1.0), V,
            TARGET_LOGITS, USE_TOP_K, USE_TOP_P, BLOCK, Q_SHIFT,
        )  # fmt: skip
        empty = (nan == 0) & _no_mass(top, TARGET_LOGITS)
        rec = b * (2 * K + 1) + k
        tl.store(top_ptr + rec, top, mask=live)
        tl.store(arg_ptr + rec, arg, mask=live)
        tl.store(
            rflag_ptr + rec,
            tl.where(bad > 0, ROW_BAD, 0) | tl.where(empty, ROW_EMPTY, 0),
            mask=live,
        )
        tl.store(cut_ptr + rec, cut, mask=live)
        tl.store(z_ptr + rec, z, mask=live)
    else:
        if HAS_DRAFT:
            valid = f < B * K
            b = f // K
            k = f % K
            nd = tl.load(num_draft_ptr + b, mask=valid, other=0).to(tl.int64)
            temp = tl.load(temp_ptr + b, mask=valid, other=0.0)
            live = valid & (k < nd) & (temp != 0.0)  # greedy requests read no draft row
            rand = live & (tl.load(pflags_ptr + b, mask=valid, other=1) == 0)
            rows = d_ptr + f * V
            top, _, bad, _ = _scan_row(rows, live, V, DRAFT_LOGITS, False, BLOCK)
            rec = b * (2 * K + 1) + K + 1 + k
            tl.store(top_ptr + rec, top, mask=live)
            tl.store(rflag_ptr + rec, tl.where(bad > 0, ROW_BAD, 0), mask=live)
            if DRAFT_LOGITS:
                cut, z = _row_params(
                    rows, rand & (bad == 0), top, tl.where(rand & (temp > 0.0), temp, 1.0),
                    tl.load(top_k_ptr + b, mask=valid, other=0).to(tl.int64),
                    tl.load(top_p_ptr + b, mask=valid, other=1.0), V,
                    True, USE_TOP_K, USE_TOP_P, BLOCK, D_SHIFT,
                )  # fmt: skip
                tl.store(cut_ptr + rec, cut, mask=live)
                tl.store(z_ptr + rec, z, mask=live)


# Batch size, draft count and coin source are runtime values, not specialized: a server's batch
# changes every step, and each new value would otherwise compile a new variant.
@triton.jit(
    do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi", "B", "K", "coins", "key_in_seeds"]
)
def serving_kernel(
    ids_ptr,  # [B, K] int32/int64 (unused when K = 0)
    num_draft_ptr,  # [B] int64 draft counts in [0, K]
    q_ptr,  # [B, K+1, V] target logits or probabilities
    d_ptr,  # [B, K, V] draft logits or probabilities (unused when not HAS_DRAFT)
    temp_ptr,  # [B] float32 (0 = greedy)
    top_k_ptr,  # [B] int64 (0 = off)
    top_p_ptr,  # [B] float32 (1 = off)
    pflags_ptr,  # [B] int32 status bits found by validation (BAD_PARAMETER)
    u_ptr,  # [B, K+1] float32 (COINS_UNIFORMS; a float32 stand-in otherwise)
    seeds_ptr,  # [B] int64 (COINS_SEEDS); [1] int64 key (COINS_KEY with key_in_seeds)
    offsets_ptr,  # [B] int64 (COINS_SEEDS)
    tok_ptr,  # [B, K+1] int64 out
    num_ptr,  # [B] int64 out
    st_ptr,  # [B] int32 out
    top_ptr,  # [B, 2K+1] float32 records of serving_rows_kernel (ROWS_FIRST; else unused)
    arg_ptr,  # [B, 2K+1] int64
    rflag_ptr,  # [B, 2K+1] int32
    cut_ptr,  # [B, 2K+1] int64
    z_ptr,  # [B, 2K+1] float64
    seed_lo,
    seed_hi,
    off_lo,
    off_hi,  # COINS_KEY: key and base counter as 32-bit halves (signed int32 bit patterns)
    B,
    V,
    K,
    coins,  # COINS_UNIFORMS, COINS_SEEDS or COINS_KEY
    key_in_seeds,  # COINS_KEY: 1 = the key is seeds_ptr[0], counter 0; 0 = seed_lo..off_hi
    K_P2: tl.constexpr,  # power of two > K
    ROWS: tl.constexpr,  # requests per program
    BLOCK: tl.constexpr,
    TARGET_LOGITS: tl.constexpr,
    HAS_DRAFT: tl.constexpr,
    DRAFT_LOGITS: tl.constexpr,
    USE_TOP_K: tl.constexpr,
    USE_TOP_P: tl.constexpr,
    Q_SHIFT: tl.constexpr,  # _skey's shift for the target's dtype
    D_SHIFT: tl.constexpr,  # and for the draft's
    ROWS_FIRST: tl.constexpr,  # the rows' records come from serving_rows_kernel
):
    rb = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)  # [R] requests
    rmask = rb < B
    kr = tl.arange(0, K_P2)
    ar = tl.arange(0, BLOCK)
    NT = tl.cdiv(V, BLOCK)

    # Step 1: parameters, ids, coins.
    nd = tl.load(num_draft_ptr + rb, mask=rmask, other=0).to(tl.int64)
    temp = tl.load(temp_ptr + rb, mask=rmask, other=1.0)
    top_k = tl.load(top_k_ptr + rb, mask=rmask, other=0).to(tl.int64)
    top_p = tl.load(top_p_ptr + rb, mask=rmask, other=1.0)
    flags = tl.load(pflags_ptr + rb, mask=rmask, other=0)
    greedy = temp == 0.0
    rand = ~greedy
    temp = tl.where(rand & (temp > 0.0), temp, 1.0)  # the filters run for sampling requests only
    owned = rmask[:, None] & (kr[None, :] < nd[:, None])  # [R, K_P2] drafts
    ids = tl.load(ids_ptr + rb[:, None] * K + kr[None, :], mask=owned, other=0).to(tl.int64)
    flags = flags | tl.where(_anyr(owned & ((ids < 0) | (ids >= V))) > 0, BAD_ID, 0)
    ids = tl.where(owned & (ids >= 0) & (ids < V), ids, 0)
    umask = rmask[:, None] & (kr[None, :] <= nd[:, None])  # [R, K_P2] coins 0..K_b
    if coins == 0:
        u = tl.load(u_ptr + rb[:, None] * (K + 1) + kr[None, :], mask=umask, other=0.0)
        u_bad = (u != u) | (u < 0.0) | (u >= 1.0)
        flags = flags | tl.where(rand & (_anyr(umask & u_bad) > 0), BAD_UNIFORM, 0)
    elif coins == 1:
        seed = tl.load(seeds_ptr + rb, mask=rmask, other=0)
        off = tl.load(offsets_ptr + rb, mask=rmask, other=0)
        n = off[:, None] + kr[None, :].to(tl.int64)  # [R, K_P2] stream positions
        # names of their own: a runtime branch may not give one name two types
        row_key_lo = tl.broadcast_to(seed.to(tl.uint32)[:, None], [ROWS, K_P2])
        row_key_hi = tl.broadcast_to((seed >> 32).to(tl.uint32)[:, None], [ROWS, K_P2])
        u = _uniform_serving(row_key_lo, row_key_hi, n)
    else:
        if key_in_seeds != 0:
            s = tl.load(seeds_ptr)
            key_lo = s.to(tl.uint32)
            key_hi = (s >> 32).to(tl.uint32)
            base = s * 0
        else:
            key_lo = seed_lo.to(tl.uint32, bitcast=True)
            key_hi = seed_hi.to(tl.uint32, bitcast=True)
            base = (off_hi.to(tl.int64) << 32) | off_lo.to(tl.uint32, bitcast=True).to(tl.int64)
        u = _uniform_token(key_lo, key_hi, base + rb[:, None] * (K + 1) + kr[None, :])
    u64 = u.to(tl.float64)

    q_base = q_ptr + rb * (K + 1) * V
    d_base = d_ptr + rb * K * V

    # Step 2: every owned row once: bad values, no mass, and each target row's max and argmax;
    # with ROWS_FIRST, read from the records serving_rows_kernel wrote.
    if ROWS_FIRST:
        tmask = rmask[:, None] & (kr[None, :] <= nd[:, None])  # [R, K_P2] target rows 0..K_b
        dmask = owned & rand[:, None]  # [R, K_P2] draft rows 0..K_b-1 of sampling requests
        rec = rb[:, None] * (2 * K + 1) + kr[None, :]
        tops = tl.load(top_ptr + rec, mask=tmask, other=0.0)
        amax = tl.load(arg_ptr + rec, mask=tmask, other=0)
        rflags = tl.load(rflag_ptr + rec, mask=tmask, other=0)
        qbad = _anyr((rflags & ROW_BAD) != 0)
        empty = _anyr((rflags & ROW_EMPTY) != 0)
        cuts = tl.load(cut_ptr + rec, mask=tmask, other=0)
        zs = tl.load(z_ptr + rec, mask=tmask, other=0.0)
        dbad = flags * 0
        dtops = tl.zeros([ROWS, K_P2], tl.float32)
        dcuts = tl.zeros([ROWS, K_P2], tl.int64)
        dzs = tl.zeros([ROWS, K_P2], tl.float64)
        if HAS_DRAFT:
            drec = rec + K + 1
            dbad = _anyr((tl.load(rflag_ptr + drec, mask=dmask, other=0) & ROW_BAD) != 0)
            dtops = tl.load(top_ptr + drec, mask=dmask, other=0.0)
            dcuts = tl.load(cut_ptr + drec, mask=dmask, other=0)
            dzs = tl.load(z_ptr + drec, mask=dmask, other=0.0)
    else:
        tops = tl.zeros([ROWS, K_P2], tl.float32)
        dtops = tl.zeros([ROWS, K_P2], tl.float32)
        amax = tl.zeros([ROWS, K_P2], tl.int64)
        qbad = flags * 0
        dbad = flags * 0
        empty = flags * 0
        for k in range(0, K + 1):
            live = rmask & (k <= nd)
            top, arg, bad, nan = _scan_row(q_base + k * V, live, V, TARGET_LOGITS, True, BLOCK)
            qbad = tl.maximum(qbad, bad)
            empty = tl.maximum(
                empty, tl.where(live & (nan == 0) & _no_mass(top, TARGET_LOGITS), 1, 0)
            )
            tops = _put(tops, k, top, kr)
            amax = _put(amax, k, arg, kr)
            if HAS_DRAFT:
                dlive = rmask & rand & (k < nd)
                dtop, _, bad, _ = _scan_row(d_base + k * V, dlive, V, DRAFT_LOGITS, False, BLOCK)
                dbad = tl.maximum(dbad, bad)
                dtops = _put(dtops, k, dtop, kr)
        cuts = tl.zeros([ROWS, K_P2], tl.int64)
        zs = tl.zeros([ROWS, K_P2], tl.float64)
        dcuts = tl.zeros([ROWS, K_P2], tl.int64)
        dzs = tl.zeros([ROWS, K_P2], tl.float64)
    flags = flags | tl.where(qbad > 0, BAD_TARGET, 0)
    flags = flags | tl.where(rand & (dbad > 0), BAD_DRAFT, 0)
    flags = flags | tl.where(rand & (empty > 0), ZERO_ROW, 0)
    ok = rmask & (flags == 0)

    # Step 3, greedy: accepted while the draft is the argmax.
    mismatch = owned & (ids != amax)
    stop = tl.min(tl.where(mismatch, kr[None, :].to(tl.int64), nd[:, None]), axis=1)
    greedy_last = _at(amax, stop, kr)

    # Step 4, sampling: row after row until the first rejection; the distribution of each row
    # read (target and draft) kept as (cut, z) per position (or read from the records).
    n_acc = nd
    still = ok & rand
    for k in range(0, K + 1):
        need = still & (k <= nd)
        top = _col(tops, k, kr)
        cut, z, cuts, zs = _row_at(
            cuts, zs, k, kr, q_base + k * V, need, top, temp, top_k, top_p, V,
            TARGET_LOGITS, USE_TOP_K, USE_TOP_P, BLOCK, Q_SHIFT, ROWS_FIRST,
        )  # fmt: skip
        decide = need & (k < nd)
        x_k = _col(ids, k, kr)
        qv = _f32(tl.load(q_base + k * V + x_k, mask=decide, other=0.0))
        q_at = _prob(qv, top, temp, cut, z, TARGET_LOGITS, Q_SHIFT)
        if HAS_DRAFT:
            dv = _f32(tl.load(d_base + k * V + x_k, mask=decide, other=0.0))
            if DRAFT_LOGITS:
                dtop = _col(dtops, k, kr)
                dcut, dz, dcuts, dzs = _row_at(
                    dcuts, dzs, k, kr, d_base + k * V, decide, dtop, temp, top_k, top_p, V,
                    True, USE_TOP_K, USE_TOP_P, BLOCK, D_SHIFT, ROWS_FIRST,
                )  # fmt: skip
                p_at = _prob(dv, dtop, temp, dcut, dz, True, D_SHIFT)
            else:
                p_at = dv.to(tl.float64)
        else:
            p_at = tl.full([ROWS], 1.0, tl.float64)
        reject = decide & ~(_col(u64, k, kr) * p_at < q_at)
        n_acc = tl.where(reject, k, n_acc)
        still = still & ~reject

    # Step 5: the last row: the residual max(0, q' - p') of the rejecting row (q' when that is all
    # zero), or the bonus row q'.
    live = ok & rand
    tau = n_acc
    res = live & (tau < nd)
    q_rows = q_base + tau * V
    d_rows = d_base + tl.minimum(tau, K - 1) * V
    top = _at(tops, tau, kr)[:, None]
    cut = _at(cuts, tau, kr)[:, None]
    z = _at(zs, tau, kr)[:, None]
    dtop = _at(dtops, tau, kr)[:, None]
    dcut = _at(dcuts, tau, kr)[:, None]
    dz = _at(dzs, tau, kr)[:, None]
    x_tau = _at(ids, tau, kr)
    t64 = temp.to(tl.float64)[:, None]
    u_last = _at(u64, nd, kr)

    total = _last_sum(
        q_rows, d_rows, V, live, res, top, cut, z, dtop, dcut, dz, x_tau, t64,
        TARGET_LOGITS, HAS_DRAFT, DRAFT_LOGITS, Q_SHIFT, D_SHIFT, BLOCK,
    )  # fmt: skip
    res = res & (total > 0)  # an empty residual falls back to q'
    refill = live & (tau < nd) & ~res
    refilled = _last_sum(
        q_rows, d_rows, V, refill, res, top, cut, z, dtop, dcut, dz, x_tau, t64,
        TARGET_LOGITS, HAS_DRAFT, DRAFT_LOGITS, Q_SHIFT, D_SHIFT, BLOCK,
    )  # fmt: skip
    total = tl.where(refill, refilled, total)

    # The inverse CDF: the smallest j with cumsum(r)[j] > u * sum(r), never a zero-weight token;
    # a threshold rounded past the row's end takes the last positive token.
    thr = u_last * total
    token = tl.zeros([ROWS], tl.int64)
    last_pos = tl.zeros([ROWS], tl.int64)
    todo = live
    running = tl.zeros([ROWS], tl.float64)
    t = tl.full([], 0, tl.int32)
    while (t < NT) & (tl.max(todo.to(tl.int32), axis=0) > 0):  # up to the last crossing
        offs = t * BLOCK + ar
        t += 1
        r = _last_tile(
            q_rows, d_rows, offs, V, todo, res, top, cut, z, dtop, dcut, dz, x_tau, t64,
            TARGET_LOGITS, HAS_DRAFT, DRAFT_LOGITS, Q_SHIFT, D_SHIFT,
        )  # fmt: skip
        pos = r > 0
        last_pos = tl.where(
            todo & (_anyr(pos) > 0), tl.max(tl.where(pos, offs[None, :], 0), axis=1), last_pos
        )
        csum = running[:, None] + tl.cumsum(r, axis=1)
        crossing = pos & (csum > thr[:, None])
        cross = todo & (_anyr(crossing) > 0)
        j = tl.min(tl.where(crossing, offs[None, :], 2147483647), axis=1)
        token = tl.where(cross, j.to(tl.int64), token)
        todo = todo & ~cross
        running += tl.sum(r, axis=1)
    token = tl.where(todo, last_pos, token)

    # Outputs; a flagged request gets all -1, 0 emitted and its status bits.
    n_out = tl.where(greedy, stop, n_acc)
    last = tl.where(greedy, greedy_last, token)
    row = tl.where(kr[None, :] < n_out[:, None], ids, -1)
    row = tl.where(kr[None, :] == n_out[:, None], last[:, None], row)
    row = tl.where(ok[:, None], row, -1)
    kmask = rmask[:, None] & (kr[None, :] <= K)
    tl.store(tok_ptr + rb[:, None] * (K + 1) + kr[None, :], row, mask=kmask)
    tl.store(num_ptr + rb, tl.where(ok, n_out + 1, 0).to(tl.int64), mask=rmask)
    tl.store(st_ptr + rb, flags.to(tl.int32), mask=rmask)


@triton.jit
def _last_tile(
    q_rows,
    d_rows,
    offs,
    V,
    live,
    res,
    top,
    cut,
    z,
    dtop,
    dcut,
    dz,
    x_tau,
    t64,
    TARGET_LOGITS: tl.constexpr,
    HAS_DRAFT: tl.constexpr,
    DRAFT_LOGITS: tl.constexpr,
    Q_SHIFT: tl.constexpr,
    D_SHIFT: tl.constexpr,
):
    """One ``[ROWS, BLOCK]`` float64 tile of the last row's weights: ``max(0, q' - p')`` where
    ``res``, else ``q'``; 0 past the row's end and for requests not ``live`` (no bytes read)."""
    x, m = _load(q_rows, offs, live, V, TARGET_LOGITS)
    q = tl.where(m, _prob(x, top, t64, cut, z, TARGET_LOGITS, Q_SHIFT), 0.0)
    if HAS_DRAFT:
        dx, _ = _load(d_rows, offs, live & res, V, DRAFT_LOGITS)
        if DRAFT_LOGITS:
            p = _prob(dx, dtop, t64, dcut, dz, True, D_SHIFT)
        else:
            p = dx.to(tl.float64)
    else:
        p = tl.where(offs[None, :] == x_tau[:, None], 1.0, 0.0).to(tl.float64)
    r = tl.where(res[:, None], tl.maximum(q - p, 0.0), q)
    return tl.where(m, r, 0.0)


@triton.jit
def _last_sum(
    q_rows, d_rows, V, live, res, top, cut, z, dtop, dcut, dz, x_tau, t64,
    TARGET_LOGITS: tl.constexpr, HAS_DRAFT: tl.constexpr, DRAFT_LOGITS: tl.constexpr,
    Q_SHIFT: tl.constexpr, D_SHIFT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """``[ROWS]`` float64: the sum of :func:`_last_tile` over the row for the ``live`` requests
    (0 elsewhere); no pass at all when none is (a program of greedy requests)."""
    ar = tl.arange(0, BLOCK)
    total = tl.zeros(live.shape, tl.float64)
    if tl.max(live.to(tl.int32), axis=0) > 0:
        for t in range(0, tl.cdiv(V, BLOCK)):
            r = _last_tile(
                q_rows, d_rows, t * BLOCK + ar, V, live, res, top, cut, z, dtop, dcut, dz, x_tau,
                t64, TARGET_LOGITS, HAS_DRAFT, DRAFT_LOGITS, Q_SHIFT, D_SHIFT,
            )  # fmt: skip
            total += tl.sum(r, axis=1)
    return total


INTERPRET = type(serving_kernel).__name__ == "InterpretedFunction"

#: most requests one compiled program serves; the tile is ``[ROWS, BLOCK]`` and the per-request
#: state ``[ROWS, K_P2]`` (a dozen such arrays), so more rows would spill registers
MAX_ROWS = 16
#: smallest ``K_P2``: every draft count up to 7 shares one compiled variant
MIN_K_P2 = 8


def serving_config(
    batch: int, vocab: int, num_draft: int, interpret: bool
) -> tuple[int, int, int, int]:
    """``(BLOCK, ROWS, num_warps, K_P2)`` of a serving launch.

    Compiled, the constexprs depend on the vocabulary only (and ``K_P2`` on the draft count past
    7): a server's batch size and draft count change from step to step, and each new constexpr
    value would stall a step on the compiler. The block kernel's packing
    (:func:`specsample.backends._triton_block.block_config`) is asked for a batch of
    :data:`MAX_ROWS` whatever the real one, so ``ROWS`` is the most rows of ``BLOCK`` tokens that
    fill a 2048-element tile, at most :data:`MAX_ROWS`; a smaller batch leaves rows masked off.
    Under the interpreter nothing compiles, and the real batch sets ``ROWS``.
    """
    from ._triton_block import block_config

    k_p2 = max(MIN_K_P2, 1 << num_draft.bit_length())
    return (*block_config(batch if interpret else MAX_ROWS, vocab, interpret), k_p2)


#: :func:`_skey`'s shift per triton dtype name: the low float32 bits that a value widened from
#: that dtype always has zero
SHIFTS = {"bf16": 16, "fp16": 13, "fp32": 0}


def key_shift(dtype: Any) -> int:
    """:func:`_skey`'s shift for rows of the torch ``dtype`` (:data:`SHIFTS`)."""
    import torch

    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    return SHIFTS[names[dtype]]


def launch_serving(inputs: Any, dummy: Any, split32: Any, rows_first: bool | None = None) -> Any:
    """Run the serving kernels on validated :class:`specsample.serving.ServingInputs` (B > 0) on
    the current device; return the :class:`specsample.serving.ServingOutput`.

    Target logits: two launches, :func:`serving_rows_kernel` (every row in parallel) then
    :func:`serving_kernel` (one program per ``ROWS`` requests, reading the rows' records).
    Target probabilities: :func:`serving_kernel` alone, reading each row as it goes. ``rows_first``
    overrides that choice (tests compare the two).

    ``dummy`` is a one-element int64 tensor on the device standing in for unused pointers;
    ``split32`` turns a 64-bit value into ``(low, high)`` signed 32-bit halves.
    """
    import torch
    from specsample.serving import ServingOutput

    from .triton_backend import philox_key

    B, K, V = inputs.batch_size, inputs.num_draft, inputs.vocab_size
    device = inputs.device
    tok = torch.empty((B, K + 1), dtype=torch.int64, device=device)
    num = torch.empty((B,), dtype=torch.int64, device=device)
    status = torch.empty((B,), dtype=torch.int32, device=device)
    seeds, offsets = dummy, dummy
    # uniforms keep one pointer type whatever the coin source, so that source stays a runtime value
    uniforms = dummy.view(torch.float32)
    key, from_ptr, seed, offset = dummy, False, 0, 0
    if inputs.uniforms is not None:
        coins, uniforms = COINS_UNIFORMS, inputs.uniforms
    elif inputs.seeds is not None:
        coins, seeds, offsets = COINS_SEEDS, inputs.seeds, inputs.offsets
    else:
        coins = COINS_KEY
        key, from_ptr, seed, offset = philox_key(inputs.generator, device, B * (K + 1), dummy)
        seeds = key
    has_draft = inputs.draft is not None
    filters = dict(
        TARGET_LOGITS=inputs.target_is_logits,
        HAS_DRAFT=has_draft,
        DRAFT_LOGITS=inputs.draft_is_logits,
        USE_TOP_K=inputs.uses_top_k,
        USE_TOP_P=inputs.uses_top_p,
        Q_SHIFT=key_shift(inputs.target.dtype),
        D_SHIFT=key_shift(inputs.draft.dtype) if has_draft else 0,
    )
    if rows_first is None:
        rows_first = bool(inputs.target_is_logits)
    records = [
        dummy.view(torch.float32),
        dummy,
        dummy.view(torch.int32),
        dummy,
        dummy.view(torch.float64),
    ]
    if rows_first:
        # top, arg, flags, cut, z: [B, 2K+1] each, carved from one allocation (8-byte ones first)
        n = B * (2 * K + 1)
        buf = torch.empty(32 * n, dtype=torch.uint8, device=device)
        z, arg, cut = (buf[i * 8 * n : (i + 1) * 8 * n] for i in range(3))
        top, flag = buf[24 * n : 28 * n], buf[28 * n :]
        records = [
            top.view(torch.float32),
            arg.view(torch.int64),
            flag.view(torch.int32),
            cut.view(torch.int64),
            z.view(torch.float64),
        ]
        n_rows = B * (K + 1)
        block, rows, warps = _rows_config(n_rows, V)
        serving_rows_kernel[(-(-n_rows // rows), 2 if has_draft and K > 0 else 1)](
            inputs.num_draft_tokens,
            inputs.target,
            inputs.draft if has_draft else dummy,
            inputs.temperature,
            inputs.top_k,
            inputs.top_p,
            inputs.param_flags,
            *records,
            B,
            V,
            K,
            ROWS=rows,
            BLOCK=block,
            num_warps=warps,
            **filters,
        )
    block, rows, warps, k_p2 = serving_config(B, V, K, INTERPRET)
    serving_kernel[(-(-B // rows),)](
        inputs.draft_token_ids if K > 0 else dummy,
        inputs.num_draft_tokens,
        inputs.target,
        inputs.draft if has_draft else dummy,
        inputs.temperature,
        inputs.top_k,
        inputs.top_p,
        inputs.param_flags,
        uniforms,
        seeds,
        offsets,
        tok,
        num,
        status,
        *records,
        *split32(seed),
        *split32(offset),
        B,
        V,
        K,
        coins,
        int(from_ptr),
        K_P2=k_p2,
        ROWS=rows,
        BLOCK=block,
        ROWS_FIRST=rows_first,
        num_warps=warps,
        **filters,
    )
    return ServingOutput(tok, num, status)


def _rows_config(n_rows: int, vocab: int) -> tuple[int, int, int]:
    """``(BLOCK, ROWS, num_warps)`` of :func:`serving_rows_kernel`: the serving kernel's packing of
    rows into ``[ROWS, BLOCK]`` tiles; compiled, for a fixed count so that the batch never
    compiles a new variant."""
    from ._triton_block import block_config

    return block_config(n_rows if INTERPRET else MAX_ROWS, vocab, INTERPRET)
