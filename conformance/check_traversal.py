"""tree.traversal-exact: the exact law of traversal verification on trees deeper than one level.

``tree.lossless-exact`` covers stars, where the traversal rule is recursive rejection sampling at
the root; this check covers paths whose acceptance depends on their subtrees. Setting: the target
and the drafter are functions of the whole prefix (dyadic rows over V = 3 tokens, exact in every
claimed dtype), the tree shape is fixed and every node's children are drawn independently from the
drafter's row at their parent (with replacement, the process the rule assumes). Every drafted tree
is enumerated with its probability; for each, the check's float64 model of the rule
(:func:`specsample.reference_traversal.traverse`) gives the weight each tried node is tested with,
and the backend is run once per outcome (the first ``j`` tries fail with a coin halfway between
the weight and 1, try ``j + 1`` passes with half its weight) and per cell of the last draw. The
backend's emitted tokens, weighted by the outcome's float64 probability and completed to the
tree's depth + 1 with target draws, must give the target's law of sequences within 1e-9 (the
float64 sums are exact to about 1e-15): a weight or residual off by more than half a cell shows.
"""

from __future__ import annotations

import itertools

import torch
from specsample import trees
from specsample.reference_traversal import traverse

from .check_common import first_claimed_dtype
from .checks import CheckFailed, NotClaimed, Target, check

#: tree shapes (parents): a chain, a fork under a node, two levels under two roots, three levels
SHAPES = {
    "chain": [-1, 0, 1],
    "y": [-1, 0, 0, 1],
    "mixed": [-1, 0, -1, 1, 2],
}
#: dyadic rows (sixteenths; zeros included), picked per prefix
ROWS = [
    [0.5, 0.25, 0.25],
    [0.125, 0.875, 0.0],
    [0.0625, 0.4375, 0.5],
    [0.75, 0.0, 0.25],
    [0.3125, 0.3125, 0.375],
    [0.0, 0.5625, 0.4375],
]
V = 3


def _row(prefix: tuple, salt: int) -> list[float]:
    """A fixed dyadic row for a prefix (target: salt 0, drafter: salt 1)."""
    k = salt * 5 + 7 * len(prefix)
    for x in prefix:
        k = k * 3 + x
    return ROWS[k % len(ROWS)]


def target(prefix: tuple) -> list[float]:
    return _row(prefix, 0)


def draft(prefix: tuple) -> list[float]:
    return _row(prefix, 1)


def _cases(parents: list[int]):
    """``(tokens, prefixes, probability, children, try weights)`` of every drafted tree."""
    children = trees.children(torch.tensor(parents, dtype=torch.int64))
    n = len(parents)
    for toks in itertools.product(range(V), repeat=n):
        prefixes, prob = [], 1.0
        for i, a in enumerate(parents):
            up = () if a == -1 else prefixes[a]
            prob *= draft(up)[toks[i]]
            prefixes.append(up + (toks[i],))
        if prob > 0:
            yield list(toks), prefixes, prob, children


def _requests(parents: list[int]):
    """Every (drafted tree, coin outcome, last cell): ``(ids, coins [n+1], weight)``."""
    out = []
    n = len(parents)
    for toks, prefixes, prob, children in _cases(parents):
        pos_prefix = [(), *prefixes]
        p_rows = {a: draft(pos_prefix[a]) for a, kids in enumerate(children) if kids}
        q_rows = [target(pre) for pre in pos_prefix]
        for j in range(n + 1):
            tried: list[tuple[int, float]] = []

            def decide(node, w, j=j, tried=tried):
                tried.append((node, w))
                return len(tried) == j + 1

            path, row = traverse(children, toks, p_rows, q_rows, decide)
            if len(tried) < j + 1 and j < n:
                continue
            coins = [0.0] * (n + 1)
            reach = prob
            for k, (node, w) in enumerate(tried):
                coins[node] = w / 2 if k == j else (1 + w) / 2
                reach *= w if k == j else 1 - w
            if reach == 0:
                continue
            total, acc = sum(row), 0.0
            for v in row:
                if v > 0:
                    out.append((toks, coins[:n] + [(acc + v / 2) / total], reach * v / total))
                acc += v
    return out


