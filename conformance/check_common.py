"""Helpers shared by the checks: inputs, the output contract, comparison with the reference."""

from __future__ import annotations

import math

import torch
from specsample.contract import VerifyOutput
from specsample.reference import reference_verify, residual

from .checks import CheckFailed, NotClaimed, Target

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
F32_ULP_HALF = 2.0**-24  # unit roundoff of float32


def cdf_epsilon(vocab_size: int) -> float:
    """Relative tolerance (of ``sum(r)``) on the inverse-CDF threshold: ``1e-5 * max(1, sqrt(V/4096))``.

    A float32 scan of V non-negative terms accumulates rounding errors like a random walk,
    ``~ 2**-24 * sqrt(V / 3) * sum`` (about 2.2e-6 at V = 4096, 1.7e-5 at V = 262144); a tree or
    blocked scan errs less still (``~ log2(V) * 2**-24``). The tolerance is 4.5 times the random-walk
    size at V <= 4096 and grows like sqrt(V) past it (8e-5 at V = 262144). See docs/conformance.md.
    """
    return 1e-5 * max(1.0, math.sqrt(vocab_size / 4096))


def uniforms(batch: int, num_draft: int, seed: int, device: torch.device) -> torch.Tensor:
    """[B, K+1] float32 uniforms in [0, 1) from a CPU generator (same values on every device),
    with the extremes 0 and the largest float32 below 1 planted in a few entries."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand((batch, num_draft + 1), generator=gen, dtype=torch.float32)
    flat = u.view(-1)
    if flat.numel() >= 8:
        flat[:: max(1, flat.numel() // 3)] = 0.0
        flat[1 :: max(1, flat.numel() // 3)] = 1.0 - 2.0**-24
    return u.to(device)


def where(label: str, b: int | None = None) -> str:
    return f"[{label}{'' if b is None else f', request {b}'}]"


def check_output(
    out: VerifyOutput,
    draft_token_ids: torch.Tensor,
    vocab_size: int,
    device: torch.device,
    label: str,
) -> None:
    """Every structural property of an output; raises CheckFailed naming the broken one."""
    B, K = draft_token_ids.shape
    tok, n = getattr(out, "token_ids", None), getattr(out, "num_emitted", None)
    if not isinstance(tok, torch.Tensor) or not isinstance(n, torch.Tensor):
        raise CheckFailed(
            f"output type {where(label)}: verify() must return token_ids and num_emitted tensors, "
            f"got {type(out).__name__}"
        )
    if tuple(tok.shape) != (B, K + 1) or tuple(n.shape) != (B,):
        raise CheckFailed(
            f"output shape {where(label)}: token_ids {tuple(tok.shape)} (expected {(B, K + 1)}), "
            f"num_emitted {tuple(n.shape)} (expected {(B,)})"
        )
    if tok.dtype != torch.int64 or n.dtype != torch.int64:
        raise CheckFailed(
            f"output dtype {where(label)}: token_ids {tok.dtype}, num_emitted {n.dtype}; both must "
            "be torch.int64"
        )
    if not _same_device(tok.device, device) or not _same_device(n.device, device):
        raise CheckFailed(
            f"output device {where(label)}: outputs on {tok.device}/{n.device}, inputs on {device}"
        )
    status = getattr(out, "status", None)
    if status is not None:  # valid inputs: every request must be verified normally
        if tuple(status.shape) != (B,) or status.dtype != torch.int32:
            raise CheckFailed(
                f"status {where(label)}: VerifyOutput.status must be [B]={B} int32, got "
                f"{tuple(status.shape)} {status.dtype}"
            )
        flagged = torch.nonzero(status.cpu()).flatten()
        if flagged.numel():
            b = int(flagged[0])
            raise CheckFailed(
                f"status {where(label, b)}: status={int(status[b])} on valid input "
                f"({flagged.numel()} of {B} requests flagged)"
            )
    if B == 0:
        return
    tok, n, ids = tok.cpu(), n.cpu(), draft_token_ids.cpu().to(torch.int64)
    bad = torch.nonzero((n < 1) | (n > K + 1)).flatten()
    if bad.numel():
        b = int(bad[0])
        raise CheckFailed(
            f"num_emitted range {where(label, b)}: num_emitted={int(n[b])}, must be in "
            f"1..K+1=1..{K + 1} ({bad.numel()} of {B} requests out of range)"
        )
    pos = torch.arange(K + 1).unsqueeze(0)
    emitted = pos < n.unsqueeze(1)
    pad_bad = torch.nonzero(~emitted & (tok != -1))
    if pad_bad.numel():
        b, j = (int(v) for v in pad_bad[0])
        raise CheckFailed(
            f"padding {where(label, b)}: num_emitted={int(n[b])} but token_ids[{b}, {j}]="
            f"{int(tok[b, j])}; every position from num_emitted on must be -1 "
            f"(row: {tok[b].tolist()})"
        )
    range_bad = torch.nonzero(emitted & ((tok < 0) | (tok >= vocab_size)))
    if range_bad.numel():
        b, j = (int(v) for v in range_bad[0])
        raise CheckFailed(
            f"token range {where(label, b)}: emitted token_ids[{b}, {j}]={int(tok[b, j])} is not "
            f"in [0, V={vocab_size}) (row: {tok[b].tolist()}, num_emitted={int(n[b])})"
        )
    accepted = pos[:, :K] < (n - 1).unsqueeze(1)
    prefix_bad = torch.nonzero(accepted & (tok[:, :K] != ids))
    if prefix_bad.numel():
        b, j = (int(v) for v in prefix_bad[0])
        raise CheckFailed(
            f"accepted prefix {where(label, b)}: the first num_emitted-1={int(n[b]) - 1} tokens must "
            f"be the accepted drafts, but token_ids[{b}, {j}]={int(tok[b, j])} and the draft is "
            f"{int(ids[b, j])}"
        )


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cuda":
        ia = a.index if a.index is not None else torch.cuda.current_device()
        ib = b.index if b.index is not None else torch.cuda.current_device()
        return ia == ib
    return True


def compare_to_reference(
    target: Target,
    ids: torch.Tensor,
    draft: torch.Tensor | None,
    tgt: torch.Tensor,
    *,
    mode: str = "random",
    u: torch.Tensor | None = None,
    label: str,
    tolerance: bool = True,
    out: VerifyOutput | None = None,
    ref: VerifyOutput | None = None,
) -> int:
    """Run the backend with uniforms ``u`` (random) or greedily and compare with the reference.

    Accept decisions (hence ``num_emitted``) and greedy tokens must match exactly. The last token of
    a random-mode request may differ only where the reference's inverse-CDF threshold lies within
    :func:`cdf_epsilon` of a cumulative boundary, which is recomputed in float64 for that request.

    ``out`` and ``ref``, when given, are the backend's and the reference's outputs for these inputs
    (the fuzzer computes the reference once for several backends).

    Returns:
        The number of such proven near-tie differences.
    """
    if out is None:
        out = target.verify(ids, draft, tgt, mode=mode, uniforms=u if mode == "random" else None)
    V = tgt.shape[-1]
    check_output(out, ids, V, tgt.device, label)
    if mode == "random" and getattr(out, "uniforms_ignored", False):
        raise NotClaimed(
            "explicit uniforms not claimed (the backend draws its own random numbers; the "
            "statistical checks decide its tokens), output structure checked"
        )
    if ref is None:
        ref = reference_verify(ids, draft, tgt, mode=mode, uniforms=u if mode == "random" else None)
    n_b, n_r = out.num_emitted.cpu(), ref.num_emitted.cpu()
    K = ids.shape[1]
    diff = torch.nonzero(n_b != n_r).flatten()
    if diff.numel():
        b = int(diff[0])
        k = int(min(n_b[b], n_r[b])) - 1  # the first position where the two disagree
        x = int(ids[b, k])
        if mode == "greedy":
            row = tgt[b, k].to(torch.float64).cpu()
            raise CheckFailed(
                f"greedy acceptance {where(label, b)}: position {k}, draft {x}, target argmax "
                f"{int(row.argmax())} (smallest index on ties): the backend emitted "
                f"{int(n_b[b])} tokens, the reference {int(n_r[b])} ({diff.numel()} of "
                f"{ids.shape[0]} requests differ)"
            )
        uu = float(u[b, k])
        p = 1.0 if draft is None else float(draft[b, k, x].to(torch.float64))
        q = float(tgt[b, k, x].to(torch.float64))
        ok = uu * p < q
        hint = ""
        if (
            ok
            and (torch.tensor(uu, dtype=torch.float32) * torch.tensor(p, dtype=torch.float32)) >= q
        ):
            hint = (
                "; u*p rounded to float32 reaches q: evaluate u*p < q exactly (float64 product, "
                "or fma(u, p, -q) < 0)"
            )
        raise CheckFailed(
            f"accept decision {where(label, b)}: position {k}, draft token {x}: u={uu!r}, "
            f"p(x)={p!r}, q(x)={q!r}, so u*p {'<' if ok else '>='} q and the draft must be "
            f"{'accepted' if ok else 'rejected'}; the backend emitted {int(n_b[b])} tokens, the "
            f"reference {int(n_r[b])} ({diff.numel()} of {ids.shape[0]} requests differ){hint}"
        )
    t_b, t_r = out.token_ids.cpu(), ref.token_ids.cpu()
    rows = torch.nonzero((t_b != t_r).any(dim=1)).flatten()
    allowed = 0
    for b in rows.tolist():
        j = int(n_r[b]) - 1
        got, want = int(t_b[b, j]), int(t_r[b, j])
        if mode == "greedy":
            raise CheckFailed(
                f"greedy token {where(label, b)}: position {j}: the backend emitted {got}, the "
                f"argmax (smallest index on ties) is {want}"
            )
        if j < K:
            p_row = None if draft is None else draft[b, j].cpu()
            r = residual(p_row, tgt[b, j].cpu(), int(ids[b, j]))
            what = f"the resample at rejected position {j} (from max(0, q-p))"
        else:
            r = tgt[b, K].cpu().to(torch.float64)
            what = f"the bonus token (row K={K})"
        cdf = torch.cumsum(r, 0)
        total = float(cdf[-1])
        thr = float(u[b, K]) * total
        eps = cdf_epsilon(V) if tolerance else 0.0
        lo = float(cdf[got - 1]) if got > 0 else 0.0
        hi = float(cdf[got])
        if r[got] > 0 and lo - eps * total <= thr < hi + eps * total:
            allowed += 1
            continue
        if r[got] <= 0:
            reason = f"token {got} has probability 0 in the distribution sampled from"
        else:
            reason = (
                f"u*sum(r)={thr!r} is {min(abs(thr - lo), abs(thr - hi)) / total:.3g}*sum(r) from "
                f"token {got}'s interval [{lo!r}, {hi!r}), beyond the tolerance {eps:.3g}*sum(r)"
            )
        raise CheckFailed(
            f"inverse CDF {where(label, b)}: {what}: the backend emitted {got}, the reference "
            f"{want} (the smallest j with cumsum(r)[j] > u*sum(r), u={float(u[b, K])!r}); {reason}"
        )
    return allowed


def snapshot(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [None if t is None else t.clone() for t in tensors]


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal element for element, NaN equal to NaN (inputs may hold planted NaNs)."""
    if not a.is_floating_point():
        return torch.equal(a, b)
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(
        a.nan_to_num(0.0, posinf=float("inf"), neginf=float("-inf")),
        b.nan_to_num(0.0, posinf=float("inf"), neginf=float("-inf")),
    )


