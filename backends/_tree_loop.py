"""``torch-loop``'s tree verification: a readable Python walk per request, with host reads.

Like ``torch-loop``'s ``verify()`` it is the naive yardstick: every decision is a host read. The
structure is read on the host with :func:`specsample.validation_tree.request_structure`; the rules
and status bits are docs/contract-trees.md's. The last token is drawn as ``torch-loop`` draws it,
so a chain gives its ``verify()`` tokens.
"""

from __future__ import annotations

import torch
from specsample.contract_tree import TreeVerifyInputs, TreeVerifyOutput
from specsample.rng import draw_uniforms
from specsample.status import FLOAT32_MAX, Status
from specsample.validation_tree import distinct_rule, request_structure

from ._traversal_loop import traversal_request


def _bad(x: torch.Tensor) -> bool:
    """NaN, infinite or negative anywhere in ``x`` (one host read)."""
    return not bool(((x >= 0) & (x < float("inf"))).all().item())


def _draw(r: torch.Tensor, u: float) -> tuple[int, int]:
    """``(status, token)``: the last token from the unnormalized float32 row ``r``."""
    total = float(r.sum(dtype=torch.float64).item())
    if total > FLOAT32_MAX:
        return int(Status.ROW_SUM_OVERFLOW), -1
    if total == 0.0:
        return int(Status.ZERO_ROW), -1
    cdf = torch.cumsum(r, dim=0)
    threshold = u * cdf[-1].item()
    last = int((cdf > threshold).to(torch.int8).argmax().item())
    if cdf[last].item() <= threshold:  # rounding put the threshold at the total
        last = int(torch.nonzero(r > 0)[-1].item())
    return 0, last


def verify_tree_loop(inputs: TreeVerifyInputs) -> TreeVerifyOutput:
    """Verify every request's tree with a Python walk (docs/contract-trees.md)."""
    B, N, D = inputs.batch_size, inputs.num_nodes_max, inputs.max_depth
    device = inputs.device
    greedy = inputs.mode == "greedy"
    u = inputs.uniforms
    if u is None and not greedy:
        u = draw_uniforms(B, N, inputs.generator, device)
    rule = distinct_rule(inputs)
    token_ids = torch.full((B, D + 1), -1, dtype=torch.int64, device=device)
    accepted = torch.full((B, D), -1, dtype=torch.int64, device=device)
    num_emitted = torch.zeros(B, dtype=torch.int64, device=device)
    status = torch.zeros(B, dtype=torch.int32, device=device)
    for b in range(B):
        ids = [int(x) for x in inputs.draft_token_ids[b].tolist()]
        n = int(inputs.num_nodes[b].item())
        children, error = request_structure(b, inputs.parents[b].tolist(), n, D, ids, rule)
        if error is not None:
            status[b] = int(error[0])
            continue
        flags, tokens, path = _request(b, ids[:n], children, inputs, u, greedy)
        status[b] = flags
        for k, t in enumerate(tokens):
            token_ids[b, k] = t
        for k, node in enumerate(path):
            accepted[b, k] = node
        num_emitted[b] = len(tokens)
    return TreeVerifyOutput(token_ids, num_emitted, accepted, status)


