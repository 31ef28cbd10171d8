"""Draft trees: the parent-array layout, engine layouts, attention masks, the EAGLE-2 builder, workloads.

The layout every function here uses (and ``verify_tree`` reads; see docs/contract.md and
docs/trees.md):

- A tree of ``N`` drafted nodes is a ``parents`` tensor, ``[N]`` for one tree or ``[B, N]`` for a
  batch, int64. Nodes ``0..N-1`` are in topological order: ``parents[..., i]`` is ``-1`` when node
  ``i`` is a child of the root (the last committed token), otherwise a node index ``< i``.
  Siblings are ordered by index.
- *Positions* number the root and the nodes together: position 0 is the root, position ``i+1`` is
  node ``i``. Engine layouts (SGLang's linked lists, Medusa/EAGLE path matrices) are over positions.
- An optional ``num_nodes`` ``[B]`` marks the first ``num_nodes[b]`` nodes of request ``b`` as real;
  the rest are padding and are ignored.

Everything here is plain torch on any device and cheap enough to call per step on the host for
small trees; none of it imports a kernel library.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import torch

__all__ = [
    "attention_mask",
    "balanced_tree",
    "build_eagle2_tree",
    "candidates_from_sglang",
    "chain",
    "children",
    "depths",
    "eagle2_shaped",
    "from_retrieve_indices",
    "from_sglang",
    "packed_attention_mask",
    "positions",
    "random_tree",
    "star",
    "to_retrieve_indices",
    "to_sglang",
    "validate_parents",
]


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def _as_parents(parents: torch.Tensor, name: str = "parents") -> torch.Tensor:
    if not isinstance(parents, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(parents).__name__}")
    if parents.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be int64 (or int32), got {parents.dtype}")
    if parents.dim() not in (1, 2):
        raise ValueError(f"{name} must have shape [N] or [B, N], got {tuple(parents.shape)}")
    return parents.to(torch.int64)


def _where(batched: bool, b: int, i: int) -> str:
    return f"request {b}, node {i}" if batched else f"node {i}"


def validate_parents(parents: torch.Tensor, num_nodes: torch.Tensor | None = None) -> None:
    """Check that ``parents`` is a tree in topological order; raise ValueError naming the node.

    Args:
        parents: ``[N]`` or ``[B, N]`` int64 (int32 accepted): ``-1`` or a node index ``< i``.
        num_nodes: optional ``[B]`` (or a 0-d tensor / int for one tree) integer tensor, each in
            ``[0, N]``: request ``b``'s real nodes are ``0..num_nodes[b]-1``; the others are padding
            and their entries are not checked. Because real nodes come first and a parent precedes
            its child, a padding node can never be the parent of a real node once the real nodes pass.

    Raises:
        TypeError: wrong type or dtype. ValueError: wrong shape, an entry that is not ``-1`` or a
        smaller node index (``request 1, node 4: parents = 6; expected -1 or a node index < 4``),
        or a ``num_nodes`` outside ``[0, N]``.
    """
    p = _as_parents(parents)
    batched = p.dim() == 2
    p2 = p if batched else p.unsqueeze(0)
    B, N = p2.shape
    limit = _num_nodes(num_nodes, B, N, batched)
    idx = torch.arange(N, device=p2.device)
    real = idx.unsqueeze(0) < limit.to(p2.device).unsqueeze(1)
    bad = real & ((p2 < -1) | (p2 >= idx.unsqueeze(0)))
    if bool(bad.any()):
        b, i = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"{_where(batched, b, i)}: parents = {int(p2[b, i])}; expected -1 (a child of the root) "
            f"or a node index < {i} (nodes must be in topological order)"
        )


def _num_nodes(num_nodes, B: int, N: int, batched: bool) -> torch.Tensor:
    if num_nodes is None:
        return torch.full((B,), N, dtype=torch.int64)
    n = torch.as_tensor(num_nodes).to("cpu")
    if n.dtype.is_floating_point or n.dtype == torch.bool:
        raise TypeError(f"num_nodes must be an integer tensor, got {n.dtype}")
    n = n.to(torch.int64).reshape(-1)
    if n.numel() != B:
        raise ValueError(
            f"num_nodes must have shape [{B}] (one entry per request), got {n.numel()} entries"
        )
    bad = (n < 0) | (n > N)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        who = f"request {b}: " if batched else ""
        raise ValueError(f"{who}num_nodes = {int(n[b])}; expected a value in [0, N={N}]")
    return n


# --------------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------------


def chain(K: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The chain of ``K`` drafts as a tree: ``[-1, 0, 1, ..., K-2]``, shape ``[K]`` int64."""
    _check_count("K", K, minimum=0)
    return torch.arange(-1, K - 1, dtype=torch.int64, device=device)


