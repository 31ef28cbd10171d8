"""edge.*: extreme shapes and degenerate distributions, each compared with the reference (with
uniforms) and checked for the property it is about (without uniforms)."""

from __future__ import annotations

import torch

from .check_common import (
    DTYPES,
    check_output,
    compare_to_reference,
    first_claimed_dtype,
    uniforms,
    workload,
)
from .checks import CheckFailed, Target, check


def _exact_both_modes(
    target: Target,
    B: int,
    K: int,
    V: int,
    label: str,
    seed: int,
    without_draft: bool = True,
    with_generator: bool = True,
    **kw,
) -> int:
    """Random mode with uniforms (draft_probs given and None) and greedy, against the reference."""
    target.require_size(V, K)
    near = 0
    w = workload(target, B, K, V, seed=seed, **kw)
    if "random" in target.capabilities.modes:
        u = uniforms(B, K, seed + 1, target.device)
        near += compare_to_reference(
            target, w.draft_token_ids, w.draft_probs, w.target_probs, u=u, label=label
        )
        if without_draft:
            near += compare_to_reference(
                target,
                w.draft_token_ids,
                None,
                w.target_probs,
                u=u,
                label=label + ", draft_probs=None",
            )
        if with_generator:
            gen = torch.Generator(device=target.device).manual_seed(seed)
            out = target.verify(w.draft_token_ids, w.draft_probs, w.target_probs, generator=gen)
            check_output(out, w.draft_token_ids, V, target.device, label + ", generator")
    if "greedy" in target.capabilities.modes:
        compare_to_reference(
            target,
            w.draft_token_ids,
            w.draft_probs,
            w.target_probs,
            mode="greedy",
            label=label + ", greedy",
        )
    return near


@check("edge.batch-1")
def batch_1(target: Target) -> str:
    """B = 1, over several uniforms."""
    near = 0
    for i in range(6):
        near += _exact_both_modes(target, 1, 4, 64, f"B=1 #{i}", 600 + 7 * i, acceptance="medium")
    return f"6 calls, K=4, V=64; {near} near-tie differences"


@check("edge.batch-large")
def batch_large(target: Target) -> str:
    """Large B (1024 at fast, 4096 at full)."""
    B = 4096 if target.full else 1024
    near = _exact_both_modes(
        target,
        B,
        4,
        96,
        f"B={B}",
        610,
        without_draft=False,
        with_generator=False,
        acceptance="medium",
    )
    return f"B={B}, K=4, V=96; {near} near-tie differences"


@check("edge.k-0")
def k_0(target: Target) -> str:
    """K = 0: one token sampled from target row 0 (no drafts)."""
    near = _exact_both_modes(target, 32, 0, 40, "K=0", 620)
    return f"B=32, V=40; {near} near-tie differences"


@check("edge.k-1")
def k_1(target: Target) -> str:
    """K = 1."""
    near = _exact_both_modes(target, 64, 1, 40, "K=1", 630, acceptance="medium")
    return f"B=64, V=40; {near} near-tie differences"


@check("edge.k-16")
def k_16(target: Target) -> str:
    """K = 16 (long accepted runs: high acceptance)."""
    near = _exact_both_modes(target, 48, 16, 40, "K=16", 640, acceptance="high")
    return f"B=48, V=40; {near} near-tie differences"


@check("edge.vocab-2")
def vocab_2(target: Target) -> str:
    """V = 2."""
    near = _exact_both_modes(target, 64, 4, 2, "V=2", 650, acceptance="medium")
    return f"B=64, K=4; {near} near-tie differences"


@check("edge.vocab-prime")
def vocab_prime(target: Target) -> str:
    """V prime, just past a power of two (4099 at fast, 32003 at full): kernels' tail blocks."""
    V = 32003 if target.full else 4099
    near = _exact_both_modes(target, 16, 3, V, f"V={V}", 660, acceptance="medium")
    return f"B=16, K=3, V={V}; {near} near-tie differences"


@check("edge.vocab-262144")
def vocab_262144(target: Target) -> str:
    """V = 262144 (B = 4 at fast, 32 at full)."""
    B = 32 if target.full else 4
    near = _exact_both_modes(target, B, 2, 262144, "V=262144", 670, acceptance="medium")
    return f"B={B}, K=2; {near} near-tie differences"


