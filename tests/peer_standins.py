"""CPU stand-ins for the peers the plugins in plugins/ wrap (FlashInfer, vLLM, SGLang).

Each stand-in is a module tree built here and injected through ``sys.modules`` (see
:func:`installed`), with the peer function's signature and layout, implemented with torch on the
CPU. They are stricter than the peers about what the adapters must convert (int32 ids, K+1
target rows, freshly zeroed counters, the flattened layout, SGLang's ``retrive_*`` arrays) and
record every call in ``CALLS`` so tests can check the layout the adapter produced. They mirror the
peers' known faults where an adapter must work around them (docs/peers.md), e.g. FlashInfer's
accepted counter that also counts positions after the first rejection.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SRC = {
    "flashinfer": ROOT / "plugins" / "specsample-flashinfer" / "src",
    "vllm": ROOT / "plugins" / "specsample-vllm" / "src",
    "sglang": ROOT / "plugins" / "specsample-sglang" / "src",
}

#: every stand-in call: {"fn": name, **what the test needs to see}
CALLS: list[dict[str, Any]] = []


class LayoutError(AssertionError):
    """The adapter handed the stand-in a layout the peer does not take."""


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise LayoutError(message)


def _residual_sample(q: torch.Tensor, p: torch.Tensor | None, gen: torch.Generator) -> int:
    r = q.double() if p is None else (q.double() - p.double()).clamp_min(0.0)
    if float(r.sum()) <= 0.0:
        r = q.double()
    return int(torch.multinomial(r.float(), 1, generator=gen))


# -- FlashInfer -------------------------------------------------------------------------------


def chain_speculative_sampling(
    draft_probs: torch.Tensor,
    draft_token_ids: torch.Tensor,
    target_probs: torch.Tensor,
    maybe_output_accepted_token_num: torch.Tensor | None = None,
    maybe_output_emitted_draft_token_num: torch.Tensor | None = None,
    deterministic: bool = True,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashInfer 0.7.0's signature; returns ``(output_token_ids [B, K+1] int32 -1 padded,
    accepted [B], emitted [B])``. Faults mirrored: the counters are converted with ``.int()``
    (an int64 buffer gets a copy and the caller's stays zero) and *added to* in place; the
    accepted counter also counts positions after the first rejection, each with a fresh coin."""
    B, K, V = draft_probs.shape
    _need(
        draft_token_ids.dtype == torch.int32, f"draft_token_ids {draft_token_ids.dtype}, not int32"
    )
    _need(tuple(draft_token_ids.shape) == (B, K), "draft_token_ids is not [B, K]")
    _need(tuple(target_probs.shape) == (B, K + 1, V), "target_probs is not [B, K+1, V]")
    counters = (maybe_output_accepted_token_num, maybe_output_emitted_draft_token_num)
    CALLS.append(
        {
            "fn": "chain_speculative_sampling",
            "ids_dtype": draft_token_ids.dtype,
            "target_shape": tuple(target_probs.shape),
            "draft_shape": tuple(draft_probs.shape),
            "counter_dtypes": tuple(None if c is None else c.dtype for c in counters),
            "counters_zero": all(c is None or not bool(c.any()) for c in counters),
            "generator": generator,
            "seed": seed,
            "offset": offset,
        }
    )
    p, q = draft_probs.float(), target_probs.float()  # FlashInfer computes in float32
    ids = draft_token_ids.long()
    if seed is not None and offset is not None:
        s = int(seed.flatten()[0]) if isinstance(seed, torch.Tensor) else int(seed)
        o = int(offset.flatten()[0]) if isinstance(offset, torch.Tensor) else int(offset)
        gen = torch.Generator().manual_seed((s * 1_000_003 + o) % (2**63))
    else:
        gen = generator if generator is not None else torch.default_generator
    u = torch.rand((B, K + 1), generator=gen)
    out = torch.full((B, K + 1), -1, dtype=torch.int32)
    accepted = torch.zeros(B, dtype=torch.int32)
    emitted = torch.zeros(B, dtype=torch.int32)
    for b in range(B):
        n, rejected = 0, False
        for j in range(K):
            x = int(ids[b, j])
            ok = bool(u[b, j] * p[b, j, x] < q[b, j, x])
            if rejected:  # the fault: positions after the rejection are tested again
                accepted[b] += int(bool(torch.rand((), generator=gen) * p[b, j, x] < q[b, j, x]))
                continue
            accepted[b] += int(ok)
            if ok:
                out[b, j] = x
                n += 1
            else:
                out[b, j] = _residual_sample(q[b, j], p[b, j], gen)
                rejected = True
        emitted[b] = n
        if not rejected:
            out[b, K] = _residual_sample(q[b, K], None, gen)
    acc_buf = maybe_output_accepted_token_num
    emi_buf = maybe_output_emitted_draft_token_num
    acc_buf = torch.zeros(B, dtype=torch.int32) if acc_buf is None else acc_buf.int()
    emi_buf = torch.zeros(B, dtype=torch.int32) if emi_buf is None else emi_buf.int()
    acc_buf += accepted
    emi_buf += emitted
    CALLS[-1].update(accepted=accepted.clone(), emitted=emitted.clone())
    return out, acc_buf, emi_buf