def _complete(law: dict, length: int) -> dict:
    out: dict[tuple, float] = {}
    frontier = dict(law)
    while frontier:
        nxt: dict[tuple, float] = {}
        for s, w in frontier.items():
            if len(s) >= length:
                out[s[:length]] = out.get(s[:length], 0.0) + w
                continue
            for x, v in enumerate(target(s)):
                if v > 0:
                    nxt[s + (x,)] = nxt.get(s + (x,), 0.0) + w * v
        frontier = nxt
    return out


@check("tree.traversal-exact")
def tree_traversal_exact(target_: Target) -> str:
    """The exact law of rule="traversal" on trees of depth 2 and 3 (V = 3, prefix-dependent dyadic
    rows, drafts with replacement): every coin outcome and last-token cell is evaluated once, and
    the emitted sequences, completed by target draws, have the target's law within 1e-9."""
    caps = target_.capabilities
    if "traversal" not in caps.tree_rules:
        raise NotClaimed("rule='traversal' not claimed (Capabilities.tree_rules)")
    if "random" not in caps.tree_modes or "with_replacement" not in caps.tree_sampling:
        raise NotClaimed("random trees drawn with replacement not claimed")
    dev, dtype = target_.device, first_claimed_dtype(target_)
    count = 0
    for name, parents in SHAPES.items():
        reqs = _requests(parents)
        n, B = len(parents), len(reqs)
        ids = torch.tensor([r[0] for r in reqs], dtype=torch.int64)
        u = torch.tensor([r[1] for r in reqs], dtype=torch.float64).to(torch.float32)
        pos_rows = []
        for toks, _, _ in reqs:
            prefixes = [()]
            for i, a in enumerate(parents):
                prefixes.append(prefixes[a + 1] + (toks[i],))
            pos_rows.append(prefixes)
        q = torch.tensor([[target(pre) for pre in pre_b] for pre_b in pos_rows])
        # node i was drawn from the drafter's row at its parent's prefix
        p = torch.tensor([[draft(pre_b[a + 1]) for a in parents] for pre_b in pos_rows])
        out = target_.backend.verify_tree(
            ids.to(dev), torch.tensor(parents).expand(B, n).contiguous().to(dev),
            p.to(dtype).to(dev), q.to(dtype).to(dev), draft_sampling="with_replacement",
            rule="traversal", uniforms=u.to(dev),
        )  # fmt: skip
        if bool((out.status != 0).any()):
            raise CheckFailed(f"traversal cells [{name}]: requests were flagged")
        law: dict[tuple, float] = {}
        toks_out, num = out.token_ids.cpu().tolist(), out.num_emitted.cpu().tolist()
        for (_, _, w), t, k in zip(reqs, toks_out, num, strict=True):
            key = tuple(t[:k])
            law[key] = law.get(key, 0.0) + w
        depth = max(d for d in _depths(parents)) + 1
        for k, what in ((1, "first token"), (2, "first two tokens"), (depth, "completed sequence")):
            got = _complete(law, k)
            want = _complete({(): 1.0}, k)
            keys = set(got) | set(want)
            worst = max(keys, key=lambda s: abs(got.get(s, 0.0) - want.get(s, 0.0)))
            gap = abs(got.get(worst, 0.0) - want.get(worst, 0.0))
            if gap > 1e-9:
                raise CheckFailed(
                    f"lossless [rule=traversal, {name} tree]: the law of the {what} differs from "
                    f"the target's (sequence {worst}: {got.get(worst, 0.0):.6g} vs "
                    f"{want.get(worst, 0.0):.6g})"
                )
        count += B
    return f"{count} coin cells over {len(SHAPES)} tree shapes; law = target within 1e-9"


def _depths(parents: list[int]) -> list[int]:
    d: list[int] = []
    for a in parents:
        d.append(1 if a == -1 else d[a] + 1)
    return d