@check("edge.p-equals-q")
def p_equals_q(target: Target) -> str:
    """draft_probs == target_probs: every draft is accepted (u < 1), K+1 tokens emitted."""
    target.require_mode("random")
    B, K, V = 64, 5, 33
    w = workload(target, B, K, V, seed=680)
    draft = w.target_probs[:, :K].clone()
    u = uniforms(B, K, 681, target.device)
    compare_to_reference(target, w.draft_token_ids, draft, w.target_probs, u=u, label="p == q")
    gen = torch.Generator(device=target.device).manual_seed(682)
    out = target.verify(w.draft_token_ids, draft, w.target_probs, generator=gen)
    check_output(out, w.draft_token_ids, V, target.device, "p == q, generator")
    short = torch.nonzero(out.num_emitted.cpu() != K + 1).flatten()
    if short.numel():
        raise CheckFailed(
            f"p == q must accept every draft: request {int(short[0])} emitted "
            f"{int(out.num_emitted[int(short[0])])} of K+1={K + 1} tokens"
        )
    return f"B={B}, K={K}, V={V}: all accepted"


@check("edge.disjoint-supports")
def disjoint_supports(target: Target) -> str:
    """p and q with disjoint supports: the first draft is always rejected and the emitted token is
    drawn from q (inside q's support)."""
    target.require_mode("random")
    B, K, V = 64, 4, 20
    gen = torch.Generator().manual_seed(690)
    dtype = first_claimed_dtype(target)
    draft = torch.zeros(B, K, V)
    draft[:, :, :10] = torch.rand(B, K, 10, generator=gen) + 0.01
    draft /= draft.sum(-1, keepdim=True)
    tgt = torch.zeros(B, K + 1, V)
    tgt[:, :, 10:] = torch.rand(B, K + 1, 10, generator=gen) + 0.01
    tgt /= tgt.sum(-1, keepdim=True)
    ids = torch.multinomial(draft.reshape(B * K, V), 1, generator=gen).reshape(B, K)
    dev = target.device
    ids, draft, tgt = ids.to(dev), draft.to(dtype).to(dev), tgt.to(dtype).to(dev)
    u = uniforms(B, K, 691, dev)
    compare_to_reference(target, ids, draft, tgt, u=u, label="disjoint supports")
    out = target.verify(ids, draft, tgt, generator=torch.Generator(device=dev).manual_seed(692))
    check_output(out, ids, V, dev, "disjoint supports, generator")
    n, tok = out.num_emitted.cpu(), out.token_ids.cpu()
    if bool((n != 1).any()) or bool((tok[:, 0] < 10).any()):
        b = int(torch.nonzero((n != 1) | (tok[:, 0] < 10)).flatten()[0])
        raise CheckFailed(
            f"disjoint supports must reject the first draft and emit a token from q's support "
            f"(10..19): request {b} emitted {tok[b].tolist()}"
        )
    return f"B={B}, K={K}, V={V}: all rejected at position 0, tokens in q's support"


@check("edge.one-hot")
def one_hot(target: Target) -> str:
    """One-hot draft and target rows: the output is deterministic (accept iff the hot tokens agree;
    the emitted token is the target's hot token)."""
    B, K, V = 64, 4, 16
    gen = torch.Generator().manual_seed(700)
    dtype = first_claimed_dtype(target)
    hot_q = torch.randint(0, V, (B, K + 1), generator=gen)
    hot_p = torch.where(
        torch.rand(B, K, generator=gen) < 0.7,
        hot_q[:, :K],
        torch.randint(0, V, (B, K), generator=gen),
    )
    tgt = torch.nn.functional.one_hot(hot_q, V).float()
    draft = torch.nn.functional.one_hot(hot_p, V).float()
    ids = hot_p.clone()
    # The expected output: accept while hot_p == hot_q, then emit hot_q of that row.
    expected = torch.full((B, K + 1), -1, dtype=torch.int64)
    for b in range(B):
        k = 0
        while k < K and int(hot_p[b, k]) == int(hot_q[b, k]):
            expected[b, k] = hot_p[b, k]
            k += 1
        expected[b, k] = hot_q[b, k]
    dev = target.device
    ids, draft, tgt = ids.to(dev), draft.to(dtype).to(dev), tgt.to(dtype).to(dev)
    for mode in target.capabilities.modes:
        gen_d = torch.Generator(device=dev).manual_seed(701) if mode == "random" else None
        out = target.verify(ids, draft, tgt, mode=mode, generator=gen_d)
        check_output(out, ids, V, dev, f"one-hot, {mode}")
        got = out.token_ids.cpu()
        if not torch.equal(got, expected):
            b = int(torch.nonzero((got != expected).any(1)).flatten()[0])
            raise CheckFailed(
                f"one-hot rows ({mode}): request {b} emitted {got[b].tolist()}, expected "
                f"{expected[b].tolist()} (draft hot {hot_p[b].tolist()}, target hot {hot_q[b].tolist()})"
            )
    return f"B={B}, K={K}, V={V}, modes {', '.join(target.capabilities.modes)}"