def flashinfer_modules() -> dict[str, types.ModuleType]:
    top = types.ModuleType("flashinfer")
    sampling = types.ModuleType("flashinfer.sampling")
    sampling.chain_speculative_sampling = chain_speculative_sampling
    top.sampling = sampling
    top.__version__ = "0.7.0+standin"
    _spec(top, sampling)
    return {"flashinfer": top, "flashinfer.sampling": sampling}


# -- vLLM -------------------------------------------------------------------------------------


def rejection_sample(
    draft_token_ids: torch.Tensor,
    num_draft_tokens: list[int],
    max_spec_len: int,
    cu_num_draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    bonus_token_ids: torch.Tensor,
    sampling_metadata: Any,
) -> torch.Tensor:
    """vLLM v1's signature and flattened layout; returns ``[B, max_spec_len+1]`` int32, -1 for
    placeholders. Acceptance: ``p(x) > 0 and q(x)/p(x) >= u``; a rejected position's token is
    ``argmax(residual / e)`` with one exponential row ``e`` per request; uniforms and exponentials
    come from the per-request generators (the global RNG for requests without one). Fault
    mirrored: on the n-gram path (no draft probs) the draft token's target probability is zeroed
    in place while the residual is formed, then restored."""
    B, T = len(num_draft_tokens), draft_token_ids.shape[0]
    _need(draft_token_ids.dim() == 1 and draft_token_ids.is_contiguous(), "ids not flat [T]")
    _need(draft_token_ids.dtype == torch.int32, f"draft_token_ids {draft_token_ids.dtype}")
    _need(target_probs.dim() == 2 and target_probs.is_contiguous(), "target_probs not [T, V]")
    _need(target_probs.shape[0] == T, f"target_probs has {target_probs.shape[0]} rows, T={T}")
    _need(draft_probs is None or tuple(draft_probs.shape) == tuple(target_probs.shape), "draft")
    _need(cu_num_draft_tokens.dtype == torch.int32 and cu_num_draft_tokens.dim() == 1, "cu dtype")
    expected_cu = torch.tensor(num_draft_tokens, dtype=torch.int64).cumsum(0)
    _need(torch.equal(cu_num_draft_tokens.long().cpu(), expected_cu), "cu_num_draft_tokens")
    _need(max(num_draft_tokens, default=0) <= max_spec_len, "max_spec_len too small")
    _need(tuple(bonus_token_ids.shape) == (B, 1), f"bonus_token_ids {tuple(bonus_token_ids.shape)}")
    md = sampling_metadata
    CALLS.append(
        {
            "fn": "rejection_sample",
            "ids_dtype": draft_token_ids.dtype,
            "target_shape": tuple(target_probs.shape),
            "cu": cu_num_draft_tokens.clone(),
            "num_draft_tokens": list(num_draft_tokens),
            "generators": dict(md.generators),
            "all_greedy": md.all_greedy,
        }
    )
    out = torch.full((B, max_spec_len + 1), -1, dtype=torch.int32)
    starts = [0, *expected_cu.tolist()[:-1]]
    if md.all_greedy:
        arg = target_probs.argmax(dim=-1)
        for b, (s0, n) in enumerate(zip(starts, num_draft_tokens, strict=True)):
            for j in range(n):
                out[b, j] = int(arg[s0 + j])
                if int(arg[s0 + j]) != int(draft_token_ids[s0 + j]):
                    break
            else:
                out[b, n] = int(bonus_token_ids[b, 0])
        return out
    u = torch.rand(T)
    e = torch.empty(B, target_probs.shape[1]).exponential_()
    for b, (s0, n) in enumerate(zip(starts, num_draft_tokens, strict=True)):
        gen = md.generators.get(b)
        if n and gen is not None:
            u[s0 : s0 + n].uniform_(generator=gen)
            e[b].exponential_(generator=gen)
    for b, (s0, n) in enumerate(zip(starts, num_draft_tokens, strict=True)):
        for j in range(n):
            t, x = s0 + j, int(draft_token_ids[s0 + j])
            p_x = 1.0 if draft_probs is None else float(draft_probs[t, x])
            if p_x > 0 and float(target_probs[t, x]) / p_x >= float(u[t]):
                out[b, j] = x
                continue
            if draft_probs is None:
                kept = float(target_probs[t, x])
                target_probs[t, x] = 0.0  # the in-place write, restored below
                residual = target_probs[t].clone()
                target_probs[t, x] = kept
            else:
                residual = (target_probs[t] - draft_probs[t]).clamp_min(0.0)
            out[b, j] = int((residual / e[b]).argmax())
            break
        else:
            out[b, n] = int(bonus_token_ids[b, 0])
    return out


