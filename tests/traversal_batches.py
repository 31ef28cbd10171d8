"""Random tree batches for the traversal rule's kernel tests (GPU and CPU emulation alike)."""

from __future__ import annotations

import torch
from specsample import trees


def tree_of_kind(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    """A tree of ``n`` nodes: ``chain``, ``star`` or (anything else) a random tree."""
    if kind == "chain":
        return trees.chain(n)
    if kind == "star":
        return trees.star(n)
    return trees.random_tree(n, generator=g)


def traversal_batch(B, N, V, seed, kinds=("chain", "star", "random", "random"), dtype=torch.float32,
                     padded=True):  # fmt: skip
    """``ids, parents, num_nodes, p, q, u`` (CPU): trees of each kind, ``num_nodes`` from 0 to N
    with garbage padding (``padded``), siblings drawn with replacement from their first sibling's
    draft row (so tokens may repeat), target rows that are the draft row bent towards or away
    from the drafted tokens, so that acceptances, rejections, re-weighted siblings and parents
    tried after their children all occur. Draft rows other than a first child's are NaN: the
    traversal rule never reads them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((B, N), -5, dtype=torch.int64)
    parents = torch.full((B, N), 77, dtype=torch.int64)
    counts = torch.zeros(B, dtype=torch.int64)
    p = torch.full((B, N, V), float("nan"), dtype=torch.float64)
    q = torch.rand(B, N + 1, V, generator=g, dtype=torch.float64) ** 2
    for b in range(B):
        n = int(torch.randint(0, N + 1, (1,), generator=g)) if padded else N
        tree = tree_of_kind(kinds[b % len(kinds)], n, g)
        counts[b] = n
        parents[b, :n] = tree
        for a, kids in enumerate(trees.children(tree) if n else [[]]):
            if not kids:
                continue
            row = torch.rand(V, generator=g, dtype=torch.float64) ** 3 + 1e-3
            row /= row.sum()
            p[b, kids[0]] = row
            ids[b, kids] = torch.multinomial(row, len(kids), replacement=True, generator=g)
            mix = float(torch.rand((), generator=g))
            q[b, a] = mix * row + (1 - mix) * q[b, a] / q[b, a].sum()
            q[b, a, ids[b, kids]] *= 0.3 + 1.4 * torch.rand(
                len(kids), generator=g, dtype=torch.float64
            )
    q = (q / q.sum(-1, keepdim=True)).to(dtype)
    p = p.to(dtype)
    u = torch.rand(B, N + 1, generator=g)
    return ids, parents, counts, p, q, u
