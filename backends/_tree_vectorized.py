"""The batched tree-verification algorithm shared by ``torch-vectorized`` and ``torch-compile``.

Parent-array algorithms with tensor ops over the batch: no loop over nodes on the host and no host
sync. Depths and "every ancestor accepted" are computed by pointer jumping (``ceil(log2(N+1))``
rounds of a gather over the ``[B, N+1]`` positions). Greedy and target-only decide every node's
acceptance at once (a node's decision depends only on its parent's row and its siblings, never on
the path), then read the path off the accepted nodes. Recursive rejection sampling is sequential
over the siblings of a position (each residual depends on the previous one), so it runs one walk
step per iteration: each step tries one child per request or finishes it; a request tries each of
its nodes at most once, so N+1 steps (tensor ops over the batch, ``[B, V]`` rows) always suffice.

Every rule and status bit is defined by :func:`specsample.reference_tree.reference_verify_tree`
(docs/contract-trees.md). Decisions are exact (float64 products of float32 values); the last token
is drawn exactly as ``torch-vectorized``'s ``verify()`` draws it, so a chain gives its tokens.
"""

from __future__ import annotations

import torch

from ._vectorized import _bad, _rows_bad, inverse_cdf_rows

# Status bits (specsample.Status), as plain ints so that torch.compile sees constants.
_BAD_ID, _BAD_TARGET, _BAD_DRAFT, _BAD_UNIFORM, _ZERO_ROW, _OVERFLOW = 1, 2, 4, 8, 16, 32
_BAD_TREE, _REPEATED = 64, 128
_FLOAT32_MAX = 3.4028234663852886e38


def jump_rounds(num_nodes: int) -> int:
    """Pointer-jumping rounds that reach the root from any of ``num_nodes`` nodes' positions."""
    return max(num_nodes, 1).bit_length()