def assert_unmodified(
    before: list[torch.Tensor | None],
    after: list[torch.Tensor | None],
    names: list[str],
    label: str,
) -> None:
    for name, b, a in zip(names, before, after, strict=True):
        if b is None:
            continue
        if a.dtype != b.dtype or a.shape != b.shape or not _same_values(a, b):
            raise CheckFailed(f"input modified {where(label)}: verify() changed {name} in place")


def as_device(device: torch.device, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [None if t is None else t.to(device) for t in tensors]


def first_claimed_dtype(target: Target) -> torch.dtype:
    for name in ("float32", "float16", "bfloat16"):
        if name in target.capabilities.dtypes:
            return DTYPES[name]
    raise CheckFailed(f"the backend claims no known dtype: {target.capabilities.dtypes}")


def workload(target: Target, batch: int, num_draft: int, vocab: int, **kwargs):
    """:func:`specsample.workloads.make_workload` on the target's device, in its first claimed dtype."""
    from specsample.workloads import make_workload

    kwargs.setdefault("dtype", first_claimed_dtype(target))
    # Drawn on the CPU, then moved: the same inputs on every device.
    w = make_workload(batch, num_draft, vocab, device="cpu", **kwargs)
    w.draft_token_ids = w.draft_token_ids.to(target.device)
    w.target_probs = w.target_probs.to(target.device)
    if w.draft_probs is not None:
        w.draft_probs = w.draft_probs.to(target.device)
    return w
