"""badinput.*: every bad input of docs/contract.md raises ValueError or TypeError whose message names
the argument (never a crash, a hang or a silent answer); bad values with ``validate="full"``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .check_common import DTYPES, first_claimed_dtype, workload
from .checks import CheckFailed, NotClaimed, Target, check

B, K, V = 4, 3, 10


def _inputs(target: Target):
    w = workload(target, B, K, V, seed=800)
    return w.draft_token_ids, w.draft_probs, w.target_probs


def _expect(
    target: Target,
    label: str,
    exc: type[Exception] | tuple[type[Exception], ...],
    words: tuple[str, ...],
    call: Callable[[], object],
) -> None:
    try:
        call()
    except exc as e:
        msg = str(e)
        missing = [w for w in words if w.lower() not in msg.lower()]
        if missing:
            raise CheckFailed(
                f"bad input [{label}]: raised {type(e).__name__}({msg!r}), which does not name "
                f"{' / '.join(missing)}"
            ) from e
        return
    except Exception as e:
        names = exc.__name__ if isinstance(exc, type) else "/".join(x.__name__ for x in exc)
        raise CheckFailed(
            f"bad input [{label}]: raised {type(e).__name__}: {e}; expected {names}"
        ) from e
    raise CheckFailed(f"bad input [{label}]: accepted without an error")


def _mode(target: Target) -> str:
    return "random" if "random" in target.capabilities.modes else target.capabilities.modes[0]


@check("badinput.types")
def types(target: Target) -> str:
    """Non-tensors, wrong dtypes (ids not int32/int64, probabilities not float32/16/bf16,
    draft/target dtype mismatch, uniforms not float32, generator not a Generator) -> TypeError."""
    ids, draft, tgt = _inputs(target)
    m = _mode(target)
    v = target.verify
    cases = [
        ("ids as a list", ("draft_token_ids",), lambda: v(ids.tolist(), draft, tgt, mode=m)),
        ("target_probs as a list", ("target_probs",), lambda: v(ids, draft, tgt.tolist(), mode=m)),
        ("float ids", ("draft_token_ids",), lambda: v(ids.float(), draft, tgt, mode=m)),
        ("float64 target", ("target_probs",), lambda: v(ids, draft.double(), tgt.double(), mode=m)),
        ("int target", ("target_probs",), lambda: v(ids, None, tgt.to(torch.int32), mode=m)),
    ]
    other = [d for d in ("float32", "float16", "bfloat16") if DTYPES[d] != tgt.dtype]
    cases.append(
        (
            "draft/target dtype mismatch",
            ("draft_probs",),
            lambda: v(ids, draft.to(DTYPES[other[0]]), tgt, mode=m),
        )
    )
    if "random" in target.capabilities.modes:
        u = torch.rand(B, K + 1, device=target.device)
        cases += [
            ("float64 uniforms", ("uniforms",), lambda: v(ids, draft, tgt, uniforms=u.double())),
            ("generator not a Generator", ("generator",), lambda: v(ids, draft, tgt, generator=42)),
        ]
    for label, words, call in cases:
        _expect(target, label, TypeError, words, call)
    return f"{len(cases)} cases"


@check("badinput.shapes")
def shapes(target: Target) -> str:
    """Wrong ranks, batch mismatch, K+1 target rows missing, wrong draft/uniforms shape -> ValueError."""
    ids, draft, tgt = _inputs(target)
    m = _mode(target)
    v = target.verify
    cases = [
        ("1-D ids", ("draft_token_ids",), lambda: v(ids[0], draft, tgt, mode=m)),
        ("2-D target", ("target_probs",), lambda: v(ids, draft, tgt[0], mode=m)),
        ("batch mismatch", ("B=",), lambda: v(ids[:-1], draft[:-1], tgt, mode=m)),
        ("K+1 target rows missing", ("K+1",), lambda: v(ids, draft, tgt[:, :K], mode=m)),
        ("draft_probs shape", ("draft_probs",), lambda: v(ids, draft[:, :, :-1], tgt, mode=m)),
    ]
    if "random" in target.capabilities.modes:
        u = torch.rand(B, K, device=target.device)
        cases.append(("uniforms [B, K]", ("uniforms",), lambda: v(ids, draft, tgt, uniforms=u)))
    for label, words, call in cases:
        _expect(target, label, ValueError, words, call)
    return f"{len(cases)} cases"


@check("badinput.devices")
def devices(target: Target) -> str:
    """Inputs on different devices -> ValueError naming the argument (CPU vs CUDA on a GPU run,
    the meta device otherwise)."""
    ids, draft, tgt = _inputs(target)
    other = torch.device("cpu") if target.device.type == "cuda" else torch.device("meta")
    m = _mode(target)
    v = target.verify
    cases = [
        (
            "ids on another device",
            ("draft_token_ids",),
            lambda: v(ids.to(other), draft, tgt, mode=m),
        ),
        (
            "draft_probs on another device",
            ("draft_probs",),
            lambda: v(ids, draft.to(other), tgt, mode=m),
        ),
    ]
    if "random" in target.capabilities.modes:
        u = torch.rand(B, K + 1, device=other)
        cases.append(
            ("uniforms on another device", ("uniforms",), lambda: v(ids, draft, tgt, uniforms=u))
        )
        if target.device.type == "cuda":
            g = torch.Generator(device="cpu")
            cases.append(
                (
                    "CPU generator for CUDA inputs",
                    ("generator",),
                    lambda: v(ids, draft, tgt, generator=g),
                )
            )
    for label, words, call in cases:
        _expect(target, label, ValueError, words, call)
    return f"{len(cases)} cases (other device: {other})"


@check("badinput.values")
def values(target: Target) -> str:
    """With ``validate="full"``: ids out of [0, V), NaN/inf/negative probabilities, uniforms
    outside [0, 1) -> ValueError (the default call reports them per request instead: see
    status.bad-values)."""
    ids, draft, tgt = _inputs(target)
    m = _mode(target)

    def v(*args, **kwargs):
        return target.verify(*args, validate="full", **kwargs)

    def with_value(t: torch.Tensor, value: float) -> torch.Tensor:
        t = t.clone()
        t.view(-1)[5] = value
        return t

    cases = [
        ("id = V", ("draft_token_ids",), lambda: v(with_value(ids, V), draft, tgt, mode=m)),
        ("id = -1", ("draft_token_ids",), lambda: v(with_value(ids, -1), draft, tgt, mode=m)),
        (
            "NaN target",
            ("target_probs",),
            lambda: v(ids, draft, with_value(tgt, float("nan")), mode=m),
        ),
        (
            "inf target",
            ("target_probs",),
            lambda: v(ids, draft, with_value(tgt, float("inf")), mode=m),
        ),
        (
            "negative target",
            ("target_probs",),
            lambda: v(ids, draft, with_value(tgt, -0.5), mode=m),
        ),
    ]
    if "random" in target.capabilities.modes:
        cases += [
            ("NaN draft", ("draft_probs",), lambda: v(ids, with_value(draft, float("nan")), tgt)),
            ("negative draft", ("draft_probs",), lambda: v(ids, with_value(draft, -0.5), tgt)),
        ]
        u = torch.rand(B, K + 1, device=target.device)
        cases += [
            ("uniform = 1", ("uniforms",), lambda: v(ids, draft, tgt, uniforms=with_value(u, 1.0))),
            (
                "uniform < 0",
                ("uniforms",),
                lambda: v(ids, draft, tgt, uniforms=with_value(u, -0.1)),
            ),
            (
                "NaN uniform",
                ("uniforms",),
                lambda: v(ids, draft, tgt, uniforms=with_value(u, float("nan"))),
            ),
        ]
    for label, words, call in cases:
        _expect(target, label, ValueError, words, call)
    return f"{len(cases)} cases"


@check("badinput.mode")
def mode(target: Target) -> str:
    """An unknown mode -> ValueError naming mode; an unclaimed mode is refused too."""
    ids, draft, tgt = _inputs(target)
    _expect(
        target,
        "mode='sample'",
        ValueError,
        ("mode",),
        lambda: target.verify(ids, draft, tgt, mode="sample"),
    )
    n = 1
    for m in ("random", "greedy"):
        if m not in target.capabilities.modes:
            _expect(
                target,
                f"unclaimed mode {m}",
                ValueError,
                ("mode",),
                lambda m=m: target.verify(ids, draft, tgt, mode=m),
            )
            n += 1
    return f"{n} cases"


@check("badinput.unclaimed")
def unclaimed(target: Target) -> str:
    """Inputs outside the claimed capabilities (dtype, max_vocab, max_k) are refused with
    TypeError/ValueError rather than computed wrongly."""
    caps = target.capabilities
    ids, draft, tgt = _inputs(target)
    m = _mode(target)
    n = 0
    for name, dt in DTYPES.items():
        if name not in caps.dtypes:
            _expect(
                target,
                f"unclaimed {name}",
                TypeError,
                (name,),
                lambda dt=dt: target.verify(ids, draft.to(dt), tgt.to(dt), mode=m),
            )
            n += 1
    dtype = first_claimed_dtype(target)
    if caps.max_vocab is not None and caps.max_vocab < 2**20:
        Vb = caps.max_vocab + 1
        t = torch.full((1, 2, Vb), 1.0 / Vb, dtype=dtype, device=target.device)
        i = torch.zeros((1, 1), dtype=torch.int64, device=target.device)
        _expect(
            target,
            f"V={Vb} > max_vocab",
            ValueError,
            ("V",),
            lambda: target.verify(i, t[:, :1], t, mode=m),
        )
        n += 1
    if caps.max_k is not None:
        Kb = caps.max_k + 1
        t = torch.full((1, Kb + 1, 4), 0.25, dtype=dtype, device=target.device)
        i = torch.zeros((1, Kb), dtype=torch.int64, device=target.device)
        _expect(
            target,
            f"K={Kb} > max_k",
            ValueError,
            ("K",),
            lambda: target.verify(i, t[:, :Kb], t, mode=m),
        )
        n += 1
    if n == 0:
        raise NotClaimed(
            "the backend claims every dtype and no size limit: nothing is out of its claims"
        )
    return f"{n} cases"