def prepare(
    ids: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor | None,
    greedy: bool,
    distinct: bool,
    check_uniforms: bool,
    max_depth: int,
    rounds: int,
) -> dict[str, torch.Tensor]:
    """Structure, the values read up front, and (greedy, target-only) the accepted path.

    Args:
        ids: ``[B, N]`` int64 node tokens (unchecked). parents: ``[B, N]`` int64 (unchecked).
        num_nodes: ``[B]`` int64 (unchecked).
        draft_probs: ``[B, N, V]`` or None. target_probs: ``[B, N+1, V]``.
        uniforms: ``[B, N+1]`` float32, or None in greedy mode.
        greedy: greedy mode. distinct: the rule needs distinct sibling tokens.
        check_uniforms: flag explicit uniforms outside [0, 1).
        max_depth: D. rounds: :func:`jump_rounds` of N.

    Returns:
        A dict of ``[B]``/``[B, N]`` tensors: ``flags`` (structure or up-front value bits,
        structure first), ``real`` (real nodes of a valid tree position), ``ppos`` (the parent's
        position, 0 for the root), ``ids`` (clamped into ``[0, V)``), ``q_at``/``p_at`` (float64
        drafted entries), ``coin`` (float64 node coins), and in greedy/target-only mode
        ``path`` ``[B, N+1]`` (accepted nodes by depth, -1 after) and ``num_accepted`` ``[B]``.
    """
    B, N = ids.shape
    V = target_probs.shape[-1]
    device = ids.device
    nodes = torch.arange(N, device=device)
    n_bad = (num_nodes < 0) | (num_nodes > N)
    real = nodes < num_nodes.unsqueeze(1)
    par_ok = (parents >= -1) & (parents < nodes)
    real_ok = real & par_ok
    ppos = torch.where(real_ok, parents + 1, 0)  # a node's parent's position
    # Depth of every position by pointer jumping (the root is a fixed point with depth 0).
    up = torch.cat([torch.zeros((B, 1), dtype=torch.int64, device=device), ppos], dim=1)
    dist = torch.cat(
        [torch.zeros((B, 1), dtype=torch.int64, device=device), torch.ones_like(ppos)], dim=1
    )
    jump = up
    for _ in range(rounds):  # log2(N+1) rounds, tensor ops only
        dist = dist + dist.gather(1, jump)
        jump = jump.gather(1, jump)
    depth = dist[:, 1:]
    tree_bad = n_bad | (real & ~par_ok).any(dim=1) | (real_ok & (depth > max_depth)).any(dim=1)
    real_ok = real_ok & ~tree_bad.unsqueeze(1)

    raw = ids
    ids_bad = (raw < 0) | (raw >= V)
    ids = torch.where(ids_bad, 0, raw)
    # siblings: same parent position, both real; lower[b, i, j]: j is an earlier sibling of i
    same = (ppos.unsqueeze(2) == ppos.unsqueeze(1)) & real_ok.unsqueeze(2) & real_ok.unsqueeze(1)
    lower = same & (nodes.unsqueeze(1) > nodes.unsqueeze(0))
    if N:
        first_sib = torch.where(same & ~lower.transpose(1, 2), nodes, N).amin(dim=2)
        first_sib = first_sib.clamp(max=N - 1)
    else:
        first_sib = torch.zeros((B, 0), dtype=torch.int64, device=device)
    # (same & j <= i) is same & not (j > i); its smallest j is the first sibling
    flags = torch.where(tree_bad, _BAD_TREE, 0)
    if distinct:
        repeated = (lower & (raw.unsqueeze(2) == raw.unsqueeze(1))).any(dim=2).any(dim=1)
        flags = torch.where((flags == 0) & repeated, _REPEATED, flags)

    batch = torch.arange(B, device=device).unsqueeze(1)
    value = torch.where((real_ok & ids_bad).any(dim=1), _BAD_ID, 0)
    out: dict[str, torch.Tensor] = {"real": real_ok, "ppos": ppos, "ids": ids}
    if greedy:
        argmax = target_probs.argmax(dim=-1)  # [B, N+1] (ties -> smallest index)
        accept = real_ok & (raw == argmax.gather(1, ppos))
        accept = accept & ~(lower & accept.unsqueeze(1)).any(dim=2)  # first matching sibling
        rows_bad = _rows_bad(target_probs)  # [B, N+1]
        out["argmax"] = argmax
    else:
        q_at = target_probs[batch, ppos, ids].to(torch.float64)  # in the parent's row
        value = value | torch.where((real_ok & ~ids_bad & _bad(q_at)).any(dim=1), _BAD_TARGET, 0)
        if draft_probs is not None:
            p_at = draft_probs[batch, first_sib, ids].to(torch.float64)
            value = value | torch.where((real_ok & ~ids_bad & _bad(p_at)).any(dim=1), _BAD_DRAFT, 0)
        else:
            p_at = torch.ones_like(q_at)
        coins = uniforms.to(torch.float64)
        if check_uniforms:
            read = torch.cat([real_ok, torch.ones((B, 1), dtype=torch.bool, device=device)], 1)
            u_bad = (read & ~((uniforms >= 0) & (uniforms < 1))).any(dim=1)
            value = value | torch.where(u_bad, _BAD_UNIFORM, 0)
        out.update(q_at=q_at, p_at=p_at, coin=coins[:, :N].gather(1, first_sib), coins=coins)
        out["node_coin"] = coins[:, :N]
        if draft_probs is None:
            # One coin (the first sibling's) walks the CDF of the children's entries, in order.
            w = torch.where(real_ok, q_at, 0.0)
            # exclusive prefix sums per position: sum of the entries of earlier siblings
            lo = (lower.to(torch.float64) * w.unsqueeze(1)).sum(dim=2)
            hi = lo + w
            u0 = out["coin"]
            accept = real_ok & (w > 0) & (lo <= u0) & (u0 < hi)
    flags = torch.where(flags == 0, value, flags).to(torch.int32)
    if greedy or draft_probs is None:
        # on the path: the node and every ancestor accepted (pointer jumping again)
        good = torch.cat([torch.ones((B, 1), dtype=torch.bool, device=device), accept], dim=1)
        jump = up
        for _ in range(rounds):
            good = good & good.gather(1, jump)
            jump = jump.gather(1, jump)
        on_path = good[:, 1:] & real_ok
        num_accepted = on_path.sum(dim=1)
        path = torch.full((B, N + 1), -1, dtype=torch.int64, device=device)
        slot = torch.where(on_path, (depth - 1).clamp(min=0, max=N - 1), N)
        path = path.scatter(1, slot, torch.where(on_path, nodes, -1).expand(B, N)) if N else path
        path[:, N] = -1
        out.update(path=path, num_accepted=num_accepted)
        if greedy:
            stop = torch.where(
                num_accepted > 0, path.gather(1, (num_accepted - 1).clamp(min=0).unsqueeze(1))
                .squeeze(1) + 1, 0,
            )  # fmt: skip
            visited = torch.cat([torch.ones((B, 1), dtype=torch.bool, device=device), on_path], 1)
            # every row along the walk is read in full (the first bad one stops it)
            walk_bad = (visited & rows_bad).any(dim=1)
            out["stop"] = stop
            out["walk_flags"] = torch.where(walk_bad, _BAD_TARGET, 0).to(torch.int32)
    out["flags"] = flags
    return out