def vllm_modules() -> dict[str, types.ModuleType]:
    names = ["vllm", "vllm.v1", "vllm.v1.sample", "vllm.v1.sample.rejection_sampler"]
    mods = {n: types.ModuleType(n) for n in names}
    for parent, child in zip(names, names[1:], strict=False):
        setattr(mods[parent], child.rsplit(".", 1)[1], mods[child])
    leaf = mods["vllm.v1.sample.rejection_sampler"]
    leaf.rejection_sample = rejection_sample
    leaf.PLACEHOLDER_TOKEN_ID = -1
    leaf.GREEDY_TEMPERATURE = -1
    leaf.MAX_SPEC_LEN = 32
    _spec(*mods.values())
    return mods


# -- SGLang (sgl-kernel) ----------------------------------------------------------------------


def _tree_layout_checks(fn, predicts, accept_index, accept_token_num, candidates, index, nxt, sib):
    B, P = candidates.shape
    for name, t in (("candidates", candidates), ("retrive_index", index)):
        _need(t.dtype == torch.int32 and tuple(t.shape) == (B, P), f"{name} {t.dtype} {t.shape}")
    for name, t in (("retrive_next_token", nxt), ("retrive_next_sibling", sib)):
        _need(t.dtype == torch.int32 and tuple(t.shape) == (B, P), f"{name} {t.dtype} {t.shape}")
    _need(torch.equal(index.long().flatten(), torch.arange(B * P)), "retrive_index not b*P+pos")
    _need(predicts.dtype == torch.int32 and tuple(predicts.shape) == (B * P,), "predicts")
    _need(accept_index.dtype == torch.int32 and accept_index.shape[0] == B, "accept_index")
    _need(accept_token_num.dtype == torch.int32 and not bool(accept_token_num.any()), "counter")
    CALLS.append(
        {
            "fn": fn,
            "candidates": candidates.clone(),
            "next_token": nxt.clone(),
            "next_sibling": sib.clone(),
            "steps": accept_index.shape[1],
        }
    )


def _walk(b, first_step, pick, accept_index, index, nxt, sib, candidates, steps):
    """The walk both kernels share; ``pick(pos, child, tok) -> bool`` decides a child."""
    cur, last, n = 0, int(index[b, 0]), 0
    accept_index[b, 0] = last
    for _ in range(1, steps):
        child = int(nxt[b, cur])
        while child != -1:
            tok = int(candidates[b, child])
            if pick(cur, child, tok):
                break
            child = int(sib[b, child])
        if child == -1:
            break
        first_step(last, tok)
        n += 1
        last = int(index[b, child])
        accept_index[b, n] = last
        cur = child
    return cur, last, n