def depths(parents: torch.Tensor) -> torch.Tensor:
    """Depth of every node: 1 for the root's children, ``1 + depth(parent)`` below.

    Args:
        parents: ``[N]`` or ``[B, N]`` int64, topological (see :func:`validate_parents`).

    Returns:
        ``[N]`` or ``[B, N]`` int64, same shape as ``parents``.
    """
    p = _as_parents(parents)
    validate_parents(p)
    d = torch.zeros_like(p)
    for i in range(p.shape[-1]):
        par = p[..., i]
        above = d.gather(-1, par.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        d[..., i] = torch.where(par < 0, torch.ones_like(par), above + 1)
    return d


def positions(parents: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Sequence position of every tree position (root first): ``start`` for the root, ``start +
    depth`` for node ``i`` at position ``i+1``. With ``start`` = the committed length this is the
    position id (e.g. for rotary embeddings) an engine feeds the target for each tree token.

    Args:
        parents: ``[N]`` or ``[B, N]`` int64, topological.
        start: the root's position.

    Returns:
        ``[N+1]`` or ``[B, N+1]`` int64.
    """
    d = depths(parents)
    root = torch.zeros(*d.shape[:-1], 1, dtype=d.dtype, device=d.device)
    return torch.cat([root, d], dim=-1) + int(start)


def children(parents: torch.Tensor) -> list[list[int]]:
    """Children of each position of one tree, siblings ordered by index.

    Args:
        parents: ``[N]`` int64, topological.

    Returns:
        ``N+1`` lists indexed by *position*: ``result[0]`` holds the node indices of the root's
        children, ``result[i+1]`` those of node ``i``'s children.
    """
    p = _as_parents(parents)
    if p.dim() != 1:
        raise ValueError(f"parents must have shape [N] (one tree), got {tuple(p.shape)}")
    validate_parents(p)
    out: list[list[int]] = [[] for _ in range(p.shape[0] + 1)]
    for i, par in enumerate(p.tolist()):
        out[par + 1].append(i)
    return out


def _ancestors(p: torch.Tensor) -> torch.Tensor:
    """``[..., N, N]`` bool: ``[i, j]`` iff node j is node i or one of its ancestors."""
    N = p.shape[-1]
    eye = torch.eye(N, dtype=torch.bool, device=p.device)
    anc = eye.expand(*p.shape[:-1], N, N).clone()
    for i in range(N):
        par = p[..., i]
        has = par >= 0
        # row i = own bit | row of the parent (already final: the parent precedes i)
        row = anc.gather(-2, par.clamp(min=0)[..., None, None].expand(*p.shape[:-1], 1, N))
        anc[..., i, :] |= row.squeeze(-2) & has.unsqueeze(-1)
    return anc


# --------------------------------------------------------------------------------------------------
# Attention masks
# --------------------------------------------------------------------------------------------------


def _position_ancestors(p: torch.Tensor, include_root: bool) -> torch.Tensor:
    anc = _ancestors(p)
    if not include_root:
        return anc
    N = p.shape[-1]
    lead = p.shape[:-1]
    out = torch.zeros(*lead, N + 1, N + 1, dtype=torch.bool, device=p.device)
    out[..., :, 0] = True
    out[..., 1:, 1:] = anc
    return out


def attention_mask(
    parents: torch.Tensor, prefix_len: int = 0, *, include_root: bool = False
) -> torch.Tensor:
    """Tree attention mask: each tree token attends to the whole prefix, its ancestors and itself.

    Args:
        parents: ``[N]`` or ``[B, N]`` int64, topological.
        prefix_len: length of the committed prefix every tree token sees (0 gives the query-only
            ``[N, N]`` form).
        include_root: rows and columns over the ``N+1`` positions (the root, i.e. the last committed
            token, fed with the tree as in SGLang) instead of the ``N`` nodes. The root attends to
            itself only; every node also attends to the root.

    Returns:
        bool, ``[..., T, prefix_len + T]`` with ``T = N`` (or ``N+1`` with ``include_root``):
        columns ``0..prefix_len-1`` are the prefix (all True), column ``prefix_len + j`` is tree
        token ``j``; entry ``[i, prefix_len + j]`` is True iff token ``j`` is token ``i`` or one of
        its ancestors.
    """
    p = _as_parents(parents)
    validate_parents(p)
    _check_count("prefix_len", prefix_len, minimum=0)
    tree = _position_ancestors(p, include_root)
    if prefix_len == 0:
        return tree
    prefix = torch.ones(*tree.shape[:-1], prefix_len, dtype=torch.bool, device=tree.device)
    return torch.cat([prefix, tree], dim=-1)


def packed_attention_mask(parents: torch.Tensor, *, include_root: bool = False) -> torch.Tensor:
    """The query-only tree mask with each row packed into int32 words.

    Bit order: bit ``j % 32`` (least significant bit = 0) of word ``j // 32`` of row ``i`` is set
    iff tree token ``i`` attends to tree token ``j`` (itself or an ancestor). Words are int32 with
    two's-complement wrap, so a set bit 31 makes the word negative; reinterpret as uint32 if needed.

    Args:
        parents: ``[N]`` or ``[B, N]`` int64, topological.
        include_root: pack over the ``N+1`` positions (bit 0 = the root) instead of the ``N`` nodes.

    Returns:
        ``[..., T, max(1, ceil(T / 32))]`` int32 with ``T = N`` (or ``N+1``).
    """
    dense = attention_mask(parents, include_root=include_root)
    T = dense.shape[-1]
    words = max(1, math.ceil(T / 32))
    padded = torch.zeros(*dense.shape[:-1], words * 32, dtype=torch.int64, device=dense.device)
    padded[..., :T] = dense.to(torch.int64)
    weights = torch.tensor([1 << k for k in range(32)], dtype=torch.int64, device=dense.device)
    packed = (padded.reshape(*dense.shape[:-1], words, 32) * weights).sum(-1)
    packed = torch.where(packed >= 1 << 31, packed - (1 << 32), packed)
    return packed.to(torch.int32)


# --------------------------------------------------------------------------------------------------
# Engine layouts
# --------------------------------------------------------------------------------------------------


def to_sglang(
    parents: torch.Tensor, num_nodes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SGLang's linked-list layout: first child and next sibling of every position.

    Args:
        parents: ``[N]`` or ``[B, N]`` int64, topological.
        num_nodes: optional ``[B]``: padding nodes are left out (their entries are -1 and no real
            position links to them).

    Returns:
        ``(retrive_next_token, retrive_next_sibling)``, each ``[N+1]`` or ``[B, N+1]`` int64 over
        positions: the position of the first child (smallest index) of each position, and the
        position of each position's next sibling (next larger index with the same parent); -1 for
        none. Position 0 (the root) never has a sibling.
    """
    p = _as_parents(parents)
    validate_parents(p, num_nodes)
    batched = p.dim() == 2
    p2 = p if batched else p.unsqueeze(0)
    B, N = p2.shape
    limit = _num_nodes(num_nodes, B, N, batched).tolist()
    nxt = torch.full((B, N + 1), -1, dtype=torch.int64)
    sib = torch.full((B, N + 1), -1, dtype=torch.int64)
    rows = p2.cpu().tolist()
    for b in range(B):
        last_child: dict[int, int] = {}
        for i in range(limit[b]):
            parent_pos = rows[b][i] + 1
            if parent_pos in last_child:
                sib[b, last_child[parent_pos]] = i + 1
            else:
                nxt[b, parent_pos] = i + 1
            last_child[parent_pos] = i + 1
    nxt, sib = nxt.to(p.device), sib.to(p.device)
    return (nxt, sib) if batched else (nxt[0], sib[0])


def from_sglang(
    retrive_next_token: torch.Tensor,
    retrive_next_sibling: torch.Tensor,
    num_nodes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Parents from SGLang's first-child / next-sibling layout (the inverse of :func:`to_sglang`).

    Args:
        retrive_next_token: ``[N+1]`` or ``[B, N+1]`` int64 over positions (position 0 = root).
        retrive_next_sibling: same shape.
        num_nodes: optional ``[B]``: positions past ``num_nodes[b]`` are padding and ignored.

    Returns:
        parents ``[N]`` or ``[B, N]`` int64 (padding nodes get -1).

    Raises:
        ValueError naming the request and position when a real position is not reached from the
        root exactly once, a link points outside ``[1, N]`` or into padding, a child's position is
        not larger than its parent's (not topological), or siblings are not in increasing order.
    """
    for name, t in (
        ("retrive_next_token", retrive_next_token),
        ("retrive_next_sibling", retrive_next_sibling),
    ):
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be an int64 tensor")
        if t.dim() not in (1, 2) or t.shape[-1] < 1:
            raise ValueError(f"{name} must have shape [N+1] or [B, N+1], got {tuple(t.shape)}")
    if retrive_next_token.shape != retrive_next_sibling.shape:
        raise ValueError(
            f"retrive_next_token has shape {tuple(retrive_next_token.shape)} but retrive_next_sibling "
            f"has {tuple(retrive_next_sibling.shape)}; expected the same"
        )
    batched = retrive_next_token.dim() == 2
    nt = retrive_next_token.reshape(-1, retrive_next_token.shape[-1]).cpu().tolist()
    ns = retrive_next_sibling.reshape(-1, retrive_next_token.shape[-1]).cpu().tolist()
    B, N = len(nt), retrive_next_token.shape[-1] - 1
    limit = _num_nodes(num_nodes, B, N, batched).tolist()
    out = torch.full((B, N), -1, dtype=torch.int64)
    for b in range(B):
        who = f"request {b}, " if batched else ""
        n = limit[b]
        seen = [False] * (n + 1)
        seen[0] = True
        stack = [0]
        while stack:
            pos = stack.pop()
            child, prev = nt[b][pos], None
            while child != -1:
                what = "retrive_next_token" if prev is None else "retrive_next_sibling"
                src = pos if prev is None else prev
                if not 1 <= child <= n:
                    raise ValueError(
                        f"{who}position {src}: {what} = {child}; expected -1 or a position in [1, {n}]"
                    )
                if child <= pos:
                    raise ValueError(
                        f"{who}position {child} is a child of position {pos}; children must come "
                        "after their parent (topological order)"
                    )
                if prev is not None and child <= prev:
                    raise ValueError(
                        f"{who}position {prev}: retrive_next_sibling = {child}; siblings must be in "
                        "increasing order"
                    )
                if seen[child]:
                    raise ValueError(f"{who}position {child} is reached twice from the root")
                seen[child] = True
                out[b, child - 1] = pos - 1
                stack.append(child)
                prev, child = child, ns[b][child]
        missing = [q for q in range(1, n + 1) if not seen[q]]
        if missing:
            raise ValueError(f"{who}position {missing[0]} is not reached from the root")
    out = out.to(retrive_next_token.device)
    return out if batched else out[0]


def to_retrieve_indices(parents: torch.Tensor) -> torch.Tensor:
    """Medusa/EAGLE path matrix of one tree: one row per leaf, the positions from the root down.

    Args:
        parents: ``[N]`` int64, topological.

    Returns:
        ``retrieve_indices`` ``[num_leaves, max_depth + 1]`` int64: row ``r`` is ``[0, ...,
        leaf_position]`` for the ``r``-th leaf in increasing node index, then -1. For ``N = 0`` one
        row ``[0]`` (the root alone).
    """
    p = _as_parents(parents)
    if p.dim() != 1:
        raise ValueError(f"parents must have shape [N] (one tree), got {tuple(p.shape)}")
    validate_parents(p)
    par = p.tolist()
    N = len(par)
    if N == 0:
        return torch.zeros(1, 1, dtype=torch.int64, device=p.device)
    has_child = [False] * N
    for q in par:
        if q >= 0:
            has_child[q] = True
    paths = []
    for leaf in (i for i in range(N) if not has_child[i]):
        path, node = [], leaf
        while node >= 0:
            path.append(node + 1)
            node = par[node]
        paths.append([0, *reversed(path)])
    width = max(len(r) for r in paths)
    out = torch.full((len(paths), width), -1, dtype=torch.int64)
    for r, path in enumerate(paths):
        out[r, : len(path)] = torch.tensor(path)
    return out.to(p.device)


def from_retrieve_indices(retrieve_indices: torch.Tensor) -> torch.Tensor:
    """Parents of one tree from its path matrix (the inverse of :func:`to_retrieve_indices`).

    Args:
        retrieve_indices: ``[num_paths, max_depth + 1]`` integer: each row starts with position 0,
            continues with positions down one root-to-node path, then -1 padding. Rows may repeat
            prefixes and need not be leaves or sorted.

    Returns:
        parents ``[N]`` int64, ``N`` = the largest position present.

    Raises:
        ValueError naming the row and column when a row does not start with 0, has a value after
        -1 padding, gives a position two different parents, puts a child at a position not larger
        than its parent's, or when a position in ``[1, N]`` appears in no row.
    """
    r = retrieve_indices
    if not isinstance(r, torch.Tensor) or r.dtype not in (torch.int32, torch.int64):
        raise TypeError("retrieve_indices must be an int64 tensor")
    if r.dim() != 2 or r.shape[0] < 1 or r.shape[1] < 1:
        raise ValueError(
            f"retrieve_indices must have shape [num_paths, max_depth+1], got {tuple(r.shape)}"
        )
    rows = r.cpu().tolist()
    parent_of: dict[int, int] = {}
    for ri, row in enumerate(rows):
        if row[0] != 0:
            raise ValueError(
                f"retrieve_indices[{ri}, 0] = {row[0]}; every path starts at the root (0)"
            )
        ended = False
        for c in range(1, len(row)):
            v = row[c]
            if v == -1:
                ended = True
                continue
            if ended:
                raise ValueError(f"retrieve_indices[{ri}, {c}] = {v} follows -1 padding")
            prev = row[c - 1]
            if v <= prev:
                raise ValueError(
                    f"retrieve_indices[{ri}, {c}] = {v} is a child of position {prev}; positions must "
                    "increase along a path (topological order)"
                )
            if parent_of.setdefault(v, prev) != prev:
                raise ValueError(
                    f"retrieve_indices[{ri}, {c}]: position {v} has parent {prev} here but "
                    f"{parent_of[v]} in an earlier row"
                )
    N = max(parent_of, default=0)
    missing = [q for q in range(1, N + 1) if q not in parent_of]
    if missing:
        raise ValueError(
            f"retrieve_indices: position {missing[0]} appears in no row (positions 1..{N} expected)"
        )
    return torch.tensor(
        [parent_of[q] - 1 for q in range(1, N + 1)], dtype=torch.int64, device=r.device
    )


# --------------------------------------------------------------------------------------------------
# EAGLE-2 tree builder
# --------------------------------------------------------------------------------------------------


def build_eagle2_tree(
    scores: torch.Tensor, parents_of_candidates: torch.Tensor, num_nodes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the ``num_nodes`` best draft candidates that form a tree (EAGLE-2's re-ranking).

    The draft expands step by step; candidate ``c`` (flat index ``step * width + j``) has a score
    (its cumulative log-probability) and a parent candidate (``-1`` for a child of the root). The
    builder takes candidates best first, always among those whose parent is already taken: when
    scores do not increase along a path (cumulative log-probabilities never do) this is exactly the
    ``num_nodes`` highest scores, what SGLang's ``build_tree_kernel_efficient`` selects. Ties go to
    the smaller candidate index. The chosen candidates are returned in increasing candidate index,
    which is topological because a parent's index is smaller than its child's.

    Args:
        scores: ``[depth, width]`` (one request) or ``[B, depth, width]`` float: step ``s``'s
            candidates in row ``s``. ``-inf`` marks an unused slot (e.g. step 0 has only ``topk``
            candidates): it is never chosen. NaN is refused.
        parents_of_candidates: same shape, int64: the flat candidate index of each candidate's
            parent, ``-1`` for the root's children; must be smaller than the candidate's own index.
        num_nodes: ``N``, the number of nodes of the tree (the root excluded).

    Returns:
        ``(candidates, parents)``, each ``[N]`` or ``[B, N]`` int64: the chosen flat candidate
        indices (ascending; gather the draft tokens with them) and the tree in this module's layout.

    Raises:
        ValueError naming the request when fewer than ``num_nodes`` candidates are reachable, a
        score is NaN, or a parent index is out of range; on shape mismatches.
    """
    if not isinstance(scores, torch.Tensor) or not scores.dtype.is_floating_point:
        raise TypeError("scores must be a floating-point tensor of cumulative log-probabilities")
    if scores.dim() not in (2, 3):
        raise ValueError(
            f"scores must have shape [depth, width] or [B, depth, width], got {tuple(scores.shape)}"
        )
    if not isinstance(parents_of_candidates, torch.Tensor) or parents_of_candidates.dtype not in (
        torch.int32,
        torch.int64,
    ):
        raise TypeError("parents_of_candidates must be an int64 tensor")
    if parents_of_candidates.shape != scores.shape:
        raise ValueError(
            f"parents_of_candidates has shape {tuple(parents_of_candidates.shape)} but scores has "
            f"{tuple(scores.shape)}; expected the same"
        )
    _check_count("num_nodes", num_nodes, minimum=0)
    batched = scores.dim() == 3
    s = scores.detach().reshape(-1 if batched else 1, scores.shape[-2] * scores.shape[-1])
    pc = parents_of_candidates.reshape(s.shape)
    B, M = s.shape
    if num_nodes > M:
        raise ValueError(f"num_nodes = {num_nodes} exceeds the {M} candidates (depth * width)")
    s_rows = s.double().cpu().tolist()
    p_rows = pc.cpu().tolist()
    cand_out = torch.empty(B, num_nodes, dtype=torch.int64)
    par_out = torch.empty(B, num_nodes, dtype=torch.int64)
    for b in range(B):
        who = f"request {b}: " if batched else ""
        sc, pa = s_rows[b], p_rows[b]
        kids: list[list[int]] = [[] for _ in range(M + 1)]  # by parent candidate + 1
        for c in range(M):
            if math.isnan(sc[c]):
                raise ValueError(f"{who}scores holds NaN at candidate {c}")
            if not -1 <= pa[c] < c:
                raise ValueError(
                    f"{who}parents_of_candidates[{c}] = {pa[c]}; expected -1 or a candidate index < {c}"
                )
            if sc[c] != -math.inf:
                kids[pa[c] + 1].append(c)
        heap = [(-sc[c], c) for c in kids[0]]
        heapq.heapify(heap)
        chosen: list[int] = []
        while heap and len(chosen) < num_nodes:
            _, c = heapq.heappop(heap)
            chosen.append(c)
            for k in kids[c + 1]:
                heapq.heappush(heap, (-sc[k], k))
        if len(chosen) < num_nodes:
            raise ValueError(
                f"{who}only {len(chosen)} candidates are reachable from the root with a finite score; "
                f"num_nodes = {num_nodes}"
            )
        chosen.sort()
        node_of = {c: i for i, c in enumerate(chosen)}
        cand_out[b] = torch.tensor(chosen, dtype=torch.int64)
        par_out[b] = torch.tensor(
            [node_of[pa[c]] if pa[c] >= 0 else -1 for c in chosen], dtype=torch.int64
        )
    cand_out, par_out = cand_out.to(scores.device), par_out.to(scores.device)
    return (cand_out, par_out) if batched else (cand_out[0], par_out[0])


def candidates_from_sglang(
    score_list: Sequence[torch.Tensor], parents_list: Sequence[torch.Tensor], topk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert an EAGLE-2 draft in SGLang's per-step lists to :func:`build_eagle2_tree`'s input.

    SGLang's drafter keeps, per step ``s``, ``score_list[s]`` (``[B, 1, topk]`` for step 0, then
    ``[B, topk, topk]``: ``topk`` children of each of the ``topk`` beams) and ``parents_list[s]``
    (``[B, topk + 1]`` = ``[-1, 0, ..., topk-1]`` for step 0, then ``[B, topk]``: the index, in the
    concatenation of all steps' flattened candidates, of each beam whose children the next step
    scores). Its candidate ``c`` (in that concatenation) is a child of the root when ``c < topk``
    and otherwise of candidate ``parents_list[...][c // topk]`` (the step lists concatenated).

    Args:
        score_list: ``depth`` tensors as above, float.
        parents_list: ``depth`` int64 tensors as above (the last one is not needed and not read).
        topk: candidates per beam.

    Returns:
        ``(scores, parents_of_candidates)``, each ``[B, depth, topk * topk]``: SGLang's candidate
        ``c`` goes to flat index ``c`` for step 0 and ``s * topk**2 + j`` for the ``j``-th candidate
        of step ``s >= 1``; step 0's unused slots hold ``-inf`` and ``-1``.
    """
    _check_count("topk", topk, minimum=1)
    depth = len(score_list)
    if depth < 1 or len(parents_list) != depth:
        raise ValueError(
            f"score_list has {depth} steps and parents_list {len(parents_list)}; expected the same, at least 1"
        )
    B = score_list[0].shape[0]
    for s, t in enumerate(score_list):
        want = (B, 1, topk) if s == 0 else (B, topk, topk)
        if tuple(t.shape) != want:
            raise ValueError(f"score_list[{s}] has shape {tuple(t.shape)}; expected {want}")
    for s, t in enumerate(parents_list[:-1]):
        want = (B, topk + 1) if s == 0 else (B, topk)
        if tuple(t.shape) != want:
            raise ValueError(f"parents_list[{s}] has shape {tuple(t.shape)}; expected {want}")
    W = topk * topk
    flat = torch.cat([t.reshape(B, -1) for t in score_list], dim=1)  # [B, topk + (depth-1) * W]
    M = flat.shape[1]
    c = torch.arange(M)
    to_mine = torch.where(c < topk, c, (1 + (c - topk) // W) * W + (c - topk) % W)
    rows = c // topk  # which beam's children; row 0 = the root's
    if depth > 1:
        beam_of_row = torch.cat([t.to(torch.int64) for t in parents_list[:-1]], dim=1).cpu()
        used = beam_of_row[:, 1:]  # entry 0 is step 0's -1 (the root)
        if bool(((used < 0) | (used >= M)).any()):
            b, r = (int(v) for v in ((used < 0) | (used >= M)).nonzero()[0])
            raise ValueError(
                f"request {b}: parents_list entry {r + 1} (steps concatenated) = {int(used[b, r])}; "
                f"expected a candidate index in [0, {M})"
            )
        parent_sgl = beam_of_row.gather(1, rows.expand(B, M))
        parent = torch.where(
            rows == 0, torch.full_like(parent_sgl, -1), to_mine[parent_sgl.clamp(min=0)]
        )
    else:
        parent = torch.full((B, M), -1, dtype=torch.int64)
    scores = torch.full((B, depth * W), -math.inf, dtype=flat.dtype)
    parents = torch.full((B, depth * W), -1, dtype=torch.int64)
    scores[:, to_mine] = flat.detach().cpu()
    parents[:, to_mine] = parent
    device = score_list[0].device
    return scores.reshape(B, depth, W).to(device), parents.reshape(B, depth, W).to(device)


# --------------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------------


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} = {value}; expected an int >= {minimum}")


def star(n: int) -> torch.Tensor:
    """``n`` children of the root: ``[-1] * n``, shape ``[n]`` int64."""
    _check_count("n", n, minimum=0)
    return torch.full((n,), -1, dtype=torch.int64)


def balanced_tree(branching: int, depth: int) -> torch.Tensor:
    """The full ``branching``-ary tree of ``depth`` levels below the root, in breadth-first order.

    Returns:
        ``[N]`` int64 with ``N = branching + branching**2 + ... + branching**depth``.
    """
    _check_count("branching", branching, minimum=1)
    _check_count("depth", depth, minimum=0)
    parents: list[int] = []
    level = [-1]
    for _ in range(depth):
        nxt = []
        for par in level:
            for _ in range(branching):
                nxt.append(len(parents))
                parents.append(par)
        level = nxt
    return torch.tensor(parents, dtype=torch.int64)


def random_tree(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random recursive tree: node ``i``'s parent is uniform over ``{-1, 0, ..., i-1}``.

    Args:
        n: number of nodes.
        generator: a CPU ``torch.Generator`` (the global one when None).

    Returns:
        ``[n]`` int64.
    """
    _check_count("n", n, minimum=0)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    upper = torch.arange(n, dtype=torch.float64) + 1  # i+1 choices for node i
    return (u * upper).floor().to(torch.int64).clamp(max=torch.arange(n)) - 1


def eagle2_shaped(
    topk: int, depth: int, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A tree of ``n`` nodes as EAGLE-2 builds it from a random draft.

    Simulates the draft's expansion: step 0 proposes ``topk`` children of the root; each later step
    keeps the ``topk`` best candidates of the previous step (by cumulative log-probability) and
    proposes ``topk`` children for each. Log-probabilities are those of random peaked distributions
    over a small vocabulary. :func:`build_eagle2_tree` then keeps the ``n`` best.

    Args:
        topk: candidates per expanded node and beams per step (EAGLE-2 uses 4 to 10).
        depth: draft steps (4 to 8 in practice); the tree is at most this deep.
        n: nodes, at most ``topk + (depth - 1) * topk**2``.
        generator: a CPU ``torch.Generator`` (the global one when None).

    Returns:
        parents ``[n]`` int64.
    """
    _check_count("topk", topk, minimum=1)
    _check_count("depth", depth, minimum=1)
    _check_count("n", n, minimum=0)
    most = topk + (depth - 1) * topk * topk
    if n > most:
        raise ValueError(f"n = {n} exceeds the {most} candidates of topk={topk}, depth={depth}")
    width = topk * topk
    vocab = max(4 * topk, 32)
    scores = torch.full((depth, width), -math.inf, dtype=torch.float64)
    parents = torch.full((depth, width), -1, dtype=torch.int64)

    def top_logprobs(count: int) -> torch.Tensor:
        logits = 3.0 * torch.randn(count, vocab, generator=generator, dtype=torch.float64)
        return logits.log_softmax(-1).topk(topk, dim=-1).values  # [count, topk], descending

    scores[0, :topk] = top_logprobs(1)[0]
    for step in range(1, depth):
        prev = scores[step - 1]
        beams = prev.topk(topk).indices.sort().values  # kept candidates of the previous step
        lp = top_logprobs(topk)
        scores[step] = (prev[beams].unsqueeze(1) + lp).reshape(-1)
        parents[step] = ((step - 1) * width + beams).repeat_interleave(topk)
    _, tree = build_eagle2_tree(scores, parents, n)
    return tree