def _zero_tokens(rows: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``rows`` [B, V] with the tokens ``ids`` [B, N] set to zero where ``mask`` [B, N]."""
    count = torch.zeros(rows.shape, dtype=torch.int32, device=rows.device)
    count = count.scatter_add(1, ids, mask.to(torch.int32))
    return torch.where(count > 0, 0.0, rows)


def _final_flags(weights: torch.Tensor, row_flags: torch.Tensor) -> torch.Tensor:
    total = weights.sum(dim=-1, dtype=torch.float64)
    size = torch.where(total > _FLOAT32_MAX, _OVERFLOW, torch.where(total == 0, _ZERO_ROW, 0))
    return torch.where(row_flags != 0, row_flags, size).to(torch.int32)


def target_only_weights(
    prep: dict[str, torch.Tensor], target_probs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """After the target-only path: ``(stop position [B], weights [B, V] float32, flags [B])``.

    The last token's distribution is the stop position's row without its children's tokens (the
    row itself when that leaves nothing); the row is read in full and checked.
    """
    path, num = prep["path"], prep["num_accepted"]
    B = path.shape[0]
    last = path.gather(1, (num - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    stop = torch.where(num > 0, last + 1, 0)
    row = target_probs[torch.arange(B, device=path.device), stop].to(torch.float32)
    kids = prep["real"] & (prep["ppos"] == stop.unsqueeze(1))
    weights = _zero_tokens(row, prep["ids"], kids)
    weights = torch.where((weights.sum(dim=-1) == 0).unsqueeze(1), row, weights)
    row_flags = torch.where(_rows_bad(row), _BAD_TARGET, 0)
    return stop, weights, _final_flags(weights, row_flags)


def rrs_walk(
    prep: dict[str, torch.Tensor],
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    without_replacement: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recursive rejection sampling along the walk: ``(path [B, N+1], num_accepted [B],
    weights [B, V] float32, flags [B])``.

    One iteration per walk step (N+1 steps bound every request; see the module docstring): each
    request either decides its next child (the first at a position on the raw entries, later ones
    against the normalized residual in float64) or, with no child left, fixes the distribution of
    its last token.
    """
    B, N1, V = target_probs.shape
    N = N1 - 1
    device = target_probs.device
    batch = torch.arange(B, device=device)
    nodes = torch.arange(N, device=device)
    real, ppos, ids = prep["real"], prep["ppos"], prep["ids"]
    q_at, p_at, node_coin = prep["q_at"], prep["p_at"], prep["node_coin"]
    cur = torch.zeros(B, dtype=torch.int64, device=device)
    last_tried = torch.full((B,), -1, dtype=torch.int64, device=device)
    n_tried = torch.zeros(B, dtype=torch.int64, device=device)
    active = torch.ones(B, dtype=torch.bool, device=device)
    flags = torch.zeros(B, dtype=torch.int32, device=device)
    path = torch.full((B, N + 1), -1, dtype=torch.int64, device=device)
    num = torch.zeros(B, dtype=torch.int64, device=device)
    r64 = torch.zeros((B, V), dtype=torch.float64, device=device)
    r32 = torch.zeros((B, V), dtype=torch.float32, device=device)
    p_base = torch.zeros((B, V), dtype=torch.float64, device=device)
    tried = torch.zeros((B, V), dtype=torch.bool, device=device)
    weights = torch.zeros((B, V), dtype=torch.float32, device=device)
    for _ in range(N + 1):  # walk steps, not nodes: tensor ops over the batch
        cand = real & (ppos == cur.unsqueeze(1)) & (nodes > last_tried.unsqueeze(1))
        c = torch.where(cand, nodes, N).amin(dim=1) if N else cur
        has = active & (c < N)
        c = c.clamp(max=max(N - 1, 0))
        first = last_tried < 0
        q_row = target_probs[batch, cur]
        # no child left: a leaf (its row) or every child rejected (the residual)
        finish = active & ~has
        leaf_w = q_row.to(torch.float32)
        done_w = torch.where(first.unsqueeze(1), leaf_w, torch.where(
            (n_tried == 1).unsqueeze(1), r32, r64.to(torch.float32)))  # fmt: skip
        leaf_bad = finish & first & _rows_bad(q_row)
        weights = torch.where(finish.unsqueeze(1), done_w, weights)
        flags = torch.where(leaf_bad, _BAD_TARGET, flags)
        active = active & ~finish
        if N == 0:
            break
        x = ids.gather(1, c.unsqueeze(1)).squeeze(1)
        u = node_coin.gather(1, c.unsqueeze(1)).squeeze(1)
        acc_first = u * p_at.gather(1, c.unsqueeze(1)).squeeze(1) < q_at.gather(
            1, c.unsqueeze(1)
        ).squeeze(1)
        total = r64.sum(dim=1, keepdim=True)
        q_cur = r64 / torch.where(total > 0, total, 1.0)
        if without_replacement:
            p_cur = torch.where(tried, 0.0, p_base)
            p_total = p_cur.sum(dim=1, keepdim=True)
            p_cur = torch.where(p_total > 0, p_cur / torch.where(p_total > 0, p_total, 1.0), p_cur)
        else:
            p_cur = p_base
        xi = x.unsqueeze(1)
        acc_later = u * p_cur.gather(1, xi).squeeze(1) < q_cur.gather(1, xi).squeeze(1)
        zero = has & ~first & (total.squeeze(1) == 0)
        flags = torch.where(zero, _ZERO_ROW, flags)
        active = active & ~zero
        step = has & ~zero
        acc = step & torch.where(first, acc_first, acc_later)
        rej = step & ~acc
        # accept: record the node and move to its position
        path = path.scatter(1, torch.where(acc, num, N).unsqueeze(1), c.unsqueeze(1))
        path[:, N] = -1
        num = num + acc.to(torch.int64)
        cur = torch.where(acc, c + 1, cur)
        last_tried = torch.where(acc, -1, torch.where(rej, c, last_tried))
        n_tried = torch.where(acc, 0, n_tried + rej.to(torch.int64))
        # first rejection at a position: read its q and p rows in full
        new = rej & first
        p_row = draft_probs[batch, c]
        bad_q, bad_p = new & _rows_bad(q_row), new & _rows_bad(p_row)
        flags = torch.where(bad_q, _BAD_TARGET, torch.where(bad_p, _BAD_DRAFT, flags))
        active = active & ~bad_q & ~bad_p
        q32, p32 = q_row.to(torch.float32), p_row.to(torch.float32)
        res32 = torch.clamp(q32 - p32, min=0.0)
        res32 = torch.where((res32.sum(dim=1) == 0).unsqueeze(1), q32, res32)
        q64, p64 = q_row.to(torch.float64), p_row.to(torch.float64)
        res64 = torch.clamp(q64 - p64, min=0.0)
        res64 = torch.where((res64.sum(dim=1) == 0).unsqueeze(1), q64, res64)
        # a later rejection: the next residual of the normalized one
        nxt = torch.clamp(q_cur - p_cur, min=0.0)
        nxt = torch.where((nxt.sum(dim=1) == 0).unsqueeze(1), q_cur, nxt)
        r32 = torch.where(new.unsqueeze(1), res32, r32)
        r64 = torch.where(new.unsqueeze(1), res64, torch.where(rej.unsqueeze(1), nxt, r64))
        p_base = torch.where(new.unsqueeze(1), p64, p_base)
        hit = torch.zeros_like(tried).scatter(1, xi, True)
        tried = torch.where(
            new.unsqueeze(1), hit, torch.where(rej.unsqueeze(1), tried | hit, tried)
        )
    flags = torch.where(flags != 0, flags, _final_flags(weights, flags))
    return path, num, weights, flags.to(torch.int32)


