"""Shrink a failing fuzz case to a minimal reproducer and print it as a self-contained snippet."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .fuzz_cases import FuzzCase

#: at most this many predicate calls per shrink (each is one backend call and one reference call)
MAX_STEPS = 2000


def _replace(case: FuzzCase, **changes) -> FuzzCase:
    fields = dict(
        index=case.index,
        draft_token_ids=case.draft_token_ids,
        draft_probs=case.draft_probs,
        target_probs=case.target_probs,
        uniforms=case.uniforms,
        mode=case.mode,
        tags=case.tags,
        rule=case.rule,
    )
    fields.update(changes)
    return FuzzCase(**fields)


def _requests(case: FuzzCase, keep: list[int]) -> FuzzCase:
    pick = lambda t: None if t is None else t[keep].contiguous()  # noqa: E731
    return _replace(
        case,
        draft_token_ids=pick(case.draft_token_ids),
        draft_probs=pick(case.draft_probs),
        target_probs=pick(case.target_probs),
        uniforms=pick(case.uniforms),
    )


def _first_drafts(case: FuzzCase, k: int) -> FuzzCase:
    """Keep drafts ``0..k-1``; row ``k`` of the target becomes the bonus row."""
    u = case.uniforms
    if u is not None:
        u = torch.cat([u[:, :k], u[:, -1:]], dim=1).contiguous()
    return _replace(
        case,
        draft_token_ids=case.draft_token_ids[:, :k].contiguous(),
        draft_probs=None if case.draft_probs is None else case.draft_probs[:, :k].contiguous(),
        target_probs=case.target_probs[:, : k + 1].contiguous(),
        uniforms=u,
    )


def _drop_token(case: FuzzCase, j: int) -> FuzzCase | None:
    """Remove vocabulary entry ``j`` (not a drafted token); later ids move down by one."""
    ids = case.draft_token_ids
    V = case.target_probs.shape[-1]
    if V == 1 or bool((ids == j).any()):
        return None
    keep = [i for i in range(V) if i != j]
    q = case.target_probs[..., keep].contiguous()
    if bool((q.to(torch.float64).sum(-1) == 0).any()):
        return None  # every target row must keep a positive entry
    p = None if case.draft_probs is None else case.draft_probs[..., keep].contiguous()
    return _replace(
        case, draft_token_ids=torch.where(ids > j, ids - 1, ids), draft_probs=p, target_probs=q
    )


def _simpler_values(t: torch.Tensor) -> list[torch.Tensor]:
    """Candidates with simpler numbers: each entry rounded to 3, then 1 significant digit."""
    out = []
    for digits in (3, 1):
        x = t.to(torch.float64)
        scale = 10.0 ** (torch.floor(torch.log10(x.clamp(min=1e-300))) - (digits - 1))
        simple = torch.where(x > 0, torch.round(x / scale) * scale, x).to(t.dtype)
        if not torch.equal(simple, t):
            out.append(simple)
    return out


def shrink(case: FuzzCase, fails: Callable[[FuzzCase], bool]) -> FuzzCase:
    """The smallest case found that still ``fails``: fewer requests, then fewer drafts, then fewer
    vocabulary entries, then simpler values (greedy, each step kept only if it still fails).
    A tree or serving case is returned as it is."""
    if case.tree is not None or case.serving is not None:
        return case
    steps = 0

    def still(candidate: FuzzCase | None) -> bool:
        nonlocal steps
        if candidate is None or steps >= MAX_STEPS:
            return False
        steps += 1
        return fails(candidate)

    B = case.target_probs.shape[0]
    for b in range(B):  # one request alone, if any one fails by itself
        single = _requests(case, [b])
        if B > 1 and still(single):
            case = single
            break
    for k in range(case.draft_token_ids.shape[1]):
        shorter = _first_drafts(case, k)
        if still(shorter):
            case = shorter
            break
    changed = True
    while changed and steps < MAX_STEPS:
        changed = False
        for j in reversed(range(case.target_probs.shape[-1])):
            smaller = _drop_token(case, j)
            if still(smaller):
                case, changed = smaller, True
    for name in ("target_probs", "draft_probs", "uniforms"):
        t = getattr(case, name)
        if t is None:
            continue
        for simple in _simpler_values(t):
            candidate = _replace(case, **{name: simple})
            if name == "uniforms" and not bool((simple < 1).all()):
                continue
            if still(candidate):
                case = candidate
                break
    return case


def _literal(t: torch.Tensor) -> str:
    shape = f".reshape({tuple(t.shape)!r})" if t.numel() == 0 else ""
    if t.is_floating_point():
        values = t.to(torch.float64).tolist()
        return f"torch.tensor({values!r}, dtype=torch.float64){shape}.to({t.dtype})"
    return f"torch.tensor({t.tolist()!r}, dtype={t.dtype}){shape}"


def snippet(case: FuzzCase, backend: str, seed: int) -> str:
    """A self-contained Python program that reruns ``case`` on ``backend`` and on the reference.

    Floats are printed as float64 literals (exact for every half and float32 value) and converted
    to the case's dtype, so the program feeds the backend the very same values.
    """
    if case.tree is not None:
        from .fuzz_tree import tree_snippet

        return tree_snippet(case, backend, seed)
    if case.serving is not None:
        from .fuzz_serving import serving_snippet

        return serving_snippet(case, backend, seed)
    p = "None" if case.draft_probs is None else _literal(case.draft_probs)
    u = "None" if case.uniforms is None else _literal(case.uniforms)
    return "\n".join(
        [
            f"# specsample fuzz --backend {backend} --seed {seed}: case {case.index}, shrunk",
            "import specsample",
            "import torch",
            "",
            f"ids = {_literal(case.draft_token_ids)}",
            f"draft_probs = {p}",
            f"target_probs = {_literal(case.target_probs)}",
            f"uniforms = {u}",
            "args = (ids, draft_probs, target_probs)",
            f"kwargs = dict(mode={case.mode!r}, uniforms=uniforms"
            + (f", rule={case.rule!r})" if case.rule != "token" else ")"),
            f"out = specsample.get_backend({backend!r}).verify(*args, **kwargs)",
            "ref = specsample.reference_verify(*args, **kwargs)",
            'print("backend:  ", out.token_ids.tolist(), out.num_emitted.tolist())',
            'print("reference:", ref.token_ids.tolist(), ref.num_emitted.tolist())',
        ]
    )
