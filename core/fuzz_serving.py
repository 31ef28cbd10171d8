"""Serving cases of the differential fuzzer: ``verify_serving`` / ``verify_serving_flat`` against
the float64 serving reference (:func:`specsample.reference_serving.reference_verify_serving`).

For a backend that claims ``Capabilities.serving``, one case in :data:`SERVING_EVERY` is a serving
case: a mixed batch where every request draws its own draft count (0 included), temperature (0 =
greedy, tiny, huge), top-k (off, 1, ties at the cut, past V) and top-p (off, tiny, near 1);
target rows as logits (masked ``-inf`` entries, ties, huge spreads) or probabilities (the chain
cases' adversarial rows); draft rows as logits, probabilities or none; coins as explicit
uniforms (the extremes 0 and ``1 - 2**-24`` and dyadic breakpoints planted) or per-request seeds
and offsets; the padded or the flattened entry point. Cases are a deterministic function of
``(seed, index)`` and the claims. Serving cases are not shrunk; the reproducer reruns the case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .contract import Capabilities

if TYPE_CHECKING:
    from .contract import Backend
    from .fuzz_cases import FuzzCase
    from .reference_serving import LastDraw
    from .serving import ServingOutput

#: case ``index`` is a serving case when ``index % SERVING_EVERY == SERVING_SLOT`` (tree cases take
#: ``index % 4 == 3``, which this slot never is)
SERVING_EVERY = 8
SERVING_SLOT = 5
_VOCABS = (1, 2, 3, 5, 8, 31, 100, 257, 1000)
_TEMPERATURES = (0.0, 0.0, 1e-3, 0.3, 0.7, 1.0, 1.0, 1.6, 1e3)
_TOP_P = (1.0, 1.0, 1.0, 1e-6, 0.3, 0.9, 0.999)
#: coins that sit on the breakpoints of dyadic rows (every float sum exact)
_BREAKPOINTS = (0.25, 0.5, 0.75, 0.125)


def is_serving_index(index: int, caps: Capabilities) -> bool:
    """True when case ``index`` of a campaign on a backend with ``caps`` is a serving case."""
    return bool(caps.serving) and index % SERVING_EVERY == SERVING_SLOT


def _pick(gen: torch.Generator, options: tuple | list) -> Any:
    return options[int(torch.randint(len(options), (), generator=gen))]


def _logit_rows(
    gen: torch.Generator, n: int, V: int, dtype: torch.dtype
) -> tuple[torch.Tensor, str]:
    """``[n, V]`` float64 logits of one pattern, exactly representable in ``dtype``; every row
    keeps a finite entry."""
    pattern = _pick(gen, ("normal", "ties", "masked", "peaked", "equal", "wide"))
    x = torch.randn(n, V, generator=gen, dtype=torch.float64) * 2.0
    if pattern == "ties":
        x = torch.round(x)  # few distinct values: argmax and top-k ties
    elif pattern == "masked":
        masked = torch.rand(n, V, generator=gen) < 0.5
        masked[torch.arange(n), torch.randint(V, (n,), generator=gen)] = False
        x = torch.where(masked, -torch.inf, x)
    elif pattern == "peaked":
        x[torch.arange(n), torch.randint(V, (n,), generator=gen)] += 40.0
    elif pattern == "equal":
        x = torch.zeros(n, V, dtype=torch.float64)
    elif pattern == "wide":  # differences far beyond exp's range in float32
        x = x * min(2000.0, float(torch.finfo(dtype).max) / 16)
    return x.to(dtype).to(torch.float64), pattern


def make_serving_case(seed: int, index: int, caps: Capabilities) -> FuzzCase:
    """The serving case ``index`` of campaign ``seed`` (CPU tensors, one claimed dtype)."""
    from .fuzz_cases import DTYPES, U_MAX, FuzzCase, _rows

    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    dtype_name = _pick(gen, caps.dtypes)
    dtype = DTYPES[dtype_name]
    B = _pick(gen, (1, 2, 3, 5, 8))
    K = int(
        torch.randint(min(4, caps.max_k if caps.max_k is not None else 4) + 1, (), generator=gen)
    )
    V = _pick(gen, [v for v in _VOCABS if caps.max_vocab is None or v <= caps.max_vocab])
    num = torch.randint(K + 1, (B,), generator=gen)
    if torch.rand((), generator=gen) < 0.3:
        num.fill_(K)
    tags = ["serving", dtype_name]

    logits_in = bool(torch.rand((), generator=gen) < 0.6)
    if logits_in:
        target, pattern = _logit_rows(gen, B * (K + 1), V, dtype)
        tags += ["logits", pattern]
    else:
        target = _rows(gen, B * (K + 1), V, dtype)
        tags.append("probs")
    target = target.reshape(B, K + 1, V)
    draft_kind = _pick(gen, (None, None, "same", "same", "same", "other"))
    draft = None
    draft_is_logits = logits_in if draft_kind == "same" else not logits_in
    if draft_kind is not None:
        if draft_is_logits:
            base = target[:, :K] if logits_in else torch.log(target[:, :K])
            noise = torch.randn(B, K, V, generator=gen, dtype=torch.float64)
            draft = (base + noise).to(dtype).to(torch.float64)
        else:
            draft = _rows(gen, B * K, V, dtype).reshape(B, K, V)
        tags.append("draft_logits" if draft_is_logits else "draft_probs")
    else:
        tags.append("no draft")

    # Draft ids: the target row's argmax (greedy accepts), a random token, or the draft row's
    # argmax (sampling accepts often).
    how = torch.randint(3, (B, K), generator=gen)
    ids = torch.randint(V, (B, K), generator=gen)
    if K:
        ids = torch.where(how == 0, target[:, :K].argmax(-1), ids)
        if draft is not None:
            ids = torch.where(how == 2, draft.argmax(-1), ids)
    if torch.rand((), generator=gen) < 0.5:
        ids = ids.to(torch.int32)

    temperature = torch.tensor([_pick(gen, _TEMPERATURES) for _ in range(B)])
    top_k = torch.tensor([_pick(gen, (0, 0, 0, 1, 2, max(1, V // 2), V, V + 3)) for _ in range(B)])
    top_p = torch.tensor([_pick(gen, _TOP_P) for _ in range(B)])
    kinds = {"greedy" if t == 0 else "sampling" for t in temperature.tolist()}
    tags += sorted(kinds)
    if bool((top_k > 0).any()):
        tags.append("top-k")
    if bool((top_p < 1).any()):
        tags.append("top-p")
    if bool((num == 0).any()):
        tags.append("K_b=0")

    kwargs: dict[str, Any] = {
        "num_draft_tokens": num,
        "target_logits" if logits_in else "target_probs": target.to(dtype),
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
    }
    if draft is not None:
        kwargs["draft_logits" if draft_is_logits else "draft_probs"] = draft.to(dtype)
    if torch.rand((), generator=gen) < 0.7:
        u = torch.rand(B, K + 1, generator=gen)
        place = torch.rand(B, K + 1, generator=gen)
        planted = torch.tensor(_BREAKPOINTS)[
            torch.randint(len(_BREAKPOINTS), (B, K + 1), generator=gen)
        ]
        u = torch.where(place < 0.1, 0.0, torch.where(place > 0.9, U_MAX, u))
        u = torch.where((place >= 0.4) & (place < 0.55), planted, u)
        kwargs["uniforms"] = u.to(torch.float32)
        tags.append("uniforms")
    else:
        kwargs["seeds"] = torch.randint(-(2**62), 2**62, (B,), generator=gen)
        kwargs["offsets"] = torch.randint(0, 1000, (B,), generator=gen)
        tags.append("seeds")
    entry = _pick(gen, ("padded", "padded", "flat"))
    tags.append(entry)
    return FuzzCase(
        index,
        ids,
        None,
        target.to(dtype),
        None,
        "mixed" if len(kinds) > 1 else ("greedy" if kinds == {"greedy"} else "random"),
        tuple(tags),
        serving={"entry": entry, "kwargs": kwargs},
    )


def _flat_call(backend: Backend, ids: torch.Tensor, kwargs: dict[str, Any], K: int):
    """``backend.verify_serving_flat`` on the padded case converted to the engine layout."""
    from .serving_layout import padded_to_flat, padded_to_flat_call

    flat_ids, cu, flat = padded_to_flat_call(ids, kwargs)
    out = backend.verify_serving_flat(flat_ids, cu, max_num_draft_tokens=K, **flat)
    want = padded_to_flat(out.token_ids, cu, flat_ids.shape[0] + ids.shape[0], bonus=True, fill=-1)
    if not torch.equal(out.flat_token_ids, want):
        raise AssertionError("flat_token_ids is not the padded output in engine order")
    return out


def serving_reference(case: FuzzCase) -> ServingOutput:
    """The float64 reference's output for a serving case (CPU)."""
    from .reference_serving import reference_verify_serving

    assert case.serving is not None
    return reference_verify_serving(case.draft_token_ids, **case.serving["kwargs"])