@check("edge.zero-prob-draft")
def zero_prob_draft(target: Target) -> str:
    """A draft token of draft probability 0: accepted iff q(x) > 0 (u * 0 < q), rejected if q(x) = 0."""
    target.require_mode("random")
    B, K, V = 64, 3, 12
    w = workload(target, B, K, V, seed=710)
    ids = w.draft_token_ids.clone()
    draft = w.draft_probs.clone()
    tgt = w.target_probs.clone()
    rows = torch.arange(B, device=ids.device)
    draft[rows, 0, ids[:, 0]] = 0.0  # p(x) = 0 at position 0
    tgt[rows[::2], 0, ids[::2, 0]] = 0.0  # and q(x) = 0 too for even requests
    u = uniforms(B, K, 711, target.device)
    compare_to_reference(target, ids, draft, tgt, u=u, label="zero-probability draft")
    out = target.verify(
        ids, draft, tgt, generator=torch.Generator(device=target.device).manual_seed(712)
    )
    check_output(out, ids, V, target.device, "zero-probability draft, generator")
    n = out.num_emitted.cpu()
    even_bad = torch.nonzero(n[::2] != 1).flatten()
    odd_bad = torch.nonzero(n[1::2] < 2).flatten()
    if even_bad.numel() or odd_bad.numel():
        raise CheckFailed(
            "zero-probability draft: p(x)=0 must be accepted when q(x)>0 (u*0 < q) and rejected when "
            f"q(x)=0; num_emitted of even (q=0) requests {n[::2][:8].tolist()}, odd {n[1::2][:8].tolist()}"
        )
    return f"B={B}: accepted iff q(x) > 0"


@check("edge.non-contiguous")
def non_contiguous(target: Target) -> str:
    """Sliced, strided and transposed inputs give the same result as contiguous copies, and are
    not modified."""
    B, K, V = 40, 4, 30
    w = workload(target, 2 * B, K + 2, V + 7, seed=720, acceptance="medium")
    # Rows renormalized after slicing V so they stay distributions.
    big_t = w.target_probs.float()[:, :, :V]
    big_t = (big_t / big_t.sum(-1, keepdim=True)).to(w.target_probs.dtype)
    big_p = w.draft_probs.float()[:, :, :V]
    big_p = (big_p / big_p.sum(-1, keepdim=True)).to(w.draft_probs.dtype)
    tgt = big_t[::2, 1 : K + 2]  # batch stride 2, row offset, V slice of a wider buffer
    draft = big_p[::2, :K]
    ids_wide = torch.remainder(w.draft_token_ids, V).t().contiguous().t()  # transposed storage
    ids = ids_wide[::2, :K]
    u_wide = uniforms(B, 2 * K + 1, 721, target.device)
    u = u_wide[:, ::2]
    assert not (
        tgt.is_contiguous() or draft.is_contiguous() or ids.is_contiguous() or u.is_contiguous()
    )
    copies = [t.clone() for t in (ids, draft, tgt, u)]
    near = 0
    if "random" in target.capabilities.modes:
        out = target.verify(ids, draft, tgt, uniforms=u)
        near = compare_to_reference(
            target,
            ids.contiguous(),
            draft.contiguous(),
            tgt.contiguous(),
            u=u.contiguous(),
            label="non-contiguous",
            out=out,
        )
    if "greedy" in target.capabilities.modes:
        out = target.verify(ids, None, tgt, mode="greedy")
        compare_to_reference(
            target,
            ids.contiguous(),
            None,
            tgt.contiguous(),
            mode="greedy",
            out=out,
            label="non-contiguous, greedy",
        )
    names = ("draft_token_ids", "draft_probs", "target_probs", "uniforms")
    for name, a, b in zip(names, (ids, draft, tgt, u), copies, strict=True):
        if not torch.equal(a, b):
            raise CheckFailed(f"input modified [non-contiguous]: verify() changed {name}")
    return f"B={B}, K={K}, V={V} sliced views; {near} near-tie differences"


def _half(target: Target, name: str) -> str:
    target.require_dtype(name)
    near = 0
    for i, (B, K, V) in enumerate([(64, 4, 50), (32, 3, 1000)]):
        near += _exact_both_modes(
            target,
            B,
            K,
            V,
            f"{name}, V={V}",
            730 + i,
            without_draft=False,
            dtype=DTYPES[name],
            acceptance="medium",
        )
    return f"{name}: 2 shapes, random and greedy; {near} near-tie differences"


@check("edge.float16")
def float16(target: Target) -> str:
    """float16 probabilities (read in float16, accumulated in float32 or wider)."""
    return _half(target, "float16")


@check("edge.bfloat16")
def bfloat16(target: Target) -> str:
    """bfloat16 probabilities (read in bfloat16, accumulated in float32 or wider)."""
    return _half(target, "bfloat16")


