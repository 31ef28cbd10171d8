"""tree.acceptance-length: the mean accepted length of each random tree rule is what its law says.

Losslessness alone does not pin a sampler down: one that tries only the first child of every
position and then draws from the residual is lossless, and accepts less. This check draws trees
with the process each rule assumes (children i.i.d. from the parent's draft row with replacement,
without replacement, or distinct arbitrary tokens for target-only drafts), runs the backend with
its own generator, and compares the total accepted length with its exact expectation.

The expectation is exact per drawn tree: the check's float64 model gives the law of the accepted
length of that tree (the token rule's per-child acceptance probabilities from the recursive
rejection thresholds, or the target CDF buckets for target-only drafts; the traversal rule's
outcomes from :func:`specsample.reference_traversal.traversal_outcomes`), hence its mean and
variance. Under a correct backend the standardized sum
``z = (sum L_b - sum E[L_b]) / sqrt(sum Var[L_b])`` is normal (bounded summands, thousands of
trees), and the check fails when ``|z|`` exceeds the two-sided quantile of ``ALPHA`` divided by
the number of rules (Bonferroni): false-alarm rate ``ALPHA`` = 1e-4 per check, up to the normal
approximation's error in that tail (an Edgeworth term of order skewness / sqrt(trees), about a
fifth of ``ALPHA`` at the fast level's 2000 trees, less at full).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from specsample import trees
from specsample.reference_traversal import traversal_outcomes

from .check_common import first_claimed_dtype
from .check_stats import ALPHA
from .check_tree import _rrs_model
from .checks import CheckFailed, Target, check
from .tree_common import call_args, claimed_rules, label_of

#: trees per rule, by level
SAMPLES = {"fast": 2000, "full": 100_000}
#: the tree: three root children (nodes 0..2), two children under each (nodes 3..8)
PARENTS = [-1, -1, -1, 0, 0, 1, 1, 2, 2]
#: dyadic rows over V = 6 (thirty-seconds: exact in every claimed dtype). ``Q[a]`` is the target
#: row after position ``a`` (positions 1..3 are the root's children); ``P[a]`` the draft row that
#: position ``a``'s children are drawn from. Leaf positions share ``LEAF``.
Q = [[8, 3, 6, 9, 4, 2], [2, 12, 4, 4, 6, 4], [10, 2, 2, 8, 2, 8], [4, 4, 12, 2, 6, 4]]
P = [[6, 6, 4, 10, 4, 2], [4, 8, 8, 4, 4, 4], [12, 4, 2, 4, 2, 8], [2, 6, 10, 6, 4, 4]]
LEAF = [4, 4, 8, 8, 4, 4]
V = 6


def _rows() -> tuple[torch.Tensor, torch.Tensor]:
    """``(p [N, V], q [N+1, V])`` float64 rows of the tree (node i's draft row is its parent's)."""
    q = torch.tensor(Q + [LEAF] * (len(PARENTS) + 1 - len(Q)), dtype=torch.float64) / 32
    p_pos = torch.tensor(P, dtype=torch.float64) / 32
    p = torch.stack([p_pos[par + 1] for par in PARENTS])
    return p, q


def draw_trees(sampling: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, N]`` int64 tokens drafted by the process ``sampling`` assumes.

    ``with_replacement``: every position's children i.i.d. from its draft row; ``without_replacement``:
    drawn without replacement from it; ``target_only``: distinct tokens, uniformly at random.
    """
    p, _ = _rows()
    children = trees.children(torch.tensor(PARENTS))
    ids = torch.zeros((n, len(PARENTS)), dtype=torch.int64)
    for kids in children:
        if not kids:
            continue
        row = p[kids[0]].expand(n, V)
        if sampling == "target_only":
            toks = torch.argsort(torch.rand((n, V), generator=generator), dim=1)[:, : len(kids)]
        else:
            repl = sampling == "with_replacement"
            toks = torch.multinomial(row, len(kids), replacement=repl, generator=generator)
        ids[:, kids] = toks
    return ids


