"""serving.*: the serving entry point (docs/serving.md) against its float64 reference.

Not claimed unless the backend sets ``Capabilities.serving``. The checks keep to two kinds of call
(logits in with explicit uniforms, and logits in with per-request seeds), so that a compiled
backend builds few graphs.
"""

from __future__ import annotations

import math

import torch
from specsample.reference_serving import (
    float32_sensitive_requests,
    reference_verify_serving,
    transform_row,
)
from specsample.serving_layout import padded_to_flat, padded_to_flat_call

from .check_stats import ALPHA, _Tests
from .checks import CheckFailed, NotClaimed, Target, check
from .statistics import chisquare_gof

#: request kinds of the mixed batches: (label, temperature, top_k, top_p, forced draft count)
KINDS = (
    ("greedy", 0.0, 0, 1.0, None),
    ("greedy K=0", 0.0, 0, 1.0, 0),
    ("random", 1.0, 0, 1.0, None),
    ("random K=0", 0.8, 0, 1.0, 0),
    ("top-k=1", 0.9, 1, 1.0, None),
    ("tiny top-p", 1.0, 0, 1e-6, None),
    ("top-k + top-p", 0.7, 20, 0.9, None),
    ("tiny temperature", 1e-3, 0, 1.0, None),
    ("huge temperature", 1e3, 0, 1.0, None),
    ("temperature 0.6, top-p 0.95", 0.6, 0, 0.95, None),
)


def _require(target: Target) -> torch.dtype:
    if not target.capabilities.serving:
        raise NotClaimed("serving not claimed (Capabilities.serving is False)")
    for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        if name in target.capabilities.dtypes:
            return dtype
    raise NotClaimed(f"neither bfloat16 nor float32 claimed ({target.capabilities.dtypes})")


def mixed_batch(copies: int, K: int, V: int, seed: int, dtype: torch.dtype) -> dict:
    """Every kind of :data:`KINDS` ``copies`` times, in a fixed shuffled order (CPU tensors)."""
    g = torch.Generator().manual_seed(seed)
    kinds = [k for _ in range(copies) for k in KINDS]
    order = torch.randperm(len(kinds), generator=g).tolist()
    kinds = [kinds[i] for i in order]
    B = len(kinds)
    num = torch.randint(0, K + 1, (B,), generator=g)
    for b, kind in enumerate(kinds):
        if kind[4] is not None:
            num[b] = kind[4]
    logits = torch.randn(B, K + 1, V, generator=g) * 3
    draft = logits[:, :K] + torch.randn(B, K, V, generator=g)
    # Draft tokens: mostly the target's argmax (so that greedy rows accept some), else random.
    ids = torch.where(
        torch.rand(B, K, generator=g) < 0.6,
        logits[:, :K].argmax(-1),
        torch.randint(0, V, (B, K), generator=g),
    )
    return {
        "labels": [k[0] for k in kinds],
        "ids": ids,
        "num_draft_tokens": num,
        "target_logits": logits.to(dtype),
        "draft_logits": draft.to(dtype),
        "temperature": torch.tensor([k[1] for k in kinds]),
        "top_k": torch.tensor([k[2] for k in kinds]),
        "top_p": torch.tensor([k[3] for k in kinds]),
        "uniforms": torch.rand(B, K + 1, generator=g),
    }


def _on(device: torch.device, batch: dict) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


#: at most this fraction of a batch may be excused as float32-sensitive (else the batch, not the
#: backend, is broken: a check that excuses most requests would prove nothing)
MAX_SENSITIVE = 0.1


def _excused(ids: torch.Tensor, batch: dict, what: str) -> torch.Tensor:
    """``[B]`` bool: requests whose float64 reference changes when the sampling distributions are
    rounded to float32 (a float32 backend may emit either answer; see
    :func:`~specsample.reference_serving.float32_sensitive_requests`)."""
    sensitive = float32_sensitive_requests(ids, **batch)
    if int(sensitive.sum()) > MAX_SENSITIVE * len(sensitive):
        raise CheckFailed(
            f"{what}: {int(sensitive.sum())} of {len(sensitive)} requests are float32-sensitive "
            f"(more than {MAX_SENSITIVE:.0%}): the test batch is degenerate"
        )
    return sensitive


