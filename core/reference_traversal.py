"""Traversal verification (Weng et al., NeurIPS 2025, arXiv 2505.12398) in float64: trees.

Token-wise tree verification walks down from the root and discards a whole subtree when its top
node is rejected. Traversal verification walks the tree leaf to root: every node carries a
sequence-level acceptance weight (the block rule's prefix weight along its path), the deepest
untested node is tried first, and a rejected node is deleted while its parent's target row
becomes the weighted residual and its weight the block rule's threshold, so a parent whose every
child failed is tried itself. On a chain it is block verification (:mod:`.reference_block`),
decision for decision with the same coins. The rule, in this project's indexing, and why it is
lossless are stated in docs/rules.md ("Traversal verification").

Supported drafts: random mode with ``draft_probs`` and ``draft_sampling="with_replacement"``
(each node's children drawn independently from one draft row, the process the paper assumes);
greedy mode, where the result is the token rule's greedy walk.

:func:`traverse` works on plain Python sequences of numbers, so the same code runs on floats (the
reference) and on :class:`fractions.Fraction` (exact checks); :func:`traversal_outcomes` gives its
exact law over the coins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .reference import bad_values, inverse_cdf
from .reference_block import block_residual, residual_mass
from .status import FLOAT32_MAX, Status

Row = Sequence[Any]  # one distribution over the vocabulary: floats or Fractions
#: ``decide(node, weight) -> bool``: accept ``node`` when tried with acceptance weight ``weight``
Decide = Callable[[int, Any], bool]


def path_weight(weight: Any, q: Any, p: Any) -> Any:
    """``min(1, weight * q / p)``; a draft probability of 0 gives 1 if ``weight * q > 0`` else 0."""
    one = weight * 0 + 1
    num = weight * q
    if p > 0:
        return min(one, num / p)
    return one if num > 0 else one * 0


def post_order(children: Sequence[Sequence[int]]) -> list[int]:
    """The nodes in the order they are tried: depth first, children in index order, a node after
    its subtree (``children[a]``: nodes under position ``a``; 0 = root, ``i + 1`` = node i)."""
    order: list[int] = []
    stack: list[tuple[int, int]] = [(0, 0)]  # (position, next child)
    while stack:
        pos, j = stack.pop()
        if j < len(children[pos]):
            stack.append((pos, j + 1))
            stack.append((children[pos][j] + 1, 0))
        elif pos > 0:
            order.append(pos - 1)
    return order


def traverse(
    children: Sequence[Sequence[int]],
    ids: Sequence[int],
    p_rows: dict[int, Row],
    q_rows: Sequence[Row],
    decide: Decide,
) -> tuple[list[int], list[Any]]:
    """One request's traversal verification: ``(accepted path, unnormalized last-token row)``.

    Args:
        children: ``[n+1]`` lists: the nodes under position ``a`` in index order.
        ids: ``[n]`` node tokens (in range).
        p_rows: position ``a`` (with children) -> the draft row its children were drawn from.
        q_rows: ``[n+1][V]`` target rows: ``q_rows[a]`` follows position ``a``.
        decide: called once per tried node with its current acceptance weight.

    The path lists the accepted nodes from the root; the row is the accepted position's target
    row, or its last weighted residual when children of it were rejected.
    """
    n = len(ids)
    parent = [0] * n
    for a, kids in enumerate(children):
        for c in kids:
            parent[c] = a
    one = next(iter(p_rows.values()))[0] * 0 + 1 if p_rows else 1.0  # Fraction in, Fraction out
    weight: list[Any] = [one] * (n + 1)  # per position; the root's stays 1
    cur: dict[int, list[Any]] = {a: list(q_rows[a]) for a, kids in enumerate(children) if kids}
    last: dict[int, list[Any]] = {}  # unnormalized residual of positions that lost a child

    def assign(tops: Sequence[int], a: int) -> None:
        """Recompute the weights of the subtrees under ``tops`` (children of position ``a``)."""
        stack = [(c, a) for c in tops]
        while stack:
            c, up = stack.pop()
            weight[c + 1] = path_weight(weight[up], cur[up][ids[c]], p_rows[up][ids[c]])
            stack.extend((g, c + 1) for g in children[c + 1])

    assign(children[0], 0)
    for node in post_order(children):
        pos = node + 1
        if decide(node, weight[pos]):
            path = [node]
            while parent[path[-1]] > 0:
                path.append(parent[path[-1]] - 1)
            return path[::-1], last.get(pos, list(q_rows[pos]))
        a = parent[node]
        w = weight[a]
        z = residual_mass(w, p_rows[a], cur[a])
        denom = z + one - w
        weight[a] = z / denom if denom > 0 else one
        r = block_residual(w, p_rows[a], cur[a])
        last[a] = r
        total = sum(r, one * 0)
        cur[a] = [v / total for v in r] if total > 0 else list(cur[a])
        kids = children[a]
        assign(kids[kids.index(node) + 1 :], a)
    return [], last.get(0, list(q_rows[0]))


def traversal_outcomes(
    children: Sequence[Sequence[int]],
    ids: Sequence[int],
    p_rows: dict[int, Row],
    q_rows: Sequence[Row],
    rule: Callable[..., tuple[list[int], list[Any]]] = traverse,
) -> list[tuple[Any, list[int], list[Any]]]:
    """The exact law over the coins: ``[(probability, accepted path, last-token row)]``.

    Every node is tried at most once with its own independent coin and the first acceptance ends
    the walk, so the outcomes are "the first ``j`` tries fail, try ``j + 1`` passes" (probability
    ``prod (1 - weights) * weight``) and "every try fails" (the root is kept). ``rule`` is
    :func:`traverse` or a variant with its signature.
    """
    out = []
    for j in range(len(ids) + 1):
        seen: list[Any] = []

        def decide(node: int, w: Any, j: int = j, seen: list[Any] = seen) -> bool:
            seen.append(w)
            return len(seen) == j + 1

        path, row = rule(children, ids, p_rows, q_rows, decide)
        if len(seen) < j + 1 and j < len(ids):
            continue  # fewer tries than j + 1: this branch does not exist
        prob = q_rows[0][0] * 0 + 1
        for k, w in enumerate(seen):
            prob *= w if k == j else 1 - w
        out.append((prob, path, row))
    return out


def traversal_request(
    ids: list[int],
    children: list[list[int]],
    p_b: torch.Tensor,
    q_b: torch.Tensor,
    u_b: list[float],
    explicit_uniforms: bool,
) -> tuple[int, list[int], list[int]]:
    """One random-mode request: ``(status flags, emitted tokens, accepted nodes)``.

    ``ids`` [n] real node tokens, ``children`` per position, ``p_b`` [N, V], ``q_b`` [N+1, V] in
    their dtype, ``u_b`` [N+1]: node i's coin ``u_b[i]``, the last draw's ``u_b[N]``. Status as
    docs/rules.md ("Traversal verification", status): step 1 the ids and explicit coins; step 2
    the full target row of every position with children and the full draft row of each sibling
    group (both bits may be set); step 3 the accepted leaf's row and the last row's sum.
    """
    n, V = len(ids), q_b.shape[1]
    N = q_b.shape[0] - 1
    flags = Status.OK
    if any(not 0 <= x < V for x in ids):
        flags |= Status.BAD_DRAFT_ID
    coins = [u_b[i] for i in range(n)] + [u_b[N]]
    if explicit_uniforms and any(not (0.0 <= u < 1.0) for u in coins):
        flags |= Status.BAD_UNIFORM
    if flags:
        return int(flags), [], []
    inner = [a for a, kids in enumerate(children) if kids]
    if inner and bad_values(q_b[inner]):
        flags |= Status.BAD_TARGET_VALUE
    if inner and bad_values(p_b[[children[a][0] for a in inner]]):
        flags |= Status.BAD_DRAFT_VALUE
    if flags:
        return int(flags), [], []
    q_rows = {a: q_b[a].to(torch.float64).tolist() for a in inner}
    p_rows = {a: p_b[children[a][0]].to(torch.float64).tolist() for a in inner}
    end = [a for a, kids in enumerate(children) if not kids]
    q_list = [q_rows.get(a) or [0.0] for a in range(n + 1)]
    for a in end:  # leaves: read only if accepted (their rows are checked then)
        q_list[a] = q_b[a].to(torch.float64).tolist()
    path, row = traverse(children, ids, p_rows, q_list, lambda node, w: u_b[node] < w)
    pos = path[-1] + 1 if path else 0
    if not children[pos] and bad_values(q_b[pos]):
        return int(Status.BAD_TARGET_VALUE), [], []
    r = torch.tensor(row, dtype=torch.float64)
    total = float(r.sum())
    if total > FLOAT32_MAX:
        return int(Status.ROW_SUM_OVERFLOW), [], []
    if total == 0.0:
        return int(Status.ZERO_ROW), [], []
    return 0, [ids[c] for c in path] + [inverse_cdf(r, u_b[N])], path