def _token_law(
    pos: int,
    children: Sequence[Sequence[int]],
    ids: Sequence[int],
    p: list[list[float]],
    q: list[list[float]],
    sampling: str,
) -> list[float]:
    """Law of the accepted length from position ``pos`` on under the token rule: ``[P(L = k)]``."""
    kids = children[pos]
    if not kids:
        return [1.0]
    drafted = [ids[c] for c in kids]
    if sampling == "target_only":
        accept = [q[pos][x] for x in drafted]  # the buckets of one coin over the target CDF
    else:
        th, _ = _rrs_model(p[kids[0]], q[pos], drafted, sampling == "without_replacement")
        accept, reach = [], 1.0
        for t in th:
            accept.append(reach * t)
            reach *= 1.0 - t
    law = [1.0 - sum(accept)]
    for c, a in zip(kids, accept, strict=True):
        sub = _token_law(c + 1, children, ids, p, q, sampling)
        law.extend([0.0] * (len(sub) + 1 - len(law)))
        for k, w in enumerate(sub):
            law[k + 1] += a * w
    return law


def _traversal_law(children, ids, p: list[list[float]], q: list[list[float]]) -> list[float]:
    """Law of the accepted length under the traversal rule (its exact outcomes)."""
    p_rows = {a: p[kids[0]] for a, kids in enumerate(children) if kids}
    law = [0.0] * (len(ids) + 1)
    for prob, path, _ in traversal_outcomes(children, ids, p_rows, q):
        law[len(path)] += float(prob)
    return law


def length_moments(
    ids: Sequence[int], p: torch.Tensor, q: torch.Tensor, sampling: str, rule: str
) -> tuple[float, float]:
    """``(E[L], Var[L])`` of the accepted length of one tree of ``PARENTS`` in float64.

    ``ids`` [N] tokens, ``p`` [N, V] draft rows (node i's row), ``q`` [N+1, V] target rows.
    """
    children = trees.children(torch.tensor(PARENTS))
    p_l, q_l = p.tolist(), q.tolist()
    if rule == "traversal":
        law = _traversal_law(children, list(ids), p_l, q_l)
    else:
        law = _token_law(0, children, list(ids), p_l, q_l, sampling)
    mean = sum(k * w for k, w in enumerate(law))
    return mean, sum(k * k * w for k, w in enumerate(law)) - mean * mean


@check("tree.acceptance-length")
def tree_acceptance_length(target: Target) -> str:
    """On trees drafted by each random rule's process, the backend's mean accepted length equals
    the exact expectation (per-tree law in float64): a z-test at the suite's false-alarm rate."""
    rules = claimed_rules(target, modes=("random",))
    dev, dtype = target.device, first_claimed_dtype(target)
    n = SAMPLES[target.level]
    alpha = ALPHA / len(rules)
    p64, q64 = (x.to(dtype).to(torch.float64) for x in _rows())  # what the backend reads
    parents = torch.tensor(PARENTS).expand(n, len(PARENTS)).contiguous().to(dev)
    p_in = p64.to(dtype).expand(n, -1, -1).contiguous().to(dev)
    q_in = q64.to(dtype).expand(n, -1, -1).contiguous().to(dev)
    results = []
    for k, (_mode, sampling, rule) in enumerate(rules):
        ids = draw_trees(sampling, n, torch.Generator().manual_seed(5300 + k))
        probs, ds = call_args(sampling, p_in)
        out = target.backend.verify_tree(
            ids.to(dev), parents, probs, q_in, draft_sampling=ds, rule=rule,
            generator=torch.Generator(dev).manual_seed(5400 + k),
        )  # fmt: skip
        label = label_of("random", sampling, rule)
        if bool((out.status != 0).any()):
            raise CheckFailed(f"acceptance length [{label}]: requests were flagged")
        lengths = (out.num_emitted.cpu() - 1).to(torch.float64)
        cache: dict[tuple[int, ...], tuple[float, float]] = {}
        mean = var = 0.0
        for row in ids.tolist():
            key = tuple(row)
            if key not in cache:
                cache[key] = length_moments(row, p64, q64, sampling, rule)
            m, v = cache[key]
            mean += m
            var += v
        got = float(lengths.sum())
        z = (got - mean) / math.sqrt(var) if var > 0 else (0.0 if got == mean else math.inf)
        pvalue = math.erfc(abs(z) / math.sqrt(2.0))
        results.append(
            (pvalue, f"mean accepted length [{label}]: {got / n:.4f}, expected {mean / n:.4f} "
             f"(standard error {math.sqrt(var) / n:.2g}, z = {z:.2f})")
        )  # fmt: skip
    worst = min(results)
    if worst[0] < alpha:
        raise CheckFailed(
            "; ".join(msg for pv, msg in results if pv < alpha)
            + f" [p-value < {alpha:.2g} per rule, {len(rules)} rules, false-alarm rate {ALPHA:g}]"
        )
    return f"{n} trees per rule; " + "; ".join(msg for _, msg in results)