def check_serving_case(
    backend: Backend,
    case: FuzzCase,
    device: torch.device,
    reference: ServingOutput | None = None,
) -> tuple[str | None, int]:
    """``(message, rounding_ties)`` of a serving case, like :func:`specsample.fuzz.check_case`
    (``reference``: :func:`serving_reference` of the case, when already computed).

    A request that differs from the reference is excused, and counted as a rounding tie, when the
    reference itself changes once the sampling distributions are rounded to float32
    (:func:`~specsample.reference_serving.float32_sensitive_requests`, as the ``serving.*`` checks
    excuse it), or when only its last token differs as a float32 computation of the same
    distributions may make it differ (:func:`_float32_tie`).
    """
    from .reference_serving import float32_sensitive_requests, last_draws

    serving = case.serving
    assert serving is not None
    ids, kwargs = case.draft_token_ids, serving["kwargs"]
    on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    try:
        if serving["entry"] == "flat":
            out = _flat_call(backend, ids.to(device), on_device, ids.shape[1])
        else:
            out = backend.verify_serving(ids.to(device), **on_device)
    except Exception as exc:  # a valid input must never raise
        return f"raised {type(exc).__name__}: {exc}", 0
    ref = serving_reference(case) if reference is None else reference
    got_status, want_status = out.status.cpu(), ref.status.cpu()
    got, want = out.token_ids.cpu(), ref.token_ids.cpu()
    differs = (got_status != want_status) | (got != want).any(dim=1)
    differs |= out.num_emitted.cpu() != ref.num_emitted.cpu()
    if not bool(differs.any()):
        return None, 0
    # The float32-rounded reference and the last-token distributions cost reference runs: only
    # when something differs.
    excused = float32_sensitive_requests(ids, **kwargs)
    last_rows = None
    for b in torch.nonzero(differs & ~excused).flatten().tolist():
        if int(got_status[b]) != int(want_status[b]):
            return (
                f"serving case {case.index}: request {b} has status {int(got_status[b])}, "
                f"the reference {int(want_status[b])}"
            ), 0
        n = int(ref.num_emitted[b])
        same_prefix = int(out.num_emitted[b]) == n and torch.equal(
            got[b, : n - 1], want[b, : n - 1]
        )
        if same_prefix:
            if last_rows is None:
                last_rows = last_draws(ids, **kwargs)
            if _float32_tie(last_rows[b], int(got[b, n - 1])):
                continue
        return (
            f"serving case {case.index}: request {b} emitted {got[b].tolist()} "
            f"({int(out.num_emitted[b])} tokens), the reference {want[b].tolist()} ({n})"
        ), 0
    return None, int(differs.sum())


