"""Wrong variants of traversal verification, for the exact losslessness checks to reject.

Each is :func:`specsample.reference_traversal.traverse` with one step changed; the names say
which. They share its signature so :func:`specsample.reference_traversal.traversal_outcomes` can
integrate their coins exactly.
"""

from __future__ import annotations

from specsample.reference_block import block_residual, residual_mass
from specsample.reference_traversal import path_weight, post_order


def variant(
    *,
    token_residual=False,
    stale_weight=False,
    stale_siblings=False,
    unnormalized=False,
    drop_rejected_draft=False,
    ratio_weight=False,
):
    """A traversal rule with the named step wrong.

    - ``token_residual``: a rejected child leaves its parent the token-wise residual
      ``max(0, q - p)`` (the parent's weight ignored) instead of ``max(0, w q - p)``.
    - ``stale_weight``: the parent keeps its weight after losing a child (no
      ``Z / (Z + 1 - w)`` update), so it is tried with its prefix weight.
    - ``stale_siblings``: the later siblings keep the weights computed from the parent's original
      row and weight (their subtrees are not re-weighted after the update).
    - ``unnormalized``: the parent's new row is the residual as is, not renormalized.
    - ``drop_rejected_draft``: the parent's draft row loses the rejected token and is
      renormalized (the update for siblings drawn without replacement, applied to independent
      draws), as one public re-implementation does.
    - ``ratio_weight``: with ``drop_rejected_draft``, the parent's new weight is
      ``min(1, Z / remaining draft mass)`` instead of ``Z / (Z + 1 - w)``, as another public
      re-implementation does.
    """

    def rule(children, ids, p_rows, q_rows, decide):
        n = len(ids)
        parent = [0] * n
        for a, kids in enumerate(children):
            for c in kids:
                parent[c] = a
        one = next(iter(p_rows.values()))[0] * 0 + 1 if p_rows else 1.0
        weight = [one] * (n + 1)
        cur = {a: list(q_rows[a]) for a, kids in enumerate(children) if kids}
        p_rows = {a: list(row) for a, row in p_rows.items()}  # updated in place below
        last = {}

        def assign(tops, a):
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
            w = one if token_residual else weight[a]
            z = residual_mass(weight[a], p_rows[a], cur[a])
            denom = z + one - weight[a]
            if not stale_weight:
                weight[a] = z / denom if denom > 0 else one
            r = block_residual(w, p_rows[a], cur[a])
            if drop_rejected_draft:
                kept = list(p_rows[a])
                kept[ids[node]] = one * 0
                mass = sum(kept, one * 0)
                p_rows[a] = [v / mass for v in kept] if mass > 0 else kept
                if ratio_weight:
                    weight[a] = min(one, z / mass) if mass > 0 else one * 0
            last[a] = r
            total = sum(r, one * 0)
            if unnormalized:
                cur[a] = list(r)
            else:
                cur[a] = [v / total for v in r] if total > 0 else list(cur[a])
            kids = children[a]
            if not stale_siblings:
                assign(kids[kids.index(node) + 1 :], a)
        return [], last.get(0, list(q_rows[0]))

    return rule


MUTANTS = {
    "token-wise residual": variant(token_residual=True),
    "parent weight not updated": variant(stale_weight=True),
    "siblings not re-weighted": variant(stale_siblings=True),
    "residual not renormalized": variant(unnormalized=True),
    "draft row without the rejected token": variant(drop_rejected_draft=True),
    "weight Z / remaining draft mass": variant(drop_rejected_draft=True, ratio_weight=True),
}
