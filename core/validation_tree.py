"""Input validation of tree verification, shared by :meth:`Backend.verify_tree` and the reference.

Like :mod:`specsample.validation`: types, shapes, dtypes, devices, modes and claims are checked on
the host and always; everything that needs the values (the tree's structure in ``parents`` and
``num_nodes``, repeated sibling tokens, ids, probabilities, uniforms) is either the backend's job
(``validate="status"``: flagged per request in ``status``, no host sync) or checked here eagerly
by ``validate="full"``, which raises a ``ValueError`` naming the request and node (one host sync).
The rules themselves are in docs/contract-trees.md.
"""

from __future__ import annotations

import dataclasses

import torch

from .contract import Capabilities
from .contract_tree import DRAFT_SAMPLING, TREE_RULES, TreeVerifyInputs, TreeVerifyOutput
from .status import Status
from .validation import VALIDATE_LEVELS, _check_capabilities, _require_tensor, validate_inputs

# num_nodes=None: one read-only [B] tensor of N per (B, N, device), made once (a fill per call is a
# second kernel launch beside a fused backend's one); at most this many are kept
_FULL_COUNTS_KEPT = 64
_full_counts: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def full_tree_counts(B: int, N: int, device: torch.device) -> torch.Tensor:
    """``num_nodes`` for ``num_nodes=None``: int64 ``[B]`` filled with ``N`` on ``device``.

    Cached, so that calls after the first launch no fill kernel; made anew while a CUDA graph is
    being captured (a tensor allocated there belongs to the graph's memory pool). Backends read
    ``num_nodes`` and never write it (as with every input).
    """
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return torch.full((B,), N, dtype=torch.int64, device=device)
    key = (B, N, device)
    counts = _full_counts.get(key)
    if counts is None:
        if len(_full_counts) >= _FULL_COUNTS_KEPT:
            _full_counts.clear()
        counts = _full_counts[key] = torch.full((B,), N, dtype=torch.int64, device=device)
    return counts


_ID_DTYPES = (torch.int32, torch.int64)


def _check_tree_claims(
    caps: Capabilities, backend_name: str, mode: str, sampling: str | None, rule: str
) -> None:
    if not caps.tree_modes:
        raise ValueError(
            f"backend {backend_name!r} does not verify trees (its Capabilities.tree_modes is "
            "empty); use a backend that claims tree verification, e.g. 'torch-vectorized'"
        )
    if mode not in caps.tree_modes:
        raise ValueError(
            f"backend {backend_name!r} does not verify trees in mode={mode!r} (claims "
            f"{caps.tree_modes})"
        )
    if sampling is not None and sampling not in caps.tree_sampling:
        raise ValueError(
            f"backend {backend_name!r} does not verify trees with the {sampling!r} rule (claims "
            f"{caps.tree_sampling})"
        )
    if rule not in caps.tree_rules:
        raise ValueError(
            f"backend {backend_name!r} does not verify trees with rule={rule!r} (claims "
            f"{caps.tree_rules})"
        )


