"""Traversal verification for ``torch-loop``: the rule of docs/rules.md ("Traversal
verification") written out node by node, one request at a time, with host reads (readable, not
fast). Rows are float64 tensors; the last token is drawn as ``torch-loop`` draws it."""

from __future__ import annotations

import torch
from specsample.status import Status


def _bad(x: torch.Tensor) -> bool:
    """NaN, infinite or negative anywhere in ``x`` (one host read)."""
    return not bool(((x >= 0) & (x < float("inf"))).all().item())


def _weight(w: float, q: float, p: float) -> float:
    """The sequence-level weight ``min(1, w q / p)`` (1 or 0 for a draft probability of 0)."""
    if p > 0.0:
        return min(1.0, w * q / p)
    return 1.0 if w * q > 0.0 else 0.0


def _reject(w: float, row: torch.Tensor, draft: torch.Tensor):
    """A position of weight ``w``, target row ``row`` and draft row ``draft`` loses a child:
    ``(new weight, unnormalized residual, new row)``. The residual ``max(0, w row - draft)`` has
    mass ``Z``; the new weight is ``Z / (Z + 1 - w)`` (1 when that is 0/0) and the new row the
    residual normalized (the row itself when ``Z = 0``)."""
    r = torch.clamp(w * row - draft, min=0.0)
    z = float(r.sum().item())
    new_weight = z / (z + 1.0 - w) if z + 1.0 - w > 0.0 else 1.0
    if z > 0.0:
        return new_weight, r, r / z
    return new_weight, row, row


def _tries(children: list[list[int]]) -> list[int]:
    """Nodes in the order they are tried: each after its subtree, children in index order."""
    order: list[int] = []

    def visit(pos: int) -> None:
        for c in children[pos]:
            visit(c + 1)
            order.append(c)

    visit(0)
    return order


def traversal_request(
    ids: list[int],
    children: list[list[int]],
    p: torch.Tensor,
    q: torch.Tensor,
    coins: list[float],
) -> tuple[int, torch.Tensor | None, list[int]]:
    """A request whose ids and coins passed step 1: ``(status, last-token weights, path)``.

    ``ids`` [n] in-range tokens, ``children`` per position, ``p`` [N, V], ``q`` [N+1, V] (the
    request's rows), ``coins`` [N+1]. Step 2 reads the target row of every position with children
    and the draft row of each sibling group in full; step 3 the accepted leaf's row.
    """
    n = len(ids)
    inner = [a for a in range(n + 1) if children[a]]
    flags = Status.OK
    if inner and _bad(q[inner]):
        flags |= Status.BAD_TARGET_VALUE
    if inner and _bad(p[[children[a][0] for a in inner]]):
        flags |= Status.BAD_DRAFT_VALUE
    if flags:
        return int(flags), None, []
    parent = {c: a for a in inner for c in children[a]}
    draft = {a: p[children[a][0]].to(torch.float64) for a in inner}  # the siblings' draft row
    row = {a: q[a].to(torch.float64) for a in inner}  # the position's current target row
    last: dict[int, torch.Tensor] = {}  # unnormalized residual of a position that lost a child
    weight = [1.0] * (n + 1)  # per position; the root's stays 1

    def reweigh(tops: list[int], a: int) -> None:
        """Weights of the subtrees under ``tops`` from position ``a``'s weight and row."""
        for c in tops:
            x = ids[c]
            weight[c + 1] = _weight(weight[a], float(row[a][x]), float(draft[a][x]))
            reweigh(children[c + 1], c + 1)

    reweigh(children[0], 0)
    for node in _tries(children):
        pos = node + 1
        if coins[node] < weight[pos]:  # accept the node and its path to the root
            path = [node]
            while parent[path[-1]] > 0:
                path.append(parent[path[-1]] - 1)
            if pos not in last and _bad(q[pos]):
                return int(Status.BAD_TARGET_VALUE), None, []
            return 0, last.get(pos, q[pos].to(torch.float64)), path[::-1]
        # Reject: delete the node; its parent keeps the weighted residual and a new weight.
        a = parent[node]
        weight[a], last[a], row[a] = _reject(weight[a], row[a], draft[a])
        later = children[a][children[a].index(node) + 1 :]
        reweigh(later, a)
    if not children[0] and _bad(q[0]):
        return int(Status.BAD_TARGET_VALUE), None, []
    return 0, last.get(0, q[0].to(torch.float64)), []