def _request(b, ids, children, inputs, u, greedy) -> tuple[int, list[int], list[int]]:
    """One request of a valid tree: ``(status flags, tokens, accepted nodes)``."""
    V = inputs.vocab_size
    q, p = inputs.target_probs[b], None if inputs.draft_probs is None else inputs.draft_probs[b]
    flags = Status.BAD_DRAFT_ID if any(not 0 <= x < V for x in ids) else Status.OK
    path: list[int] = []
    pos = 0
    if greedy:
        if flags:
            return int(flags), [], []
        while True:
            if _bad(q[pos]):
                return int(Status.BAD_TARGET_VALUE), [], []
            best = int(q[pos].argmax().item())
            nxt = next((c for c in children[pos] if ids[c] == best), None)
            if nxt is None:
                return 0, [ids[c] for c in path] + [best], path
            path.append(nxt)
            pos = nxt + 1

    # Random mode: every real node's drafted entries (and explicit coins) first; the traversal
    # rule reads whole rows instead (step 2 of its status).
    for a, kids in enumerate(children if inputs.rule == "token" else []):
        for c in kids:
            if 0 <= ids[c] < V:
                if _bad(q[a, ids[c]]):
                    flags |= Status.BAD_TARGET_VALUE
                if p is not None and _bad(p[kids[0], ids[c]]):
                    flags |= Status.BAD_DRAFT_VALUE
    n, N = len(ids), inputs.num_nodes_max
    coins = [float(x) for x in u[b].tolist()]
    if inputs.uniforms is not None and any(not 0.0 <= c < 1.0 for c in coins[:n] + coins[N:]):
        flags |= Status.BAD_UNIFORM
    if flags:
        return int(flags), [], []
    if inputs.rule == "traversal":
        bits, weights, path = traversal_request(ids, children, p, q, coins)
        if bits:
            return bits, [], []
        bits, last = _draw(weights, coins[N])  # float64, as the block rule draws
        if bits:
            return bits, [], []
        return 0, [ids[c] for c in path] + [last], path
    while True:
        kids = children[pos]
        if not kids:  # a leaf
            if _bad(q[pos]):
                return int(Status.BAD_TARGET_VALUE), [], []
            weights = q[pos].to(torch.float32)
        elif p is None:
            step = _target_only(ids, kids, q[pos], coins[kids[0]])
            if isinstance(step, int):
                if step < 0:
                    return int(Status.BAD_TARGET_VALUE), [], []
                path.append(step)
                pos = step + 1
                continue
            weights = step
        else:
            step = _rejection(ids, kids, p[kids[0]], q[pos], coins, inputs.draft_sampling)
            if isinstance(step, tuple):
                if step[0] == "accept":
                    path.append(step[1])
                    pos = step[1] + 1
                    continue
                return int(step[1]), [], []
            weights = step
        bits, last = _draw(weights, coins[N])
        if bits:
            return bits, [], []
        return 0, [ids[c] for c in path] + [last], path


def _target_only(ids, kids, q_row, coin) -> int | torch.Tensor:
    """The accepted child, -1 for a bad row, or the float32 weights of the last token."""
    lo = 0.0
    for c in kids:
        qc = float(q_row[ids[c]].item())
        hi = lo + qc
        if qc > 0.0 and lo <= coin < hi:
            return c
        lo = hi
    if _bad(q_row):
        return -1
    row = q_row.to(torch.float32)
    r = row.clone()
    for c in kids:
        r[ids[c]] = 0.0
    return row if r.sum().item() == 0.0 else r


def _rejection(ids, kids, p_row, q_row, coins, sampling) -> tuple | torch.Tensor:
    """``("accept", child)``, ``("flag", Status)``, or the float32 weights of the last token."""
    c0 = kids[0]
    x0 = ids[c0]
    if coins[c0] * float(p_row[x0].item()) < float(q_row[x0].item()):
        return ("accept", c0)
    if _bad(q_row):
        return ("flag", Status.BAD_TARGET_VALUE)
    if _bad(p_row):
        return ("flag", Status.BAD_DRAFT_VALUE)
    q32, p32 = q_row.to(torch.float32), p_row.to(torch.float32)
    r32 = torch.clamp(q32 - p32, min=0.0)
    if r32.sum().item() == 0.0:
        r32 = q32
    if len(kids) == 1:
        return r32
    p = p_row.to(torch.float64)
    r = torch.clamp(q_row.to(torch.float64) - p, min=0.0)
    if r.sum().item() == 0.0:
        r = q_row.to(torch.float64)
    tried = [x0]
    for c in kids[1:]:
        total = float(r.sum().item())
        if total == 0.0:
            return ("flag", Status.ZERO_ROW)
        q_cur = r / total
        p_cur = p
        if sampling == "without_replacement":
            p_cur = p.clone()
            p_cur[tried] = 0.0
            p_total = float(p_cur.sum().item())
            if p_total > 0.0:
                p_cur = p_cur / p_total
        if coins[c] * float(p_cur[ids[c]].item()) < float(q_cur[ids[c]].item()):
            return ("accept", c)
        r = torch.clamp(q_cur - p_cur, min=0.0)
        if r.sum().item() == 0.0:
            r = q_cur
        tried.append(ids[c])
    return r.to(torch.float32)