def _compare(out, ref, labels: list[str], what: str, excused: torch.Tensor | None = None) -> None:
    """Status and tokens of ``out`` equal the reference's, except in ``excused`` requests."""
    keep = torch.ones(len(labels), dtype=torch.bool) if excused is None else ~excused
    got_status, want_status = out.status.cpu(), ref.status.cpu()
    bad = torch.nonzero((got_status != want_status) & keep).flatten().tolist()
    if bad:
        b = bad[0]
        raise CheckFailed(
            f"{what}: request {b} ({labels[b]}) has status {int(got_status[b])}, the reference "
            f"{int(want_status[b])}"
        )
    got, want = out.token_ids.cpu(), ref.token_ids.cpu()
    rows = torch.nonzero((got != want).any(dim=1) & keep).flatten().tolist()
    if rows:
        b = rows[0]
        raise CheckFailed(
            f"{what}: request {b} ({labels[b]}) emitted {got[b].tolist()}, the reference "
            f"{want[b].tolist()} ({len(rows)} requests differ)"
        )
    same = out.num_emitted.cpu()[keep]
    if not torch.equal(same, ref.num_emitted.cpu()[keep]):
        raise CheckFailed(f"{what}: num_emitted differs from the reference")


@check("serving.exact")
def serving_exact(target: Target) -> str:
    """Coupled exactness in mixed batches: greedy, random, K = 0, top-k = 1, tiny top-p, tiny and
    huge temperature rows equal the float64 reference token for token, padded and flattened."""
    dtype = _require(target)
    shapes = [(4, 64, 11)] + ([(8, 1000, 12), (6, 32000, 13)] if target.full else [])
    total = n_excused = 0
    for K, V, seed in shapes:
        batch = mixed_batch(4 if target.full else 2, K, V, seed, dtype)
        labels = batch.pop("labels")
        ids = batch.pop("ids")
        dev = _on(target.device, batch)
        what = f"B={len(labels)}, K={K}, V={V}, {dtype}"
        out = target.backend.verify_serving(ids.to(target.device), **dev)
        ref = reference_verify_serving(ids, **batch)
        excused = _excused(ids, batch, what)
        _compare(out, ref, labels, what, excused)
        # The flattened layout gives the same tokens, and flat_token_ids in engine order.
        flat_ids, cu, flat = padded_to_flat_call(ids, batch)
        T, B = flat_ids.shape[0], len(labels)
        flat = _on(target.device, flat)
        out_flat = target.backend.verify_serving_flat(
            flat_ids.to(target.device), cu.to(target.device), max_num_draft_tokens=K, **flat
        )
        _compare(out_flat, ref, labels, what + ", flattened layout", excused)
        # flat_token_ids is the backend's own padded output, laid out in engine order
        want = padded_to_flat(out_flat.token_ids.cpu(), cu, T + B, bonus=True, fill=-1)
        if not torch.equal(out_flat.flat_token_ids.cpu(), want):
            raise CheckFailed(f"{what}: flat_token_ids is not the padded output in engine order")
        total += B
        n_excused += int(excused.sum())
    note = f", {n_excused} float32-sensitive excused" if n_excused else ""
    return f"{total} requests of {len(KINDS)} kinds, padded and flattened ({dtype}){note}"


def _seeded_law_batch(temperature, top_k, top_p, n, V, seed):
    """``n`` copies of one request (K = 2) whose draft tokens are drawn from its draft
    distributions; returns the kwargs and the exact law of the first emitted token (the target's
    filtered distribution at position 0, whatever the second draft)."""
    g = torch.Generator().manual_seed(seed)
    target_row = torch.randn(3, V, generator=g) * 1.5
    draft_row = torch.randn(2, V, generator=g) * 1.5
    p0 = transform_row(draft_row[0], True, temperature, top_k, top_p)
    p1 = transform_row(draft_row[1], True, temperature, top_k, top_p)
    q = transform_row(target_row[0], True, temperature, top_k, top_p)
    ids = torch.stack(
        [
            torch.multinomial(p0, n, replacement=True, generator=g),
            torch.multinomial(p1, n, replacement=True, generator=g),
        ],
        dim=1,
    )
    kwargs = {
        "target_logits": target_row.expand(n, 3, V).contiguous(),
        "draft_logits": draft_row.expand(n, 2, V).contiguous(),
        "temperature": torch.full((n,), temperature),
        "top_k": torch.full((n,), top_k),
        "top_p": torch.full((n,), top_p),
        "seeds": torch.arange(n) + 1000 * seed,
        "offsets": torch.zeros(n, dtype=torch.int64),
    }
    return ids, kwargs, q


