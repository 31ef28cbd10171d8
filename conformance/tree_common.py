"""Helpers of the tree checks (``check_tree.py``): claims, tree workloads, comparison with the
float64 tree reference."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from specsample import trees
from specsample.contract_tree import TreeVerifyOutput
from specsample.reference_tree import reference_verify_tree

from .check_common import cdf_epsilon, first_claimed_dtype
from .checks import CheckFailed, NotClaimed, Target

#: the references of each tree ``rule`` (every claimed rule is compared with its own)
RULE_REFERENCES = {
    "token": reference_verify_tree,
    "traversal": functools.partial(reference_verify_tree, rule="traversal"),
}

#: (mode, sampling) of every tree rule: sampling is ``Capabilities.tree_sampling``'s name
RULES = (
    ("greedy", None),
    ("random", "target_only"),
    ("random", "with_replacement"),
    ("random", "without_replacement"),
)

#: the (mode, sampling) pairs of ``RULES`` each tree ``rule`` is defined for; the traversal rule
#: assumes siblings drawn independently from one draft row (docs/rules.md)
TREE_RULES = {
    "token": RULES,
    "traversal": (("greedy", None), ("random", "with_replacement")),
}


def require_trees(target: Target) -> None:
    if not target.capabilities.tree_modes:
        raise NotClaimed("tree verification not claimed (Capabilities.tree_modes is empty)")


def claimed_rules(target: Target, modes: tuple[str, ...] = ("random", "greedy")) -> list:
    """``[(mode, sampling, rule)]`` claimed by the target among ``modes``; NotClaimed if none."""
    require_trees(target)
    caps = target.capabilities
    out = [
        (mode, sampling, rule)
        for mode, sampling in RULES
        for rule in caps.tree_rules
        if (mode, sampling) in TREE_RULES.get(rule, RULES)
        and mode in modes
        and mode in caps.tree_modes
        and (sampling is None or sampling in caps.tree_sampling)
    ]
    if not out:
        raise NotClaimed(f"no claimed tree rule in modes {modes}")
    return out


def call_args(
    sampling: str | None, p: torch.Tensor | None
) -> tuple[torch.Tensor | None, str | None]:
    """``(draft_probs, draft_sampling)`` of a rule."""
    if sampling in (None, "target_only"):
        return None, None
    return p, sampling


def label_of(mode: str, sampling: str | None, rule: str) -> str:
    return f"{mode}{'' if sampling is None else '/' + sampling}, rule={rule}"


@dataclass
class TreeCase:
    """A batch of trees and rows: ``ids``/``parents`` [B, N], ``num_nodes`` [B], ``p`` [B, N, V],
    ``q`` [B, N+1, V], ``u`` [B, N+1] float32 (CPU tensors)."""

    ids: torch.Tensor
    parents: torch.Tensor
    num_nodes: torch.Tensor
    p: torch.Tensor
    q: torch.Tensor
    u: torch.Tensor
    label: str

    def to(self, device: torch.device, dtype: torch.dtype) -> TreeCase:
        return TreeCase(
            self.ids.to(device),
            self.parents.to(device),
            self.num_nodes.to(device),
            self.p.to(dtype).to(device),
            self.q.to(dtype).to(device),
            self.u.to(device),
            self.label,
        )


def shapes(kind: str, g: torch.Generator, n: int) -> torch.Tensor:
    """One tree of about ``n`` nodes of a workload ``kind``: parents ``[N]`` int64."""
    if kind == "balanced":
        return trees.balanced_tree(2, 3)[:n]
    if kind == "eagle2":
        return trees.eagle2_shaped(4, 4, min(n, 16), generator=g)
    if kind == "star":
        return trees.star(n)
    if kind == "chain":
        return trees.chain(n)
    return trees.random_tree(n, generator=g)


def random_case(kinds: list[str], B: int, N: int, V: int, seed: int) -> TreeCase:
    """Trees of the given kinds padded to N nodes (``num_nodes`` marks the real ones), distinct
    sibling tokens, and rows that put most target mass on the children so walks go deep.

    Padding nodes hold garbage (id -1, parent 99): they must not be read.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((B, N), -1, dtype=torch.int64)
    parents = torch.full((B, N), 99, dtype=torch.int64)
    counts = torch.zeros(B, dtype=torch.int64)
    q = torch.rand(B, N + 1, V, generator=g, dtype=torch.float64) ** 3
    p = torch.rand(B, N, V, generator=g, dtype=torch.float64) ** 2
    for b in range(B):
        tree = shapes(kinds[b % len(kinds)], g, int(torch.randint(0, N + 1, (1,), generator=g)))
        n = int(tree.numel())
        counts[b] = n
        parents[b, :n] = tree
        for a, kids in enumerate(trees.children(tree) if n else [[]]):
            toks = torch.randperm(V, generator=g)[: len(kids)]
            for c, t in zip(kids, toks.tolist(), strict=False):
                ids[b, c] = t
                q[b, a, t] += 2.0 * float(torch.rand(1, generator=g))  # likely accepted
                if kids:
                    p[b, kids[0], t] += float(torch.rand(1, generator=g))
    q = (q / q.sum(-1, keepdim=True)).to(torch.float32)
    p = (p / p.sum(-1, keepdim=True)).to(torch.float32)
    u = torch.rand(B, N + 1, generator=g)
    return TreeCase(ids, parents, counts, p, q, u, f"{'/'.join(kinds)} trees, N={N}, V={V}")


