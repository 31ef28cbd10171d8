"""The ``triton`` backend's traversal-verification kernel (docs/rules.md, "Traversal verification"):
one launch per ``verify_tree(..., rule="traversal")`` call in random mode.

Imported lazily by :mod:`specsample.backends.triton_backend` (it imports triton). The rule is
defined by :func:`specsample.reference_traversal.traverse`; this kernel follows it operation for
operation on every value a decision depends on, in float64, except that sums over the vocabulary
add in tile order. Greedy mode is the token rule's walk and is served by the tree kernel
(``_triton_tree.py``).

Grid: ``(B,)``, one program per request. The tree lives in registers as vectors over the ``N``
nodes: tokens, parents, the drafted entries ``Q_a(x_i)`` and ``P_a(x_i)`` (``P_a`` is the draft row
of position ``a``'s first child), each node's current weight and its parent's current row entry at
its token. Per request:

1. Structure (``BAD_TREE``: ``num_nodes``, parents, depths), then the real nodes' ids
   (``BAD_DRAFT_ID``) and the coins (explicit: ``BAD_UNIFORM``; else Philox with the chain
   kernel's counters, ``offset + b * (N+1) + i``).
2. The target row of every position with children and the draft row of its first child, in full
   (``BAD_TARGET_VALUE`` / ``BAD_DRAFT_VALUE``); then the weights top-down in node order.
3. The walk in post order. A node passes when its coin is below its weight. A rejected node's
   parent position ``a`` streams its target and draft rows once: its current row is rebuilt
   entry by entry from ``Q_a`` and the scalars of its earlier rejections (weight, residual sum,
   zero fallback), exactly the reference's elementwise operations, so no row is ever stored; the
   residual mass ``Z`` (and the current row's sum, for the zero fallback) are float64 sums. The
   parent's new weight is ``Z / (Z + 1 - w)``; the row entries of its later children are updated
   with the same operations and their subtrees re-weighted.
4. The last token: the accepted position's row (its target row, or its last residual, rebuilt as
   in 3) streamed twice, its float64 sum and then the inverse CDF, as the block kernel draws it.

Reads: two full rows per position with children (step 2), two more per rejected node, and the last
row twice (with its draft row when it is a residual). docs/dev/triton-kernel.md says what a faster
version would do.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._triton_kernels import _bad, _f32, _uniform
from ._triton_status import BAD_DRAFT, BAD_ID, BAD_TARGET, BAD_TREE, BAD_UNIFORM, OVERFLOW, ZERO_ROW
from ._triton_tree import _next_pow2, store_path, tree_block

_BIG = tl.constexpr(2147483647)
_FMAX64 = tl.constexpr(3.4028234663852886e38)  # largest float32


@triton.jit
def _path_weight(w, q, p):
    """``min(1, w q / p)`` in float64; a draft probability of 0 gives 1 if ``w q > 0`` else 0."""
    num = w * q
    ratio = tl.minimum(num / tl.where(p > 0, p, 1.0), 1.0)
    return tl.where(p > 0, ratio, tl.where(num > 0, 1.0, 0.0))


@triton.jit
def _row_tile(
    q_row, p_row, offs, V, a, rej, par, hw, ht, hf, nodes, N_P2: tl.constexpr, LAST: tl.constexpr
):
    """One tile of position ``a``'s row in float64, rebuilt from its target row and the history of
    its rejected children (``rej`` & ``par == a``, in index order: the order they were tried):
    ``r = max(0, w q - p)`` (the row itself where ``hf``), then ``q = r / total`` where the total
    ``ht`` is positive. Returns ``(current row, draft row)``; with ``LAST`` the first is instead
    the last unnormalized residual (the target row when nothing was rejected)."""
    m = offs < V
    mine = rej & (par == a)
    c = tl.min(tl.where(mine, nodes, N_P2), axis=0)
    cur = _f32(tl.load(q_row + offs, mask=m, other=0.0)).to(tl.float64)
    if LAST:  # no draft bytes where the row is the target row itself
        mp = m & ((offs * 0 + c) < N_P2)  # a vector compare (see _triton_tree.py)
    else:
        mp = m
    p = _f32(tl.load(p_row + offs, mask=mp, other=0.0)).to(tl.float64)
    while c < N_P2:
        wj = tl.sum(tl.where(nodes == c, hw, 0.0), axis=0)
        tj = tl.sum(tl.where(nodes == c, ht, 0.0), axis=0)
        fj = tl.sum(tl.where(nodes == c, hf, 0), axis=0)
        r = tl.maximum(wj * cur - p, 0.0)
        r = tl.where(fj != 0, cur, r)
        c = tl.min(tl.where(mine & (nodes > c), nodes, N_P2), axis=0)
        if LAST:
            if c == N_P2:
                cur = r
            else:
                cur = tl.where(tj > 0, r / tl.where(tj > 0, tj, 1.0), cur)
        else:
            cur = tl.where(tj > 0, r / tl.where(tj > 0, tj, 1.0), cur)
    return cur, p


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def traversal_kernel(
    ids_ptr,  # [B, N] int32/int64
    par_ptr,  # [B, N] int64
    cnt_ptr,  # [B] int64: num_nodes
    p_ptr,  # [B, N, V]
    q_ptr,  # [B, N+1, V]
    u_ptr,  # [B, N+1] float32 (unused when not HAS_U)
    seed_ptr,  # [1] int64 (unused when not SEED_FROM_PTR)
    tok_ptr,  # [B, D+1] int64 out
    acc_ptr,  # [B, D] int64 out
    num_ptr,  # [B] int64 out
    st_ptr,  # [B] int32 out: status bits
    seed_lo,
    seed_hi,
    off_lo,
    off_hi,  # Philox key and base counter, as 32-bit halves (signed int32 bit patterns)
    V,
    N,
    D,
    N_P2: tl.constexpr,  # power of two > N
    D_P2: tl.constexpr,  # power of two > min(D, N): the longest possible path, and the token
    BLOCK: tl.constexpr,
    HAS_U: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr,
):
    b = tl.program_id(0)
    b64 = b.to(tl.int64)
    nodes = tl.arange(0, N_P2)
    ar = tl.arange(0, BLOCK)
    NT = tl.cdiv(V, BLOCK)
    n64 = tl.load(cnt_ptr + b)
    n_bad = (n64 < 0) | (n64 > N)
    n = tl.where(n_bad, 0, n64).to(tl.int32)  # checked before the cast: no wrap-around
    real = (nodes < n) & (nodes < N)
    par = tl.load(par_ptr + b64 * N + nodes, mask=real, other=-1).to(tl.int32)
    tok = tl.load(ids_ptr + b64 * N + nodes, mask=nodes < N, other=0).to(tl.int64)

    # 1. Structure, then ids and coins.
    par64 = tl.load(par_ptr + b64 * N + nodes, mask=real, other=-1)
    tree_bad = tl.where(
        n_bad, 1, tl.max(tl.where(real & ((par64 < -1) | (par64 >= nodes)), 1, 0), axis=0)
    )
    if (tree_bad == 0) & (D < n):
        depth = tl.zeros([N_P2], tl.int32)
        for i in range(0, n):  # parents come first: one pass in node order
            pi = tl.sum(tl.where(nodes == i, par, 0), axis=0)
            di = tl.sum(tl.where(nodes == pi, depth, 0), axis=0) + 1
            depth = tl.where(nodes == i, di, depth)
        tree_bad = tl.max(tl.where(real & (depth > D), 1, 0), axis=0)
    flags = tl.where(tree_bad > 0, BAD_TREE, 0)
    ok = real & ((nodes * 0 + flags) == 0)
    id_ok = (tok >= 0) & (tok < V)
    vflags = tl.where(tl.max(tl.where(ok & ~id_ok, 1, 0), axis=0) > 0, BAD_ID, 0)
    if HAS_U:
        u = tl.load(u_ptr + b64 * (N + 1) + nodes, mask=nodes <= N, other=0.0)
        u_bad = (u != u) | (u < 0.0) | (u >= 1.0)
        read = ok | (nodes == N)
        vflags = vflags | tl.where(tl.max(tl.where(read & u_bad, 1, 0), axis=0) > 0, BAD_UNIFORM, 0)
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
    u64 = u.to(tl.float64)
    u_last = tl.sum(tl.where(nodes == N, u64, 0.0), axis=0)
    live = ok & ((nodes * 0 + flags) == 0)  # a vector compare (see _triton_tree.py)

    # first[i]: the first child of node i's parent (whose draft row node i was drawn from)
    same = (par[:, None] == par[None, :]) & live[None, :]
    first = tl.min(tl.where(same, nodes[None, :], N_P2), axis=1)
    q_base = b64 * (N + 1)

    # 2. Full rows of every position with children: bad values.
    qbad = b * 0
    pbad = b * 0
    if flags == 0:
        for a in range(0, n + 1):
            fc = tl.min(tl.where(live & (par == a - 1), nodes, N_P2), axis=0)
            if fc < N_P2:
                q_row = q_ptr + (q_base + a) * V
                p_row = p_ptr + (b64 * N + fc) * V
                for t in range(0, NT):
                    offs = t * BLOCK + ar
                    m = offs < V
                    q = _f32(tl.load(q_row + offs, mask=m, other=0.0))
                    p = _f32(tl.load(p_row + offs, mask=m, other=0.0))
                    qbad = tl.maximum(qbad, tl.max(tl.where(m & _bad(q), 1, 0), axis=0))
                    pbad = tl.maximum(pbad, tl.max(tl.where(m & _bad(p), 1, 0), axis=0))
    flags = tl.where(
        flags == 0, tl.where(qbad > 0, BAD_TARGET, 0) | tl.where(pbad > 0, BAD_DRAFT, 0), flags
    )
    live = live & ((nodes * 0 + flags) == 0)

    # The drafted entries, each node's parent-row entry at its token and its weight.
    qx = _f32(tl.load(q_ptr + (q_base + par + 1) * V + tok, mask=live, other=0.0)).to(tl.float64)
    px = _f32(tl.load(p_ptr + (b64 * N + first) * V + tok, mask=live, other=0.0)).to(tl.float64)
    cx = qx
    w = tl.zeros([N_P2], tl.float64) + 1.0
    w_root = tl.sum(tl.zeros([N_P2], tl.float64), axis=0) + 1.0
    for i in range(0, n):
        pi = tl.sum(tl.where(nodes == i, par, 0), axis=0)
        wp = tl.where(pi < 0, w_root, tl.sum(tl.where(nodes == pi, w, 0.0), axis=0))
        qi = tl.sum(tl.where(nodes == i, cx, 0.0), axis=0)
        pxi = tl.sum(tl.where(nodes == i, px, 0.0), axis=0)
        w = tl.where(nodes == i, _path_weight(wp, qi, pxi), w)

    # 3. The walk: post order, from the leftmost leaf.
    rej = nodes < 0  # rejected nodes
    hw = tl.zeros([N_P2], tl.float64)  # the parent's weight when the node was rejected
    ht = tl.zeros([N_P2], tl.float64)  # the parent's residual sum then (its row's sum on fallback)
    hf = tl.zeros([N_P2], tl.int32)  # 1: the residual summed to 0, the row itself was kept
    node = tl.min(tl.where(live & (par == -1), nodes, N_P2), axis=0)
    down = tl.min(tl.where(live & (par == node), nodes, N_P2), axis=0)
    while (node < N_P2) & (down < N_P2):
        node = down
        down = tl.min(tl.where(live & (par == node), nodes, N_P2), axis=0)
    accepted = node * 0 - 1
    while node < N_P2:
        wn = tl.sum(tl.where(nodes == node, w, 0.0), axis=0)
        un = tl.sum(tl.where(nodes == node, u64, 0.0), axis=0)
        if un < wn:
            accepted = node
            node = node * 0 + N_P2
        else:
            a = tl.sum(tl.where(nodes == node, par, 0), axis=0)
            wa = tl.where(a < 0, w_root, tl.sum(tl.where(nodes == a, w, 0.0), axis=0))
            fc = tl.min(tl.where(live & (par == a), nodes, N_P2), axis=0)
            q_row = q_ptr + (q_base + a + 1) * V
            p_row = p_ptr + (b64 * N + fc) * V
            z = wa * 0.0
            csum = wa * 0.0
            for t in range(0, NT):
                offs = t * BLOCK + ar
                cur, p = _row_tile(
                    q_row, p_row, offs, V, a, rej, par, hw, ht, hf, nodes, N_P2, False
                )
                z += tl.sum(tl.maximum(wa * cur - p, 0.0), axis=0)
                csum += tl.sum(cur, axis=0)
            denom = z + 1.0 - wa
            w_new = tl.where(denom > 0, z / tl.where(denom > 0, denom, 1.0), 1.0)
            fb = z == 0.0
            total = tl.where(fb, csum, z)
            hw = tl.where(nodes == node, wa, hw)
            ht = tl.where(nodes == node, total, ht)
            hf = tl.where(nodes == node, fb.to(tl.int32), hf)
            rej = rej | (nodes == node)
            w_root = tl.where(a < 0, w_new, w_root)
            w = tl.where(nodes == a, w_new, w)
            # the later children's row entries, then their subtrees' weights
            later = live & (par == a) & (nodes > node)
            r = tl.maximum(wa * cx - px, 0.0)
            r = tl.where(fb, cx, r)
            r = tl.where(total > 0, r / tl.where(total > 0, total, 1.0), cx)
            cx = tl.where(later, r, cx)
            sub = later
            for i in range(node + 1, n):
                pi = tl.sum(tl.where(nodes == i, par, 0), axis=0)
                ins = (pi == a) | (tl.sum(tl.where(nodes == pi, sub.to(tl.int32), 0), axis=0) > 0)
                if ins:
                    sub = sub | (nodes == i)
                    wp = tl.where(pi < 0, w_root, tl.sum(tl.where(nodes == pi, w, 0.0), axis=0))
                    qi = tl.sum(tl.where(nodes == i, cx, 0.0), axis=0)
                    pxi = tl.sum(tl.where(nodes == i, px, 0.0), axis=0)
                    w = tl.where(nodes == i, _path_weight(wp, qi, pxi), w)
            # next: the leftmost leaf under the next sibling, else the parent
            nxt = tl.min(tl.where(later, nodes, N_P2), axis=0)
            if nxt < N_P2:
                down = nxt
                while down < N_P2:
                    nxt = down
                    down = tl.min(tl.where(live & (par == nxt), nodes, N_P2), axis=0)
                node = nxt
            else:
                node = tl.where(a < 0, N_P2, a)

    # The accepted path (root first) and its length.
    dr = tl.arange(0, D_P2)
    s = b * 0
    x = accepted
    while x >= 0:
        s += 1
        x = tl.sum(tl.where(nodes == x, par, 0), axis=0)
    ptok = tl.full([D_P2], -1, tl.int64)
    pnode = tl.full([D_P2], -1, tl.int64)
    x = accepted
    k = s - 1
    while x >= 0:
        ptok = tl.where(dr == k, tl.sum(tl.where(nodes == x, tok, 0), axis=0), ptok)
        pnode = tl.where(dr == k, x.to(tl.int64), pnode)
        k -= 1
        x = tl.sum(tl.where(nodes == x, par, 0), axis=0)

    # 4. The last token from the accepted position's row (a = accepted: -1 is the root).
    a = accepted
    leaf = tl.min(tl.where(live & (par == a), nodes, N_P2), axis=0) == N_P2
    fc = tl.min(tl.where(live & (par == a), nodes, N_P2), axis=0)
    q_row = q_ptr + (q_base + a + 1) * V
    p_row = p_ptr + (b64 * N + tl.where(leaf, 0, fc)) * V
    total = u_last * 0.0
    last_pos = b * 0 - 1
    lbad = b * 0
    token = b * 0
    if flags == 0:
        for t in range(0, NT):
            offs = t * BLOCK + ar
            r, _p = _row_tile(q_row, p_row, offs, V, a, rej, par, hw, ht, hf, nodes, N_P2, True)
            total += tl.sum(r, axis=0)
            last_pos = tl.maximum(last_pos, tl.max(tl.where(r > 0, offs, -1), axis=0))
            lbad = tl.maximum(lbad, tl.max(tl.where(_bad(r.to(tl.float32)), 1, 0), axis=0))
        lbad = tl.where(leaf, lbad, 0)  # a leaf's row is read only now; inner rows were in step 2
        flags = tl.where(
            lbad > 0,
            BAD_TARGET,
            tl.where(total > _FMAX64, OVERFLOW, tl.where(total == 0, ZERO_ROW, 0)),
        )
        # the inverse CDF: up to the tile where the running sum crosses u * total
        thr = u_last * total
        token = tl.maximum(last_pos, 0)
        todo = (flags == 0).to(tl.int32)
        running = total * 0.0
        t = 0
        while (t < NT) & (todo > 0):
            offs = t * BLOCK + ar
            m = offs < V
            r, _p = _row_tile(q_row, p_row, offs, V, a, rej, par, hw, ht, hf, nodes, N_P2, True)
            sr = tl.sum(r, axis=0)
            if running + sr > thr:
                csum = running + tl.cumsum(r, axis=0)
                j = tl.min(tl.where(m & (csum > thr), ar, BLOCK), axis=0)
                jj = tl.minimum(j, BLOCK - 1)
                # never a zero-weight token: step back to the last positive entry at or before j
                pick = tl.max(tl.where((r > 0) & (ar <= jj), ar, -1), axis=0)
                pick = tl.where(pick < 0, tl.max(tl.where(r > 0, ar, 0), axis=0), pick)
                token = t * BLOCK + pick
                todo = todo * 0
            running += sr
            t += 1

    store_path(tok_ptr, acc_ptr, num_ptr, st_ptr, b, D, dr, s, ptok, pnode, token, flags, D_P2)


def launch_traversal(inputs, dummy, split32):
    """Run :func:`traversal_kernel` on validated
    :class:`~specsample.contract_tree.TreeVerifyInputs` (random mode, ``draft_probs`` given,
    ``draft_sampling="with_replacement"``, ``rule="traversal"``); returns ``TreeVerifyOutput``.

    Shapes: ``draft_token_ids`` / ``parents`` ``[B, N]``, ``draft_probs`` ``[B, N, V]``,
    ``target_probs`` ``[B, N+1, V]`` (float32, float16 or bfloat16), ``uniforms`` ``[B, N+1]``
    float32 or None (drawn from the generator's Philox state as ``verify()`` draws them). ``dummy``
    is a 1-element int64 tensor on the device (for unused pointers), ``split32`` splits a 64-bit
    value into two signed-int32 halves. No host sync.
    """
    import torch
    from specsample.contract_tree import TreeVerifyOutput

    from .triton_backend import philox_key

    B, N, V, D = inputs.batch_size, inputs.num_nodes_max, inputs.vocab_size, inputs.max_depth
    device = inputs.device
    has_u = inputs.uniforms is not None
    tok = torch.empty((B, D + 1), dtype=torch.int64, device=device)
    acc = torch.empty((B, D), dtype=torch.int64, device=device)
    num = torch.empty((B,), dtype=torch.int64, device=device)
    status = torch.empty((B,), dtype=torch.int32, device=device)

    seed_t, seed_from_ptr, seed, offset = dummy, False, 0, 0
    if not has_u:  # verify()'s key and counters, so a chain gets its coins
        seed_t, seed_from_ptr, seed, offset = philox_key(
            inputs.generator, device, B * (N + 1), dummy
        )
    block, warps = tree_block(V, INTERPRET)
    traversal_kernel[(B,)](
        inputs.draft_token_ids if N > 0 else dummy,
        inputs.parents if N > 0 else dummy,
        inputs.num_nodes,
        inputs.draft_probs if N > 0 else inputs.target_probs,
        inputs.target_probs,
        inputs.uniforms if has_u else dummy,
        seed_t,
        tok,
        acc if D > 0 else dummy,
        num,
        status,
        *split32(seed),
        *split32(offset),
        V,
        N,
        D,
        N_P2=_next_pow2(N + 1),
        D_P2=_next_pow2(min(D, N) + 1),
        BLOCK=block,
        HAS_U=has_u,
        SEED_FROM_PTR=seed_from_ptr,
        num_warps=warps,
        # w q - p rounded once per operation, as the reference computes it (no fused multiply-add)
        enable_fp_fusion=False,
    )
    return TreeVerifyOutput(tok, num, acc, status)


# True when triton decorated the kernel for its CPU interpreter (TRITON_INTERPRET=1 at import time).
INTERPRET = type(traversal_kernel).__name__ == "InterpretedFunction"