@check("serving.stats")
def serving_stats(target: Target) -> str:
    """Per temperature (0.5, 1, 2, and with top-k / top-p), the first emitted token of drafts drawn
    from the filtered draft logits follows the filtered target distribution (chi-square)."""
    _require(target)
    settings = [(0.5, 0, 1.0), (1.0, 0, 1.0), (2.0, 0, 1.0), (0.8, 5, 0.9)]
    n = 20000 if target.full else 2000
    if target.name == "torch-loop" and not target.full:
        n = 250  # one request at a time; the fast level keeps to seconds
    V = 8
    tests = _Tests(len(settings))
    for i, (T, k, p) in enumerate(settings):
        ids, kwargs, q = _seeded_law_batch(T, k, p, n, V, seed=40 + i)
        out = target.backend.verify_serving(ids.to(target.device), **_on(target.device, kwargs))
        if out.status.any():
            raise CheckFailed(f"temperature {T}: a valid request was flagged")
        first = out.token_ids[:, 0].cpu()
        counts = torch.bincount(first, minlength=V)
        res = chisquare_gof(counts, q)
        tests.add(
            res.pvalue,
            f"temperature {T}, top_k {k}, top_p {p}: first token counts {counts.tolist()} vs "
            f"expected {[round(float(x) * n, 1) for x in q]} (p-value {res.pvalue:.3g})",
        )
    return tests.finish(f"{n} requests per setting, false-alarm rate {ALPHA:g}")


@check("serving.batch-independence")
def serving_batch_independence(target: Target) -> str:
    """With per-request seeds a request's tokens do not depend on the rest of the batch: the same
    requests reordered, among different neighbours and with wider padding emit the same tokens."""
    dtype = _require(target)
    batch = mixed_batch(2, 4, 64, 21, dtype)
    labels = batch.pop("labels")
    ids = batch.pop("ids")
    batch.pop("uniforms")
    B = len(labels)
    batch["seeds"] = torch.arange(B) * 104729 + 7
    batch["offsets"] = torch.arange(B) * 3
    first = target.backend.verify_serving(ids.to(target.device), **_on(target.device, batch))
    other = mixed_batch(2, 6, 64, 22, dtype)  # different neighbours, K = 6 padding
    other_ids = other.pop("ids")
    other.pop("labels")
    other.pop("uniforms")
    keep = torch.arange(0, B, 2)  # every other request, in reverse order, between new ones
    keep = keep.flip(0)
    mixed: dict[str, torch.Tensor] = {}
    m = len(keep)
    for name in ("target_logits", "draft_logits"):
        width = 7 if name == "target_logits" else 6
        mine = torch.zeros(m, width, 64, dtype=dtype)
        mine[:, : batch[name].shape[1]] = batch[name][keep]
        mixed[name] = torch.cat([mine, other[name][:m]])
    padded_ids = torch.zeros(m, 6, dtype=torch.int64)
    padded_ids[:, :4] = ids[keep]
    all_ids = torch.cat([padded_ids, other_ids[:m]])
    for name in ("num_draft_tokens", "temperature", "top_k", "top_p"):
        mixed[name] = torch.cat([batch[name][keep], other[name][:m]])
    mixed["seeds"] = torch.cat([batch["seeds"][keep], torch.arange(m) + 99])
    mixed["offsets"] = torch.cat([batch["offsets"][keep], torch.zeros(m, dtype=torch.int64)])
    second = target.backend.verify_serving(all_ids.to(target.device), **_on(target.device, mixed))
    a, b = first.token_ids.cpu(), second.token_ids.cpu()
    for j, req in enumerate(keep.tolist()):
        mine = b[j, :5]
        if not torch.equal(mine, a[req]) or b[j, 5:].ne(-1).any():
            raise CheckFailed(
                f"request {req} ({labels[req]}) emitted {a[req].tolist()} alone and "
                f"{b[j].tolist()} in another batch with the same seed and offset"
            )
    ref = reference_verify_serving(ids, **batch)
    _compare(first, ref, labels, "seeded batch", _excused(ids, batch, "seeded batch"))
    return f"{m} requests of {B} kept their tokens in a reordered batch with other neighbours"