#: absolute rounding noise of a residual ``max(0, q' - p')`` whose rows a backend computed in
#: float32 from logits: each row sums to 1 and carries a few float32 ulps (2**-24) of error per
#: entry, so their difference is known to about 2**-20 in total
RESIDUAL_NOISE = 2.0**-20


def _float32_tie(draw: LastDraw | None, token: int) -> bool:
    """True when a last token that differs from the reference's is what a float32 computation of
    the same distributions may draw:

    - the residual's mass is at most :data:`RESIDUAL_NOISE` (the rejection's residual is rounding
      noise, or all zero so that the draw falls back to ``q'``): any token ``q'`` gives positive
      weight;
    - else ``token`` has positive weight in the row drawn from and the reference's threshold
      ``u * sum(r)`` lies within ``cdf_epsilon(V) * sum(r)`` (plus :data:`RESIDUAL_NOISE` for a
      residual) of its interval, the chain checks' bracket.
    """
    from specsample.conformance.check_common import cdf_epsilon

    if draw is None:
        return False
    r, V = draw.row, draw.row.numel()
    if not 0 <= token < V:
        return False
    if draw.residual_mass is not None and draw.residual_mass <= RESIDUAL_NOISE:
        return float(draw.target[token]) > 0.0
    if float(r[token]) <= 0.0:
        return False
    cdf = torch.cumsum(r, 0)
    total = float(cdf[-1])
    eps = cdf_epsilon(V) * total + (RESIDUAL_NOISE if draw.residual_mass is not None else 0.0)
    lo = float(cdf[token - 1]) if token > 0 else 0.0
    return lo - eps <= draw.coin * total < float(cdf[token]) + eps


def serving_snippet(case: FuzzCase, backend: str, seed: int) -> str:
    """A program that reruns the serving case on ``backend`` and on the reference."""
    from .fuzz_shrink import _literal

    serving = case.serving
    assert serving is not None
    lines = [
        f"# specsample fuzz --backend {backend} --seed {seed}: serving case {case.index} "
        f"({serving['entry']} entry point; rerun here in the padded layout)",
        "import math",
        "",
        "import specsample",
        "import torch",
        "from specsample.reference_serving import reference_verify_serving",
        "",
        f"ids = {_literal(case.draft_token_ids)}",
        "kwargs = dict(",
    ]
    for name, value in serving["kwargs"].items():
        # masked logits are -inf, which Python spells math.inf
        lines.append(f"    {name}={_literal(value).replace('inf', 'math.inf')},")
    lines += [
        ")",
        f"out = specsample.get_backend({backend!r}).verify_serving(ids, **kwargs)",
        "ref = reference_verify_serving(ids, **kwargs)",
        'print("backend:  ", out.token_ids.tolist(), out.status.tolist())',
        'print("reference:", ref.token_ids.tolist(), ref.status.tolist())',
    ]
    return "\n".join(lines)