@check("edge.huge", levels=("full",))
def huge(target: Target) -> str:
    """B*K*V above 2**31 elements (64-bit indexing), on the GPU; the last requests are compared
    with the reference."""
    target.require_cuda("the B*K*V > 2**31 case")
    dtype = first_claimed_dtype(target)
    K, V = 4, 262144
    B = 2**31 // (K * V) + 8  # 2056 requests: B*K*V = 2.16e9 > 2**31
    target.require_size(V, K)
    dev = target.device
    gen = torch.Generator(device=dev).manual_seed(740)
    pool_q = torch.softmax(torch.randn(64, V, device=dev, generator=gen) * 3, -1).to(dtype)
    pool_p = torch.softmax(torch.randn(64, V, device=dev, generator=gen) * 3, -1).to(dtype)
    pick_q = torch.randint(0, 64, (B, K + 1), device=dev, generator=gen)
    pick_p = torch.randint(0, 64, (B, K), device=dev, generator=gen)
    tgt = pool_q[pick_q]
    draft = pool_p[pick_p]
    # Make the last requests' first draft likely to be accepted (p = q there), so that rows deep
    # in the tensor (offsets above 2**31) are read.
    draft[-16:] = tgt[-16:, :K]
    ids = torch.multinomial(draft.reshape(-1, V)[-16 * K :].float(), 1, generator=gen).reshape(
        16, K
    )
    all_ids = torch.randint(0, V, (B, K), device=dev, generator=gen)
    all_ids[-16:] = ids
    u = uniforms(B, K, 741, dev)
    near = 0
    if "random" in target.capabilities.modes:
        out = target.verify(all_ids, draft, tgt, uniforms=u)
        check_output(out, all_ids, V, dev, "B*K*V > 2**31")
        sl = slice(B - 16, B)
        sub = type(out)(out.token_ids[sl], out.num_emitted[sl])
        near = compare_to_reference(
            target,
            all_ids[sl],
            draft[sl],
            tgt[sl],
            u=u[sl],
            out=sub,
            label="B*K*V > 2**31, last 16",
        )
        out = target.verify(all_ids, None, tgt, uniforms=u)
        sub = type(out)(out.token_ids[sl], out.num_emitted[sl])
        compare_to_reference(
            target,
            all_ids[sl],
            None,
            tgt[sl],
            u=u[sl],
            out=sub,
            label="B*K*V > 2**31, draft_probs=None, last 16",
        )
    if "greedy" in target.capabilities.modes:
        out = target.verify(all_ids, None, tgt, mode="greedy")
        sl = slice(B - 16, B)
        sub = type(out)(out.token_ids[sl], out.num_emitted[sl])
        compare_to_reference(
            target,
            all_ids[sl],
            None,
            tgt[sl],
            mode="greedy",
            out=sub,
            label="B*K*V > 2**31, greedy, last 16",
        )
    del tgt, draft
    torch.cuda.empty_cache()
    return f"B={B}, K={K}, V={V} ({B * K * V / 2**31:.2f} x 2**31 elements, {dtype}); {near} near-tie differences"


# The largest weight of a scaled row: below each dtype's smallest normal number, so every nonzero
# weight of the row is subnormal (float32 and bfloat16 share float32's exponent range).
_SUBNORMAL_TOP = {torch.float32: 1e-39, torch.bfloat16: 1e-39, torch.float16: 5e-5}


@check("edge.subnormal")
def subnormal(target: Target) -> str:
    """Rows whose weights are all subnormal: a positive row, not a zero row, and an argmax that is
    not a tie. A kernel compiled to flush subnormals to zero (``-ftz=true``) reports ``ZERO_ROW``
    or emits index 0 here."""
    B, K, V = 48, 3, 40
    dtypes = [DTYPES[d] for d in DTYPES if d in target.capabilities.dtypes]
    for i, dtype in enumerate(dtypes):
        w = workload(target, B, K, V, seed=720 + i, dtype=torch.float64)
        top = _SUBNORMAL_TOP[dtype]
        tgt, draft = w.target_probs.clone(), w.draft_probs.clone()
        # Even requests: every target row subnormal; requests 1 mod 4: the draft rows too.
        tgt[::2] *= top / tgt[::2].amax(-1, keepdim=True)
        draft[1::4] *= top / draft[1::4].amax(-1, keepdim=True)
        tgt, draft = tgt.to(dtype), draft.to(dtype)
        if "random" in target.capabilities.modes:
            u = uniforms(B, K, 730 + i, target.device)
            compare_to_reference(
                target, w.draft_token_ids, draft, tgt, u=u, label=f"subnormal rows, {dtype}"
            )
        if "greedy" in target.capabilities.modes:
            compare_to_reference(
                target,
                w.draft_token_ids,
                draft,
                tgt,
                mode="greedy",
                label=f"subnormal rows, {dtype}, greedy",
            )
    names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
    return f"B={B}, K={K}, V={V}, {names}: half the requests with every weight subnormal"
