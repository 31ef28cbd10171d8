"""Tree cases of the differential fuzzer: ``verify_tree`` against the float64 tree reference.

For a backend that claims tree verification (``Capabilities.tree_modes``), every fourth case of a
campaign is a tree case: random, EAGLE-2 shaped, balanced, star or chain trees padded with
``num_nodes``, one claimed mode and sampling (the claimed tree rules defined for it in turn), rows
that put mass on the drafted children (so walks go deep), coins with the extremes 0 and
``1 - 2**-24`` planted. Cases are a deterministic function of
``(seed, index)`` and the claims. Tree cases are not shrunk; the reproducer reruns the whole case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .contract import Capabilities

if TYPE_CHECKING:
    from .contract import Backend
    from .fuzz_cases import FuzzCase

#: every TREE_EVERY-th case (index % TREE_EVERY == TREE_EVERY - 1) is a tree case
TREE_EVERY = 4
_KINDS = ("random", "eagle2", "balanced", "star", "chain")


def is_tree_index(index: int, caps: Capabilities) -> bool:
    """True when case ``index`` of a campaign on a backend with ``caps`` is a tree case."""
    return bool(caps.tree_modes) and index % TREE_EVERY == TREE_EVERY - 1


def make_tree_case(seed: int, index: int, caps: Capabilities) -> FuzzCase:
    """The tree case ``index`` of campaign ``seed`` (CPU tensors, the first claimed dtype)."""
    from specsample.conformance.tree_common import RULES, TREE_RULES, random_case

    from .fuzz_cases import DTYPES, FuzzCase

    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    rules = [
        (m, s) for m, s in RULES if m in caps.tree_modes and (s is None or s in caps.tree_sampling)
    ]
    mode, sampling = rules[int(torch.randint(len(rules), (), generator=gen))]
    B = int(torch.randint(1, 6, (), generator=gen))
    N = int(torch.randint(0, 13, (), generator=gen))
    V = (2, 3, 5, 8, 31, 100)[int(torch.randint(6, (), generator=gen))]
    kinds = [_KINDS[int(k)] for k in torch.randint(len(_KINDS), (B,), generator=gen)]
    seed_case = int(torch.randint(2**31, (), generator=gen))
    case = random_case(kinds, B, N, V, seed_case)
    if caps.max_vocab is not None and V > caps.max_vocab:
        V = caps.max_vocab
        case = random_case(kinds, B, N, V, seed_case)
    u = case.u
    extremes = torch.rand(u.shape, generator=gen)
    u = torch.where(extremes < 0.1, 0.0, torch.where(extremes > 0.9, 1.0 - 2.0**-24, u))
    dtype = DTYPES[caps.dtypes[0]]
    with_p = sampling not in (None, "target_only")
    # the claimed tree rules defined for (mode, sampling), in turn over the campaign's tree cases
    valid = [r for r in caps.tree_rules if (mode, sampling) in TREE_RULES.get(r, RULES)]
    rule = valid[(index // TREE_EVERY) % len(valid)] if valid else caps.tree_rules[0]
    tree = {"parents": case.parents, "num_nodes": case.num_nodes, "sampling": sampling,
            "rule": rule}  # fmt: skip
    tags = ("tree", "/".join(sorted(set(kinds))), mode, sampling or "greedy", caps.dtypes[0])
    return FuzzCase(
        index,
        case.ids,
        case.p.to(dtype) if with_p else None,
        case.q.to(dtype),
        u if mode == "random" else None,
        mode,
        tags,
        tree,
    )


def check_tree_case(
    backend: Backend, case: FuzzCase, device: torch.device
) -> tuple[str | None, int]:
    """``(message, rounding_ties)`` of a tree case, like :func:`specsample.fuzz.check_case`."""
    from specsample.conformance.checks import CheckFailed, Target
    from specsample.conformance.tree_common import TreeCase, compare_tree

    tree = case.tree
    assert tree is not None
    B, N = case.draft_token_ids.shape
    p = case.draft_probs if case.draft_probs is not None else torch.zeros(
        (B, N, case.target_probs.shape[-1]), dtype=case.target_probs.dtype)  # fmt: skip
    u = case.uniforms if case.uniforms is not None else torch.zeros((B, N + 1))
    tc = TreeCase(case.draft_token_ids, tree["parents"], tree["num_nodes"], p,
                  case.target_probs, u, f"tree case {case.index}")  # fmt: skip
    target = Target(backend.name, backend, "fast", device)
    try:
        ties = compare_tree(target, tc, case.mode, tree["sampling"], tree["rule"])
    except CheckFailed as exc:
        return str(exc), 0
    except Exception as exc:  # a valid input must never raise
        return f"raised {type(exc).__name__}: {exc}", 0
    return None, ties


def tree_snippet(case: FuzzCase, backend: str, seed: int) -> str:
    """A program that reruns the tree case on ``backend`` and on the reference."""
    from .fuzz_shrink import _literal

    tree = case.tree
    assert tree is not None
    sampling = tree["sampling"]
    ds = None if sampling in (None, "target_only") else sampling
    p = "None" if case.draft_probs is None else _literal(case.draft_probs)
    u = "None" if case.uniforms is None else _literal(case.uniforms)
    return "\n".join(
        [
            f"# specsample fuzz --backend {backend} --seed {seed}: tree case {case.index}",
            "import specsample",
            "import torch",
            "",
            f"ids = {_literal(case.draft_token_ids)}",
            f"parents = {_literal(tree['parents'])}",
            f"num_nodes = {_literal(tree['num_nodes'])}",
            f"draft_probs = {p}",
            f"target_probs = {_literal(case.target_probs)}",
            f"uniforms = {u}",
            "args = (ids, parents, draft_probs, target_probs)",
            f"kwargs = dict(mode={case.mode!r}, draft_sampling={ds!r}, num_nodes=num_nodes, "
            f"uniforms=uniforms, rule={tree['rule']!r})",
            f"out = specsample.get_backend({backend!r}).verify_tree(*args, **kwargs)",
            "ref = specsample.reference_verify_tree(*args, **kwargs)",
            'print("backend:  ", out.token_ids.tolist(), out.status.tolist())',
            'print("reference:", ref.token_ids.tolist(), ref.status.tolist())',
        ]
    )