def compare_tree(
    target: Target,
    case: TreeCase,
    mode: str,
    sampling: str | None,
    rule: str,
    *,
    max_depth: int | None = None,
    tolerance: bool = True,
) -> int:
    """Run the backend with the case's uniforms and compare with the rule's reference.

    Status, ``num_emitted`` and ``accepted_nodes`` must match exactly, and so must every accepted
    token. The last token may differ only within the inverse-CDF tolerance: the reference run with
    the last coin moved by ``cdf_epsilon(V)`` either way must bracket the backend's token. A coin
    that close to 1 has no float32 coin above it to run the reference with (``1 - 2**-24`` is the
    largest), so there the bracket has no upper end: a backend whose float32 row sum rounds up
    draws past the reference's token at that coin, as ``exact.*`` excuses for chains.
    Returns the number of such near-tie differences.
    """
    dtype = first_claimed_dtype(target)
    c = case.to(target.device, dtype)
    p, ds = call_args(sampling, c.p)
    u = c.u if mode == "random" else None
    kwargs = dict(mode=mode, draft_sampling=ds, num_nodes=c.num_nodes, max_depth=max_depth)
    if not target.capabilities.status_flags:
        # A backend without status flags raises on a request the reference flags (bad id,
        # repeated sibling...; tree.bad-input checks that): compare on the clean requests only.
        ref = RULE_REFERENCES[rule](c.ids, c.parents, p, c.q, uniforms=u, **kwargs)
        keep = (ref.status == 0).nonzero().flatten().to(target.device)
        if keep.numel() < c.ids.shape[0]:
            c = TreeCase(
                c.ids[keep], c.parents[keep], c.num_nodes[keep], c.p[keep], c.q[keep],
                c.u[keep], c.label,
            )  # fmt: skip
            p, ds = call_args(sampling, c.p)
            u = c.u if mode == "random" else None
            kwargs["num_nodes"] = c.num_nodes
    out = target.backend.verify_tree(c.ids, c.parents, p, c.q, uniforms=u, rule=rule, **kwargs)
    ref = RULE_REFERENCES[rule](c.ids, c.parents, p, c.q, uniforms=u, **kwargs)
    label = f"{case.label}, {label_of(mode, sampling, rule)}"
    check_tree_output(out, ref, label)
    got, want = out.token_ids.cpu(), ref.token_ids.cpu()
    rows = torch.nonzero((got != want).any(dim=1)).flatten().tolist()
    if not rows:
        return 0
    if mode == "greedy" or not tolerance:
        b = rows[0]
        raise CheckFailed(
            f"tokens [{label}, request {b}]: the backend emitted {got[b].tolist()}, the reference "
            f"{want[b].tolist()} ({len(rows)} requests differ)"
        )
    eps = cdf_epsilon(c.q.shape[-1])
    N = c.ids.shape[1]
    lo_u, hi_u = c.u.clone(), c.u.clone()
    lo_u[:, N] = (lo_u[:, N] - eps).clamp(min=0.0)
    hi_u[:, N] = (hi_u[:, N] + eps).clamp(max=1.0 - 2.0**-24)
    lo = RULE_REFERENCES[rule](c.ids, c.parents, p, c.q, uniforms=lo_u, **kwargs).token_ids.cpu()
    hi = RULE_REFERENCES[rule](c.ids, c.parents, p, c.q, uniforms=hi_u, **kwargs).token_ids.cpu()
    top = (c.u[:, N].double() + eps >= 1.0 - 2.0**-24).cpu()  # no float32 coin above the bracket
    for b in rows:
        j = int(ref.num_emitted[b]) - 1
        upper_ok = bool(top[b]) or got[b, j] <= hi[b, j]
        if not (torch.equal(got[b, :j], want[b, :j]) and lo[b, j] <= got[b, j] and upper_ok):
            raise CheckFailed(
                f"last token [{label}, request {b}]: the backend emitted {got[b].tolist()}, the "
                f"reference {want[b].tolist()}; coins within {eps:.2g} of the last coin give "
                f"tokens {int(lo[b, j])}..{int(hi[b, j])} only"
            )
    return len(rows)


def check_tree_output(out: TreeVerifyOutput, ref: TreeVerifyOutput, label: str) -> None:
    """Shapes, dtypes, status, ``num_emitted`` and ``accepted_nodes`` equal the reference's."""
    for name in ("token_ids", "num_emitted", "accepted_nodes", "status"):
        a, b = getattr(out, name), getattr(ref, name)
        if not isinstance(a, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            raise CheckFailed(
                f"output {name} [{label}]: expected {b.dtype} of shape {tuple(b.shape)}, got "
                f"{getattr(a, 'dtype', type(a).__name__)} of shape {tuple(getattr(a, 'shape', ()))}"
            )
    for name in ("status", "num_emitted", "accepted_nodes"):
        a, b = getattr(out, name).cpu(), getattr(ref, name).cpu()
        bad = torch.nonzero((a != b).reshape(a.shape[0], -1).any(dim=1)).flatten().tolist()
        if bad:
            i = bad[0]
            raise CheckFailed(
                f"{name} [{label}, request {i}]: the backend gives {a[i].tolist()}, the reference "
                f"{b[i].tolist()} ({len(bad)} requests differ)"
            )