def tree_speculative_sampling_target_only(
    predicts: torch.Tensor,
    accept_index: torch.Tensor,
    accept_token_num: torch.Tensor,
    candidates: torch.Tensor,
    retrive_index: torch.Tensor,
    retrive_next_token: torch.Tensor,
    retrive_next_sibling: torch.Tensor,
    uniform_samples: torch.Tensor,
    uniform_samples_for_final_sampling: torch.Tensor,
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor,
    threshold_single: float = 1.0,
    threshold_acc: float = 1.0,
    deterministic: bool = True,
) -> None:
    """sgl-kernel's signature and layout (outputs written in place). One coin per position,
    ``uniform_samples[b, pos]``, walks the children's cumulative target mass; a rejected child's
    target mass is copied into ``draft_probs`` so the final token comes from ``relu(q - p)`` by
    the inverse CDF with the final coin. Fault mirrored: a child is accepted when the coin is
    *equal to* the cumulative mass too (``coin <= mass``), so a coin of 0 accepts a
    zero-probability first child."""
    B, P = candidates.shape
    _tree_layout_checks(
        "tree_speculative_sampling_target_only",
        predicts,
        accept_index,
        accept_token_num,
        candidates,
        retrive_index,
        retrive_next_token,
        retrive_next_sibling,
    )
    _need(tuple(uniform_samples.shape) == (B, P), f"uniform_samples {uniform_samples.shape}")
    _need(tuple(uniform_samples_for_final_sampling.shape) == (B,), "final uniforms not [B]")
    _need(target_probs.dtype == torch.float32 and target_probs.shape[:2] == (B, P), "target")
    _need(tuple(draft_probs.shape) == tuple(target_probs.shape), "draft_probs shape")
    _need(not bool(draft_probs.any()), "draft_probs must come in zeroed (a scratch buffer)")
    CALLS[-1]["coins"] = uniform_samples.clone()
    steps = accept_index.shape[1]
    for b in range(B):
        state = {"coin": float(uniform_samples[b, 0]), "mass": 0.0}

        def pick(pos, child, tok, b=b, state=state):
            qv = float(target_probs[b, pos, tok])
            state["mass"] += qv
            if state["coin"] <= state["mass"] / threshold_acc or qv >= threshold_single:
                state["coin"], state["mass"] = float(uniform_samples[b, child]), 0.0
                return True
            draft_probs[b, pos, tok] = qv
            return False

        def first_step(slot, tok):
            predicts[slot] = tok

        cur, last, n = _walk(
            b,
            first_step,
            pick,
            accept_index,
            retrive_index,
            retrive_next_token,
            retrive_next_sibling,
            candidates,
            steps,
        )
        accept_token_num[b] = n
        q = target_probs[b, cur].double()
        p = draft_probs[b, cur].double() if n != steps - 1 else torch.zeros_like(q)
        r = (q - p).clamp_min(0.0)
        cdf = r.cumsum(0)
        above = torch.nonzero(cdf > float(uniform_samples_for_final_sampling[b]) * float(cdf[-1]))
        predicts[last] = int(above[0]) if above.numel() else q.numel() - 1


def verify_tree_greedy(
    predicts: torch.Tensor,
    accept_index: torch.Tensor,
    accept_token_num: torch.Tensor,
    candidates: torch.Tensor,
    retrive_index: torch.Tensor,
    retrive_next_token: torch.Tensor,
    retrive_next_sibling: torch.Tensor,
    target_predict: torch.Tensor,
) -> None:
    """sgl-kernel's greedy tree walk: accept the first child equal to the position's
    ``target_predict``, then emit the target's choice at the last position."""
    B, P = candidates.shape
    _tree_layout_checks(
        "verify_tree_greedy",
        predicts,
        accept_index,
        accept_token_num,
        candidates,
        retrive_index,
        retrive_next_token,
        retrive_next_sibling,
    )
    arg = target_predict.reshape(B, P)
    for b in range(B):

        def first_step(slot, tok):
            predicts[slot] = tok

        cur, last, n = _walk(
            b,
            first_step,
            lambda pos, child, tok, b=b: tok == int(arg[b, pos]),
            accept_index,
            retrive_index,
            retrive_next_token,
            retrive_next_sibling,
            candidates,
            accept_index.shape[1],
        )
        accept_token_num[b] = n
        predicts[last] = int(arg[b, cur])


def sglang_modules() -> dict[str, types.ModuleType]:
    mod = types.ModuleType("sgl_kernel")
    mod.tree_speculative_sampling_target_only = tree_speculative_sampling_target_only
    mod.verify_tree_greedy = verify_tree_greedy
    _spec(mod)
    return {"sgl_kernel": mod}


def _spec(*modules: types.ModuleType) -> None:
    for m in modules:  # importlib.util.find_spec reads it for modules already in sys.modules
        m.__spec__ = importlib.machinery.ModuleSpec(m.__name__, None)


@contextlib.contextmanager
def installed(peer: str) -> Iterator[None]:
    """Inject the stand-in ``peer`` into ``sys.modules`` and the plugin's ``src`` into
    ``sys.path`` for the ``with`` block; both are restored afterwards."""
    builders = {
        "flashinfer": flashinfer_modules,
        "vllm": vllm_modules,
        "sglang": sglang_modules,
    }
    mods = builders[peer]()
    saved = {name: sys.modules.get(name) for name in mods}
    src = str(PLUGIN_SRC[peer])
    sys.modules.update(mods)
    added = src not in sys.path
    if added:
        sys.path.insert(0, src)
    try:
        yield
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
        if added:
            sys.path.remove(src)
