"""Adversarial *valid* inputs for the differential fuzzer (:mod:`specsample.fuzz`).

Every case is a deterministic function of ``(seed, index)`` and of the backend's claims: dtypes and
modes it claims, K and V within its limits. Values are chosen to stress the rules, never to break
the input contract: every target row keeps a positive entry and a float32-finite sum, every
probability is finite and non-negative, every uniform is in [0, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .contract import Capabilities
from .reference import reference_verify, residual

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: largest float32 below 1 (the largest valid uniform)
U_MAX = 1.0 - 2.0**-24
#: row sums stay below this (the largest float32 is about 3.4e38; sums past it are invalid input)
_SUM_LIMIT = 1e38

# Value patterns of one probability row; each gets the same share of rows.
PATTERNS = (
    "uniform",
    "tiny",
    "huge",
    "subnormal",
    "one-hot",
    "sparse",
    "ties",
    "dyadic",
)
VOCABS = (1, 2, 3, 5, 7, 8, 16, 31, 100, 257, 1000)


@dataclass
class FuzzCase:
    """One call: ``verify(draft_token_ids, draft_probs, target_probs, mode=, uniforms=)``.

    Shapes: ``draft_token_ids`` [B, K] int32/int64, ``draft_probs`` [B, K, V] or None,
    ``target_probs`` [B, K+1, V], ``uniforms`` [B, K+1] float32 (None in greedy mode). Tensors may be
    non-contiguous views. ``tags`` name the adversarial features the case holds. ``rule`` is
    the verification rule of the call (``"block"`` for half of the random-mode cases of a backend
    that claims it).
    """

    index: int
    draft_token_ids: torch.Tensor
    draft_probs: torch.Tensor | None
    target_probs: torch.Tensor
    uniforms: torch.Tensor | None
    mode: str
    tags: tuple[str, ...] = ()
    #: a tree case (specsample.fuzz_tree): ``parents``, ``num_nodes``, ``sampling``, ``rule``
    tree: dict | None = None
    rule: str = "token"
    #: a serving case (specsample.fuzz_serving): ``entry`` ("padded" or "flat") and ``kwargs``, the
    #: padded-layout keyword arguments of ``verify_serving`` (``target_probs`` then holds the
    #: target rows, logits or probabilities, and ``mode`` is "greedy", "random" or "mixed")
    serving: dict | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        B, K1, V = self.target_probs.shape
        return B, K1 - 1, V

    def to(self, device: torch.device | str) -> FuzzCase:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return FuzzCase(
            self.index,
            move(self.draft_token_ids),
            move(self.draft_probs),
            move(self.target_probs),
            move(self.uniforms),
            self.mode,
            self.tags,
            tree=None
            if self.tree is None
            else {
                k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.tree.items()
            },
            rule=self.rule,
            serving=None
            if self.serving is None
            else {
                "entry": self.serving["entry"],
                "kwargs": {
                    k: v.to(device) if isinstance(v, torch.Tensor) else v
                    for k, v in self.serving["kwargs"].items()
                },
            },
        )


def _pick(gen: torch.Generator, options):
    return options[int(torch.randint(len(options), (), generator=gen))]


def _row(gen: torch.Generator, V: int, pattern: str, dtype: torch.dtype) -> torch.Tensor:
    """One ``[V]`` float64 row of ``pattern``, representable in ``dtype`` with a positive entry."""
    r = torch.rand(V, generator=gen, dtype=torch.float64)
    info = torch.finfo(dtype)
    if pattern == "tiny":
        r = r * info.tiny * 64
    elif pattern == "huge":
        r = (r + 0.5) * min(info.max, _SUM_LIMIT) / (2 * V)
    elif pattern == "subnormal":
        r = torch.floor(r * 8) * info.smallest_normal * 2.0**-4  # multiples of a subnormal
    elif pattern == "one-hot":
        r = torch.zeros(V, dtype=torch.float64)
        r[int(torch.randint(V, (), generator=gen))] = 1.0
    elif pattern == "sparse":
        r = torch.where(torch.rand(V, generator=gen, dtype=torch.float64) < 0.7, 0.0, r)
    elif pattern == "ties":
        r = torch.floor(r * 3) / 4  # few distinct values: argmax ties, equal p and q
    elif pattern == "dyadic":
        r = torch.floor(r * 16) / 16  # exact float sums: thresholds land exactly on breakpoints
    r = r.to(dtype).to(torch.float64)
    if not bool((r > 0).any()):
        r[int(torch.randint(V, (), generator=gen))] = 1.0
    return r


def _rows(gen, count: int, V: int, dtype) -> torch.Tensor:
    pattern = _pick(gen, PATTERNS)
    mixed = bool(torch.rand((), generator=gen) < 0.3)  # else one pattern for every row
    rows = [_row(gen, V, _pick(gen, PATTERNS) if mixed else pattern, dtype) for _ in range(count)]
    return torch.stack(rows) if rows else torch.zeros((0, V), dtype=torch.float64)


def _boundary_uniform(gen, case_u, ids, p, q, b: int) -> None:
    """Put ``u[b, K]`` at, or one float32 step beside, a cumulative breakpoint of the row the last
    token of request ``b`` is drawn from (found with the reference's own accept decisions)."""
    K = ids.shape[1]
    out = reference_verify(
        ids[b : b + 1],
        None if p is None else p[b : b + 1],
        q[b : b + 1],
        uniforms=case_u[b : b + 1],
    )
    row = int(out.num_emitted[0]) - 1
    if row < K:
        r = residual(None if p is None else p[b, row], q[b, row], int(ids[b, row]))
    else:
        r = q[b, K].to(torch.float64)
    cdf = torch.cumsum(r, 0)
    total = float(cdf[-1])
    j = int(torch.randint(r.numel(), (), generator=gen))
    u = torch.tensor(float(cdf[j]) / total, dtype=torch.float32)
    step = int(torch.randint(3, (), generator=gen)) - 1
    if step:
        u = torch.nextafter(u, torch.tensor(2.0 if step > 0 else -1.0))
    case_u[b, K] = float(min(max(float(u), 0.0), U_MAX))


def _non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as a non-contiguous view (every other element of a wider buffer)."""
    wide = torch.zeros((*t.shape[:-1], 2 * t.shape[-1]), dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


def case_claims(capabilities: Capabilities) -> tuple:
    """What :func:`make_case` reads of a backend's claims: equal values give equal cases."""
    max_k = 4 if capabilities.max_k is None else min(4, capabilities.max_k)
    vocabs = [v for v in VOCABS if capabilities.max_vocab is None or v <= capabilities.max_vocab]
    return (
        tuple(capabilities.modes),
        tuple(capabilities.dtypes),
        max_k,
        tuple(vocabs),
        # the rule and tree draws read these
        tuple(capabilities.rules),
        tuple(capabilities.tree_modes),
        tuple(capabilities.tree_sampling),
        tuple(capabilities.tree_rules),
        capabilities.serving,
        capabilities.max_vocab,
    )


def make_case(seed: int, index: int, capabilities: Capabilities) -> FuzzCase:
    """Case ``index`` of the campaign ``seed`` for a backend with ``capabilities`` (CPU tensors)."""
    from .fuzz_serving import is_serving_index, make_serving_case
    from .fuzz_tree import is_tree_index, make_tree_case

    if is_tree_index(index, capabilities):
        return make_tree_case(seed, index, capabilities)
    if is_serving_index(index, capabilities):
        return make_serving_case(seed, index, capabilities)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    tags: list[str] = []
    modes, dtypes, max_k, vocabs = case_claims(capabilities)[:4]
    mode = _pick(gen, modes)
    dtype_name = _pick(gen, dtypes)
    dtype = DTYPES[dtype_name]
    B = _pick(gen, (1, 1, 2, 3, 4, 7))
    K = int(torch.randint(max_k + 1, (), generator=gen))
    V = _pick(gen, vocabs)
    q = _rows(gen, B * (K + 1), V, dtype).reshape(B, K + 1, V)
    with_draft = bool(torch.rand((), generator=gen) < 0.6)
    p = _rows(gen, B * K, V, dtype).reshape(B, K, V) if with_draft else None
    if p is not None and K and torch.rand((), generator=gen) < 0.25:
        p = q[:, :K].clone()  # p = q: every draft accepted whatever u
        tags.append("p=q")
    if p is not None and K and V > 1 and torch.rand((), generator=gen) < 0.15:
        half = torch.arange(V) < V // 2  # disjoint supports
        p = torch.where(half, p + (p == 0) * 0.5, 0.0)
        q[:, :K] = torch.where(half, 0.0, q[:, :K] + (q[:, :K] == 0) * 0.5)
        tags.append("disjoint")
    # Draft ids: random, the target's argmax (greedy accepts; ties take the smallest index), or a
    # token of probability zero.
    how = _pick(gen, ("random", "argmax", "zero"))
    ids = torch.randint(V, (B, K), generator=gen)
    if how == "argmax" and K:
        ids = q[:, :K].argmax(-1)
    elif how == "zero" and K:
        zero = (q[:, :K] == 0) if p is None else (p == 0) | (q[:, :K] == 0)
        first_zero = zero.to(torch.int64).argmax(-1)
        ids = torch.where(zero.any(-1), first_zero, ids)
        tags.append("zero-at-draft")
    u = None
    if mode == "random":
        u = torch.rand((B, K + 1), generator=gen, dtype=torch.float32)
        extremes = torch.rand((B, K + 1), generator=gen)
        u = torch.where(extremes < 0.1, 0.0, torch.where(extremes > 0.9, U_MAX, u))
        q_cast, p_cast = q.to(dtype), None if p is None else p.to(dtype)
        for b in range(B):
            if torch.rand((), generator=gen) < 0.5:
                _boundary_uniform(gen, u, ids, p_cast, q_cast, b)
                if "cdf-boundary" not in tags:
                    tags.append("cdf-boundary")
    ids = ids.to(_pick(gen, (torch.int64, torch.int32)))
    q = q.to(dtype)
    p = None if p is None else p.to(dtype)
    if torch.rand((), generator=gen) < 0.2:
        q = _non_contiguous(q)
        p = None if p is None else _non_contiguous(p)
        ids = _non_contiguous(ids)
        tags.append("non-contiguous")
    tags += [dtype_name, mode, "draft_probs" if p is not None else "draft_probs=None"]
    rule = "token"
    # Drawn last, and only for backends claiming "block": every other draw of the case is unchanged.
    if mode == "random" and "block" in capabilities.rules and torch.rand((), generator=gen) < 0.5:
        rule = "block"
        tags.append("rule=block")
    return FuzzCase(index, ids, p, q, u, mode, tuple(tags), rule=rule)


def check_block_case(backend, case: FuzzCase, device: torch.device) -> tuple[str | None, int]:
    """:func:`specsample.fuzz.check_case` for a ``rule="block"`` case: the backend against
    ``reference_verify(..., rule="block")`` with the tolerances of the ``block.exact`` check.

    Returns ``(message or None, near-tie differences)``.
    """
    from specsample.conformance.block_common import compare_block_to_reference
    from specsample.conformance.checks import CheckFailed, Target

    on_device = case.to(device)
    args = (on_device.draft_token_ids, on_device.draft_probs, on_device.target_probs)
    try:
        out = backend.verify(*args, uniforms=on_device.uniforms, rule="block")
    except Exception as exc:  # a valid input must never raise
        return f"raised {type(exc).__name__}: {exc}", 0
    target = Target(backend.name, backend, "fast", device)
    try:
        ties = compare_block_to_reference(
            target, *args, on_device.uniforms, label=f"case {case.index}, rule=block", out=out
        )
    except CheckFailed as exc:
        return str(exc), 0
    return None, ties
