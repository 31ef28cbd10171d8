"""The float64 reference of tree verification: the definition of docs/contract-trees.md.

A tree of N drafted nodes per request is verified in one walk from the root. The rules (greedy,
target-only, multi-draft recursive rejection sampling with or without replacement), the indexing
of positions and draft distributions, and the values each request reads for ``status`` are
stated in docs/contract-trees.md; this module applies them one request at a time, for clarity
rather than speed. A chain ``parents = [-1, 0, ..., K-2]`` gives exactly
:func:`specsample.reference_verify`'s output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .reference import accept_draft, bad_values, inverse_cdf, reference_coins, residual
from .status import FLOAT32_MAX, Status
from .validation import validate_inputs

DRAFT_SAMPLING = ("with_replacement", "without_replacement")


@dataclass
class TreeVerifyOutput:
    """Result of one tree verification call.

    Attributes:
        token_ids: ``[B, D+1]`` int64: the accepted drafts along the path, then one emitted token,
            then ``-1``.
        num_emitted: ``[B]`` int64: accepted nodes + 1, or 0 for a flagged request.
        accepted_nodes: ``[B, D]`` int64: node indices of the accepted path from the root, then
            ``-1`` (all ``-1`` for a flagged request).
        status: ``[B]`` int32 bits of :class:`specsample.Status`, 0 for a request verified
            normally.
    """

    token_ids: torch.Tensor
    num_emitted: torch.Tensor
    accepted_nodes: torch.Tensor
    status: torch.Tensor


def _children_and_depths(
    b: int, parents: list[int], n: int, max_depth: int | None
) -> tuple[list[list[int]], list[int]]:
    """Validate request ``b``'s first ``n`` parents; return children per position and depths.

    ``children[a]`` lists the nodes whose position-parent is ``a`` (position 0 = root,
    ``i + 1`` = node i), in index order. ``depth[i]`` is 1 for a child of the root.
    """
    children: list[list[int]] = [[] for _ in range(n + 1)]
    depth = [0] * n
    for i in range(n):
        a = parents[i]
        if n <= a < len(parents):
            raise ValueError(
                f"parents: request {b}, node {i} has parent {a}, a padding node "
                f"(num_nodes[{b}]={n}); a padding node cannot have real children"
            )
        if not -1 <= a < i:
            raise ValueError(
                f"parents: request {b}, node {i} has parent {a}; expected -1 (the root) or a node "
                f"index below {i} (nodes in topological order)"
            )
        depth[i] = 1 if a == -1 else depth[a] + 1
        if max_depth is not None and depth[i] > max_depth:
            raise ValueError(
                f"parents: request {b}, node {i} is at depth {depth[i]}, beyond "
                f"max_depth={max_depth}"
            )
        children[a + 1].append(i)
    return children, depth


def _check_distinct_siblings(b: int, ids: list[int], children: list[list[int]], rule: str) -> None:
    for a, kids in enumerate(children):
        seen: dict[int, int] = {}
        for c in kids:
            if ids[c] in seen:
                where = "the root" if a == 0 else f"node {a - 1}"
                raise ValueError(
                    f"draft_token_ids: request {b}, node {c} repeats token {ids[c]} of its "
                    f"sibling node {seen[ids[c]]} (children of {where}); the {rule} rule needs "
                    f"distinct sibling tokens"
                )
            seen[ids[c]] = c


def _finish(r: torch.Tensor, u_final: float, path: list[int], ids: list[int]):
    """Draw the last token from the unnormalized ``r`` (its row already checked for values)."""
    total = float(r.sum())
    if total > FLOAT32_MAX:
        return int(Status.ROW_SUM_OVERFLOW), [], []
    if total == 0.0:
        return int(Status.ZERO_ROW), [], []
    return 0, [ids[c] for c in path] + [inverse_cdf(r, u_final)], path


def _verify_tree_request(
    ids: list[int],
    children: list[list[int]],
    p_b: torch.Tensor | None,
    q_b: torch.Tensor,
    u_b: list[float] | None,
    explicit_uniforms: bool,
    greedy: bool,
    draft_sampling: str | None,
) -> tuple[int, list[int], list[int]]:
    """One request: ``(status flags, emitted tokens, accepted nodes)``; empty lists when flagged.

    ``ids`` [n] real node tokens, ``children`` per position, ``p_b`` [N, V] or None, ``q_b``
    [N+1, V], ``u_b`` [N+1] (random mode). Reads values in the order of docs/contract-trees.md
    ("Status").
    """
    n, V = len(ids), q_b.shape[1]
    N = q_b.shape[0] - 1
    first_sibling = {}
    for a, kids in enumerate(children):
        for c in kids:
            first_sibling[c] = (a, kids[0])
    flags = Status.OK
    if any(not 0 <= x < V for x in ids):
        flags |= Status.BAD_DRAFT_ID
    if greedy:
        if flags:
            return int(flags), [], []
        path: list[int] = []
        pos = 0
        while True:
            row = q_b[pos].to(torch.float64)
            if bad_values(row):
                return int(Status.BAD_TARGET_VALUE), [], []
            best = int(torch.argmax(row))  # ties -> smallest index
            nxt = next((c for c in children[pos] if ids[c] == best), None)
            if nxt is None:
                return 0, [ids[c] for c in path] + [best], path
            path.append(nxt)
            pos = nxt + 1

    assert u_b is not None
    for i, x in enumerate(ids):
        if not 0 <= x < V:
            continue  # never read
        a, first = first_sibling[i]
        if bad_values(q_b[a, x]):
            flags |= Status.BAD_TARGET_VALUE
        if p_b is not None and bad_values(p_b[first, x]):
            flags |= Status.BAD_DRAFT_VALUE
    coins = [u_b[i] for i in range(n)] + [u_b[N]]
    if explicit_uniforms and any(not (0.0 <= u < 1.0) for u in coins):
        flags |= Status.BAD_UNIFORM
    if flags:
        return int(flags), [], []

    u_final = u_b[N]
    path = []
    pos = 0
    while True:
        kids = children[pos]
        if not kids:  # a leaf: the last token comes from its target row
            if bad_values(q_b[pos]):
                return int(Status.BAD_TARGET_VALUE), [], []
            return _finish(q_b[pos].to(torch.float64), u_final, path, ids)
        if p_b is None:
            step = _target_only_step(ids, kids, q_b[pos], u_b[kids[0]])
        else:
            step = _rrs_step(ids, kids, p_b[kids[0]], q_b[pos], u_b, draft_sampling)
        if isinstance(step, Status):  # checked first: a Status is also an int
            return int(step), [], []
        if isinstance(step, int):  # a child was accepted
            path.append(step)
            pos = step + 1
            continue
        return _finish(step, u_final, path, ids)


def _target_only_step(
    ids: list[int], kids: list[int], q_row: torch.Tensor, u: float
) -> int | Status | torch.Tensor:
    """One coin walks the raw target CDF with the children's tokens first.

    Returns the accepted child, or the unnormalized distribution of the last token (the row with
    every child's token removed; the row itself when that sums to zero), or a bad-value flag.
    """
    lo = 0.0
    for c in kids:
        qc = float(q_row[ids[c]].to(torch.float64))
        hi = lo + qc
        if qc > 0.0 and lo <= u < hi:
            return c
        lo = hi
    if bad_values(q_row):
        return Status.BAD_TARGET_VALUE
    r = q_row.to(torch.float64).clone()
    r[[ids[c] for c in kids]] = 0.0
    if r.sum().item() == 0.0:
        r = q_row.to(torch.float64)
    return r


def _rrs_step(
    ids: list[int],
    kids: list[int],
    p_row: torch.Tensor,
    q_row: torch.Tensor,
    u_b: list[float],
    draft_sampling: str | None,
) -> int | Status | torch.Tensor:
    """Recursive rejection sampling over the children, in index order, each with its own coin.

    The first child is decided on the raw entries (``u * p(c) < q(c)``, exactly verify()'s rule
    1); after a rejection the full rows are read, the residual ``max(0, q' - p')`` (``q'`` when it
    sums to zero) is kept unnormalized for the last draw and normalized for the next decision.
    """
    c0 = kids[0]
    if accept_draft(
        u_b[c0], float(p_row[ids[c0]].to(torch.float64)), float(q_row[ids[c0]].to(torch.float64))
    ):
        return c0
    if bad_values(q_row):
        return Status.BAD_TARGET_VALUE
    if bad_values(p_row):
        return Status.BAD_DRAFT_VALUE
    p = p_row.to(torch.float64)
    r = residual(p_row, q_row, ids[c0])
    tried = [ids[c0]]
    for c in kids[1:]:
        total = float(r.sum())
        if total == 0.0:
            return Status.ZERO_ROW
        q_cur = r / total
        if draft_sampling == "without_replacement":
            p_cur = p.clone()
            p_cur[tried] = 0.0
            p_total = float(p_cur.sum())
            p_cur = p_cur / p_total if p_total > 0.0 else p_cur
        else:
            p_cur = p
        x = ids[c]
        if accept_draft(u_b[c], float(p_cur[x]), float(q_cur[x])):
            return c
        r = torch.clamp(q_cur - p_cur, min=0.0)
        if r.sum().item() == 0.0:
            r = q_cur
        tried.append(x)
    return r


def _tree_depth(children: list[list[int]]) -> int:
    depth = [0] * len(children)
    for a, kids in enumerate(children):
        for c in kids:
            depth[c + 1] = depth[a] + 1
    return max(depth)


def reference_verify_tree(
    draft_token_ids: torch.Tensor,
    parents: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    *,
    mode: str = "random",
    draft_sampling: str | None = None,
    num_nodes: torch.Tensor | None = None,
    max_depth: int | None = None,
    uniforms: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> TreeVerifyOutput:
    """Verify a tree of drafts per request in float64 (docs/contract-trees.md).

    Args:
        draft_token_ids: ``[B, N]`` int32/int64, node i's token; nodes in topological order.
        parents: ``[B, N]`` int32/int64, ``-1`` (child of the root) or a node index ``< i``.
        draft_probs: ``[B, N, V]`` float32/float16/bfloat16 or None: ``draft_probs[b, i]`` is the
            distribution node i was drawn from (siblings share it; the first sibling's row is
            read). None: one-hot drafts, the target-only rule.
        target_probs: ``[B, N+1, V]``, same dtype: row 0 after the root, row ``i + 1`` after
            node i.
        mode: ``"random"`` or ``"greedy"``.
        draft_sampling: ``"with_replacement"`` or ``"without_replacement"``: how siblings were
            drawn from ``draft_probs``. Required in random mode with ``draft_probs``; not read
            otherwise.
        num_nodes: ``[B]`` integer or None: request b's real nodes are ``0..num_nodes[b]-1``.
        max_depth: D, the longest accepted path the output holds; default the deepest real node of
            the batch. A deeper node raises.
        uniforms: ``[B, N+1]`` float32 in [0, 1): ``uniforms[b, i]`` is node i's coin,
            ``uniforms[b, N]`` the last draw's. Drawn from ``generator`` when None.
        generator: ``torch.Generator`` for the uniforms when they are not given.

    Returns:
        :class:`TreeVerifyOutput` on the inputs' device.

    Raises:
        TypeError / ValueError: bad shapes, dtypes, modes, tree structure, repeated sibling tokens
            where the rule needs distinct ones, or a node deeper than ``max_depth``; the message
            names the request and node.
    """
    inputs = validate_inputs(
        draft_token_ids,
        draft_probs,
        target_probs,
        mode=mode,
        generator=generator,
        uniforms=uniforms,
    )
    B, N = inputs.batch_size, inputs.num_draft
    if not isinstance(parents, torch.Tensor):
        raise TypeError(f"parents must be a torch.Tensor, got {type(parents).__name__}")
    if parents.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"parents must be int64 (or int32), got {parents.dtype}")
    if tuple(parents.shape) != (B, N):
        raise ValueError(
            f"parents has shape {tuple(parents.shape)}; expected [B, N]={(B, N)} like "
            f"draft_token_ids"
        )
    random_with_p = mode == "random" and draft_probs is not None
    if random_with_p and draft_sampling not in DRAFT_SAMPLING:
        raise ValueError(
            f"draft_sampling must be one of {DRAFT_SAMPLING} in random mode with draft_probs "
            f"(how the siblings were drawn), got {draft_sampling!r}"
        )
    if num_nodes is None:
        counts = [N] * B
    else:
        if not isinstance(num_nodes, torch.Tensor) or num_nodes.dtype not in (
            torch.int32,
            torch.int64,
        ):
            raise TypeError("num_nodes must be an int32 or int64 tensor of shape [B]")
        if tuple(num_nodes.shape) != (B,):
            raise ValueError(f"num_nodes has shape {tuple(num_nodes.shape)}; expected [B]={(B,)}")
        counts = num_nodes.cpu().tolist()
        for b, n in enumerate(counts):
            if not 0 <= n <= N:
                raise ValueError(f"num_nodes: request {b} has {n} nodes; expected 0..N={N}")
    if max_depth is not None and (not isinstance(max_depth, int) or max_depth < 0):
        raise ValueError(f"max_depth must be a non-negative int or None, got {max_depth!r}")

    ids_all = inputs.draft_token_ids.cpu().to(torch.int64)
    par_all = parents.cpu().to(torch.int64)
    trees = []
    for b in range(B):
        ids_b = ids_all[b, : counts[b]].tolist()
        children, _ = _children_and_depths(b, par_all[b].tolist(), counts[b], max_depth)
        if mode == "random" and draft_probs is None:
            _check_distinct_siblings(b, ids_b, children, "target-only")
        elif random_with_p and draft_sampling == "without_replacement":
            _check_distinct_siblings(b, ids_b, children, "without-replacement")
        trees.append((ids_b, children))
    D = max_depth if max_depth is not None else max([_tree_depth(c) for _, c in trees] or [0])

    greedy = mode == "greedy"
    q_all = inputs.target_probs.cpu()
    p_all = None if inputs.draft_probs is None else inputs.draft_probs.cpu()
    u_all = None if greedy else reference_coins(inputs, N)

    token_ids = torch.full((B, D + 1), -1, dtype=torch.int64)
    accepted = torch.full((B, D), -1, dtype=torch.int64)
    num_emitted = torch.zeros(B, dtype=torch.int64)
    status = torch.zeros(B, dtype=torch.int32)
    for b, (ids_b, children) in enumerate(trees):
        flags, tokens, path = _verify_tree_request(
            ids_b,
            children,
            None if p_all is None else p_all[b],
            q_all[b],
            None if u_all is None else u_all[b].tolist(),
            inputs.uniforms is not None,
            greedy,
            draft_sampling,
        )
        status[b] = flags
        num_emitted[b] = len(tokens)
        if tokens:
            token_ids[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
        if path:
            accepted[b, : len(path)] = torch.tensor(path, dtype=torch.int64)
    device = inputs.device
    return TreeVerifyOutput(
        token_ids.to(device), num_emitted.to(device), accepted.to(device), status.to(device)
    )