def assemble_tree(
    ids: torch.Tensor,
    path: torch.Tensor,
    num_accepted: torch.Tensor,
    last: torch.Tensor,
    flags: torch.Tensor,
    max_depth: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(token_ids [B, D+1], num_emitted [B], accepted_nodes [B, D])`` from the path
    ``[B, N+1]``; a flagged request gets all -1 and 0."""
    B, N = ids.shape
    D = max_depth
    device = ids.device
    width = max(D, N) + 1
    if width > N + 1:
        path = torch.cat(
            [path, torch.full((B, width - N - 1), -1, dtype=torch.int64, device=device)], dim=1
        )
    ok = (flags == 0).unsqueeze(1)
    cols = torch.arange(width, device=device)
    on = cols < num_accepted.unsqueeze(1)
    tokens = ids.gather(1, path.clamp(min=0, max=max(N - 1, 0))) if N else path
    tokens = torch.where(on, tokens, -1)
    tokens = tokens.scatter(1, num_accepted.clamp(max=width - 1).unsqueeze(1), last.unsqueeze(1))
    token_ids = torch.where(ok, tokens[:, : D + 1], -1)
    accepted = torch.where(ok & on[:, :D], path[:, :D], -1)
    num_emitted = torch.where(flags == 0, num_accepted + 1, 0)
    return token_ids, num_emitted, accepted


def verify_tree_tensors(
    ids: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor | None,
    *,
    greedy: bool,
    draft_sampling: str | None,
    distinct: bool,
    check_uniforms: bool,
    max_depth: int,
    prepare_fn=prepare,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole tree contract on a batch; shapes as in :func:`prepare`.

    Returns ``(token_ids [B, D+1] int64, num_emitted [B] int64, accepted_nodes [B, D] int64,
    status [B] int32)``. ``prepare_fn`` lets torch-compile pass its compiled :func:`prepare`.
    """
    ids = ids.to(torch.int64)
    N = ids.shape[1]
    p = None if greedy else draft_probs
    prep = prepare_fn(
        ids, parents, num_nodes, p, target_probs, None if greedy else uniforms, greedy,
        distinct, check_uniforms, max_depth, jump_rounds(N),
    )  # fmt: skip
    flags = prep["flags"]
    if greedy:
        path, num = prep["path"], prep["num_accepted"]
        last = prep["argmax"].gather(1, prep["stop"].unsqueeze(1)).squeeze(1)
        walk_flags = prep["walk_flags"]
    else:
        if p is None:
            _, weights, walk_flags = target_only_weights(prep, target_probs)
            path, num = prep["path"], prep["num_accepted"]
        else:
            path, num, weights, walk_flags = rrs_walk(
                prep, p, target_probs, draft_sampling == "without_replacement"
            )
        last = inverse_cdf_rows(weights, uniforms[:, N])
    flags = torch.where(flags != 0, flags, walk_flags).to(torch.int32)
    token_ids, num_emitted, accepted = assemble_tree(ids, path, num, last, flags, max_depth)
    return token_ids, num_emitted, accepted, flags
