"""The float64 reference of tree verification: the definition of docs/contract-trees.md.

A tree of N drafted nodes per request is verified in one walk from the root. The rules (greedy,
target-only, multi-draft recursive rejection sampling with or without replacement), the indexing
of positions and draft distributions, and the values each request reads for ``status`` are
stated in docs/contract-trees.md; this module applies them one request at a time, for clarity
rather than speed. A chain ``parents = [-1, 0, ..., K-2]`` gives exactly
:func:`specsample.reference_verify`'s output (``rule="traversal"``: its ``rule="block"`` output).
"""

from __future__ import annotations

import torch

from .contract import VerifyInputs
from .contract_tree import DRAFT_SAMPLING, TreeVerifyInputs, TreeVerifyOutput
from .reference import accept_draft, bad_values, inverse_cdf, reference_coins, residual
from .reference_traversal import traversal_request
from .status import FLOAT32_MAX, Status
from .validation import resolve_validate
from .validation_tree import (
    distinct_rule,
    empty_tree_output,
    request_structure,
    validate_tree_inputs,
)

__all__ = ["DRAFT_SAMPLING", "TreeVerifyOutput", "reference_verify_tree"]


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


def _coins(inputs: TreeVerifyInputs) -> torch.Tensor:
    """``[B, N+1]`` float64 coins: the caller's, or drawn as ``verify()`` draws ``[B, K+1]``."""
    chain = VerifyInputs(
        draft_token_ids=inputs.draft_token_ids,
        draft_probs=inputs.draft_probs,
        target_probs=inputs.target_probs,
        mode=inputs.mode,
        generator=inputs.generator,
        uniforms=inputs.uniforms,
        batch_size=inputs.batch_size,
        num_draft=inputs.num_nodes_max,
        vocab_size=inputs.vocab_size,
        device=inputs.device,
    )
    return reference_coins(chain, inputs.num_nodes_max)


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
    validate: str = "status",
    rule: str = "token",
) -> TreeVerifyOutput:
    """Verify a tree of drafts per request in float64 (docs/contract-trees.md).

    Same arguments and output as :meth:`specsample.Backend.verify_tree` (which every backend's
    tokens and status must equal, up to the last token's proven near-ties).

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
        max_depth: D, the longest accepted path the output holds; default N. A deeper real node
            makes the tree invalid.
        uniforms: ``[B, N+1]`` float32 in [0, 1): ``uniforms[b, i]`` is node i's coin,
            ``uniforms[b, N]`` the last draw's. Drawn from ``generator`` when None.
        generator: ``torch.Generator`` for the uniforms when they are not given.
        validate: ``"status"``: an invalid tree is flagged ``BAD_TREE``, repeated siblings where
            the rule needs distinct ones ``REPEATED_SIBLING``, bad values as the walk reads them
            (docs/contract-trees.md, "Status and validation"). ``"full"``: those raise.
        rule: ``"token"`` (one node at a time from the root) or ``"traversal"`` (leaf to root,
            :mod:`specsample.reference_traversal`; random mode needs ``draft_probs`` and
            ``draft_sampling="with_replacement"``, greedy mode is the token rule's walk).

    Returns:
        :class:`TreeVerifyOutput` on the inputs' device.

    Raises:
        TypeError / ValueError: bad shapes, dtypes or modes; with ``validate="full"`` also tree
            structure (naming the request and node) and values.
    """
    level = resolve_validate(validate, None)
    inputs = validate_tree_inputs(
        draft_token_ids,
        parents,
        draft_probs,
        target_probs,
        mode=mode,
        draft_sampling=draft_sampling,
        num_nodes=num_nodes,
        max_depth=max_depth,
        generator=generator,
        uniforms=uniforms,
        validate=level,
        rule=rule,
    )
    if inputs.batch_size == 0:
        return empty_tree_output(inputs)
    B, D = inputs.batch_size, inputs.max_depth
    greedy = mode == "greedy"
    ids_all = inputs.draft_token_ids.cpu().to(torch.int64).tolist()
    par_all = inputs.parents.cpu().tolist()
    counts = inputs.num_nodes.cpu().tolist()
    rule = distinct_rule(inputs)
    q_all = inputs.target_probs.cpu()
    p_all = None if inputs.draft_probs is None else inputs.draft_probs.cpu()
    u_all = None if greedy else _coins(inputs)

    token_ids = torch.full((B, D + 1), -1, dtype=torch.int64)
    accepted = torch.full((B, D), -1, dtype=torch.int64)
    num_emitted = torch.zeros(B, dtype=torch.int64)
    status = torch.zeros(B, dtype=torch.int32)
    for b in range(B):
        children, error = request_structure(b, par_all[b], counts[b], D, ids_all[b], rule)
        if error is not None:  # validate="full" raised already; "status" flags the request
            status[b] = int(error[0])
            continue
        if inputs.rule == "traversal" and not greedy:
            assert p_all is not None and u_all is not None
            flags, tokens, path = traversal_request(
                ids_all[b][: counts[b]],
                children,
                p_all[b],
                q_all[b],
                u_all[b].tolist(),
                inputs.uniforms is not None,
            )
        else:
            flags, tokens, path = _verify_tree_request(
                ids_all[b][: counts[b]],
                children,
                None if p_all is None else p_all[b],
                q_all[b],
                None if u_all is None else u_all[b].tolist(),
                inputs.uniforms is not None,
                greedy,
                inputs.draft_sampling,
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