def validate_tree_inputs(
    draft_token_ids: torch.Tensor,
    parents: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    *,
    mode: str = "random",
    draft_sampling: str | None = None,
    num_nodes: torch.Tensor | None = None,
    max_depth: int | None = None,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
    validate: str = "status",
    rule: str = "token",
    capabilities: Capabilities | None = None,
    backend_name: str = "backend",
) -> TreeVerifyInputs:
    """Check the arguments of ``verify_tree`` and return them normalized.

    Shapes: ``draft_token_ids`` [B, N] int32/int64, ``parents`` [B, N] int32/int64,
    ``draft_probs`` [B, N, V] or None, ``target_probs`` [B, N+1, V] float32/float16/bfloat16,
    ``num_nodes`` [B] int32/int64 or None, ``uniforms`` [B, N+1] float32 or None.

    ``validate="full"`` also checks the tree's structure and every value a real node can make the
    walk read (one host sync) and raises on the first problem; ``"status"`` leaves both to the
    backend.

    Raises:
        TypeError: an argument of the wrong type or dtype.
        ValueError: a wrong shape, device, mode, rule, claim; with ``validate="full"`` also a bad
            tree or value (the message names the request and, for the structure, the node).
    """
    if validate not in VALIDATE_LEVELS:
        raise ValueError(f"validate must be one of {VALIDATE_LEVELS}, got {validate!r}")
    if not isinstance(rule, str) or rule not in TREE_RULES:
        raise ValueError(f"rule must be one of {TREE_RULES}, got {rule!r}")
    base = validate_inputs(
        draft_token_ids, draft_probs, target_probs, mode=mode, generator=generator,
        uniforms=uniforms, validate="status",
    )  # fmt: skip
    B, N, V = base.batch_size, base.num_draft, base.vocab_size
    device = base.device
    parents = _require_tensor("parents", parents)
    if parents.dtype not in _ID_DTYPES:
        raise TypeError(f"parents must be int64 (or int32), got {parents.dtype}")
    if tuple(parents.shape) != (B, N):
        raise ValueError(
            f"parents has shape {tuple(parents.shape)}; expected [B, N]={(B, N)} like "
            "draft_token_ids"
        )
    if parents.device != device:
        raise ValueError(f"parents is on {parents.device} but target_probs is on {device}")
    if num_nodes is None:
        counts = full_tree_counts(B, N, device)
    else:
        num_nodes = _require_tensor("num_nodes", num_nodes)
        if num_nodes.dtype not in _ID_DTYPES:
            raise TypeError(f"num_nodes must be int64 (or int32), got {num_nodes.dtype}")
        if tuple(num_nodes.shape) != (B,):
            raise ValueError(f"num_nodes has shape {tuple(num_nodes.shape)}; expected [B]={(B,)}")
        if num_nodes.device != device:
            raise ValueError(f"num_nodes is on {num_nodes.device} but target_probs is on {device}")
        counts = num_nodes.to(torch.int64).contiguous()
    if max_depth is not None and (
        isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0
    ):
        raise ValueError(f"max_depth must be a non-negative int or None, got {max_depth!r}")
    if draft_sampling is not None and draft_sampling not in DRAFT_SAMPLING:
        raise ValueError(
            f"draft_sampling must be one of {DRAFT_SAMPLING} or None, got {draft_sampling!r}"
        )
    random_with_p = mode == "random" and draft_probs is not None
    if random_with_p and draft_sampling is None:
        raise ValueError(
            f"draft_sampling must be one of {DRAFT_SAMPLING} in random mode with draft_probs "
            "(how the siblings were drawn from their draft distribution), got None"
        )
    if rule == "traversal" and mode == "random" and draft_sampling != "with_replacement":
        raise ValueError(
            "rule='traversal' verifies trees whose siblings were drawn independently from "
            "draft_probs (draft_sampling='with_replacement'); got "
            + ("draft_probs=None" if draft_probs is None else f"draft_sampling={draft_sampling!r}")
        )
    inputs = TreeVerifyInputs(
        draft_token_ids=base.draft_token_ids,
        parents=parents.to(torch.int64).contiguous(),
        num_nodes=counts,
        draft_probs=base.draft_probs,
        target_probs=base.target_probs,
        mode=mode,
        draft_sampling=draft_sampling if random_with_p else None,
        max_depth=N if max_depth is None else max_depth,
        rule=rule,
        generator=base.generator,
        uniforms=base.uniforms,
        batch_size=B,
        num_nodes_max=N,
        vocab_size=V,
        device=device,
    )
    if capabilities is not None:
        # The tree's mode is checked against tree_modes below (a backend may verify random trees
        # but not random chains); dtype, device and sizes as for chains.
        chain_caps = dataclasses.replace(
            capabilities, modes=tuple(capabilities.modes) + tuple(capabilities.tree_modes)
        )
        _check_capabilities(chain_caps, backend_name, mode, target_probs.dtype, device, V, N)
        _check_tree_claims(capabilities, backend_name, mode, inputs.sampling, rule)
    if validate == "full" and B > 0:
        check_tree_structure(inputs)
        check_tree_values(inputs)
    return inputs


def request_structure(
    b: int,
    parents: list[int],
    n: int,
    max_depth: int,
    ids: list[int],
    distinct_rule: str | None,
) -> tuple[list[list[int]], tuple[Status, str] | None]:
    """Request ``b``'s tree from its host copy: ``(children per position, error)``.

    ``parents`` [N] and ``ids`` [N] are the request's rows, ``n`` its ``num_nodes``.
    ``children[a]`` lists the real nodes whose parent is position ``a`` (0 = root, ``i + 1`` =
    node i) in index order. ``error`` is None for a valid tree, else the status bit and the
    message ``validate="full"`` raises (naming the request and node); the first problem in node
    order wins, and repeated siblings (checked only when ``distinct_rule`` names the rule that
    needs distinct siblings) only count in a valid tree.
    """
    N = len(parents)
    if not 0 <= n <= N:
        return [[]], (
            Status.BAD_TREE,
            f"num_nodes: request {b} has {n} nodes; expected 0..N={N}",
        )
    children: list[list[int]] = [[] for _ in range(n + 1)]
    depth = [0] * n
    for i in range(n):
        a = parents[i]
        if n <= a < N:
            return children, (
                Status.BAD_TREE,
                f"parents: request {b}, node {i} has parent {a}, a padding node "
                f"(num_nodes[{b}]={n}); a padding node cannot have real children",
            )
        if not -1 <= a < i:
            return children, (
                Status.BAD_TREE,
                f"parents: request {b}, node {i} has parent {a}; expected -1 (the root) or a "
                f"node index below {i} (nodes in topological order)",
            )
        depth[i] = 1 if a == -1 else depth[a] + 1
        if depth[i] > max_depth:
            return children, (
                Status.BAD_TREE,
                f"parents: request {b}, node {i} is at depth {depth[i]}, beyond "
                f"max_depth={max_depth}",
            )
        children[a + 1].append(i)
    if distinct_rule is not None:
        for a, kids in enumerate(children):
            seen: dict[int, int] = {}
            for c in kids:
                if ids[c] in seen:
                    where = "the root" if a == 0 else f"node {a - 1}"
                    return children, (
                        Status.REPEATED_SIBLING,
                        f"draft_token_ids: request {b}, node {c} repeats token {ids[c]} of its "
                        f"sibling node {seen[ids[c]]} (children of {where}); the {distinct_rule} "
                        "rule needs distinct sibling tokens",
                    )
                seen[ids[c]] = c
    return children, None