def _raises(call, name: str, expected: str) -> None:
    try:
        call()
    except (ValueError, TypeError) as e:
        if name not in str(e):
            raise CheckFailed(f"bad {name} raised without naming it: {e}") from None
        return
    raise CheckFailed(f"bad {name} was accepted ({expected})")


@check("serving.bad-input")
def serving_bad_input(target: Target) -> str:
    """Bad parameters raise on the host naming the argument (negative temperature, top-p outside
    (0, 1], top-k < 0, inconsistent cu_num_draft_tokens); bad values set the reference's status."""
    dtype = _require(target)
    dev = target.device
    be = target.backend
    ids = torch.zeros(2, 2, dtype=torch.int64, device=dev)
    logits = torch.zeros(2, 3, 5, dtype=dtype, device=dev)
    cases = [
        ("temperature", {"temperature": [1.0, -0.1]}, "temperature < 0"),
        ("temperature", {"temperature": [math.nan, 1.0]}, "NaN temperature"),
        ("top_p", {"top_p": [0.0, 1.0]}, "top_p = 0"),
        ("top_p", {"top_p": torch.tensor([1.0, 1.5])}, "top_p > 1"),
        ("top_k", {"top_k": [0, -2]}, "top_k < 0"),
        ("num_draft_tokens", {"num_draft_tokens": [1, 3]}, "a count above K"),
    ]
    for name, kwargs, expected in cases:
        _raises(
            lambda kw=kwargs: be.verify_serving(ids, target_logits=logits, **kw), name, expected
        )
    flat_ids = torch.zeros(3, dtype=torch.int64, device=dev)
    rows = torch.zeros(5, 5, dtype=dtype, device=dev)
    for cu, expected in (([2, 1], "decreasing"), ([1, 2], "last entry != T"), ([-1, 3], "< 0")):
        cu_t = torch.tensor(cu, device=dev)
        _raises(
            lambda c=cu_t: be.verify_serving_flat(flat_ids, c, target_logits=rows, validate="full"),
            "cu_num_draft_tokens",
            expected,
        )
    # Bad values: status equals the reference's, the tokens of the other requests are unaffected.
    V = 6
    bad_ids = torch.tensor([[1, 99], [1, 99], [2, 3], [2, 3], [0, 0], [1, 1], [4, 4]])
    num = torch.tensor([1, 2, 2, 2, 2, 2, 1])
    lg = torch.zeros(7, 3, V)
    lg[0, 2, 0] = math.nan  # request 0 owns rows 0..1 only
    lg[2, 1, 4] = math.nan
    lg[3, 2] = -math.inf
    lg[4, 0, 1] = -math.inf
    draft = torch.zeros(7, 2, V)
    draft[5, 1, 2] = math.inf
    u = torch.full((7, 3), 0.43)  # away from the cumulative boundaries of a flat row
    u[4, 2] = 1.0
    kwargs = {
        "num_draft_tokens": num, "target_logits": lg.to(dtype), "draft_logits": draft.to(dtype),
        "uniforms": u, "temperature": torch.ones(7), "top_k": torch.zeros(7, dtype=torch.int64),
        "top_p": torch.ones(7),
    }  # fmt: skip
    ref = reference_verify_serving(bad_ids, **kwargs)
    out = be.verify_serving(bad_ids.to(dev), **_on(dev, kwargs))
    _compare(out, ref, [f"status case {b}" for b in range(7)], "bad values")
    expected = [0, 1, 2, 16, 8, 4, 0]
    if ref.status.tolist() != expected:
        raise CheckFailed(f"reference status {ref.status.tolist()}, expected {expected}")
    return f"{len(cases) + 3} bad parameters raised, 7 status cases equal the reference"