def distinct_rule(inputs: TreeVerifyInputs) -> str | None:
    """The name of the rule when it needs distinct sibling tokens, else None."""
    if not inputs.needs_distinct_siblings:
        return None
    return "target-only" if inputs.draft_probs is None else "without-replacement"


def check_tree_structure(inputs: TreeVerifyInputs) -> None:
    """``validate="full"``'s structure check: raise the first request's structure error."""
    parents = inputs.parents.cpu().tolist()  # the host sync of the eager check
    counts = inputs.num_nodes.cpu().tolist()
    ids = inputs.draft_token_ids.cpu().tolist()
    rule = distinct_rule(inputs)
    for b in range(inputs.batch_size):
        _, error = request_structure(b, parents[b], counts[b], inputs.max_depth, ids[b], rule)
        if error is not None:
            raise ValueError(error[1])


def _rows_bad(x: torch.Tensor) -> torch.Tensor:
    lo, hi = torch.aminmax(x, dim=-1)
    return ~((lo >= 0) & (hi < float("inf")))


def check_tree_values(inputs: TreeVerifyInputs) -> None:
    """``validate="full"``'s value check over the real nodes of a valid tree; raise on the first.

    Checks the real nodes' ids, the target rows of the root and of every real node, the draft
    rows of the real nodes (random mode), and explicit uniforms of the real nodes and the last
    coin. Padding is not checked. One min/max pass per tensor, one host transfer.
    """
    B, N, V = inputs.batch_size, inputs.num_nodes_max, inputs.vocab_size
    device = inputs.device
    real = torch.arange(N, device=device) < inputs.num_nodes.unsqueeze(1)  # [B, N]
    checks: list[tuple[str, str, torch.Tensor]] = []
    ids = inputs.draft_token_ids.to(torch.int64)
    checks.append(
        ("draft_token_ids", f"holds an id outside [0, V={V})",
         (real & ((ids < 0) | (ids >= V))).any(dim=1))
    )  # fmt: skip
    positions = torch.cat([torch.ones((B, 1), dtype=torch.bool, device=device), real], dim=1)
    bad_q = positions & _rows_bad(inputs.target_probs)
    checks.append(("target_probs", "holds a NaN, infinite or negative value", bad_q.any(dim=1)))
    if inputs.mode == "random" and inputs.draft_probs is not None:
        bad_p = real & _rows_bad(inputs.draft_probs)
        checks.append(("draft_probs", "holds a NaN, infinite or negative value", bad_p.any(dim=1)))
    if inputs.mode == "random" and inputs.uniforms is not None:
        u = inputs.uniforms
        bad_u = ~((u >= 0) & (u < 1))
        read = torch.cat([real, torch.ones((B, 1), dtype=torch.bool, device=device)], dim=1)
        checks.append(("uniforms", "holds a value outside [0, 1)", (read & bad_u).any(dim=1)))
    bad = torch.stack([c[2] for c in checks]).cpu()  # [checks, B]: the one host sync
    for (name, problem, _), row in zip(checks, bad, strict=True):
        flagged = torch.nonzero(row).flatten().tolist()
        if flagged:
            more = f" ({len(flagged) - 1} more requests too)" if len(flagged) > 1 else ""
            raise ValueError(f"{name} {problem} in request {flagged[0]}{more}")


def empty_tree_output(inputs: TreeVerifyInputs) -> TreeVerifyOutput:
    """The output for B = 0: ``token_ids`` [0, D+1], ``accepted_nodes`` [0, D], empty [0] rest."""
    device, D = inputs.device, inputs.max_depth
    return TreeVerifyOutput(
        token_ids=torch.empty((0, D + 1), dtype=torch.int64, device=device),
        num_emitted=torch.empty((0,), dtype=torch.int64, device=device),
        accepted_nodes=torch.empty((0, D), dtype=torch.int64, device=device),
        status=torch.empty((0,), dtype=torch.int32, device=device),
    )
