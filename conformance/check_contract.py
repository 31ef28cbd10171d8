"""contract.*: the structure of every output (shapes, dtypes, device, padding, ranges, prefix)
and that inputs are never modified, over a standard set of calls made once per backend."""

from __future__ import annotations

from typing import Any

import torch

from .check_common import check_output, snapshot, uniforms, where, workload
from .checks import CheckFailed, Target, check

B, K, V = 48, 4, 50


def _calls(target: Target) -> list[dict[str, Any]]:
    """The standard calls (each claimed mode, with and without draft_probs, uniforms, int32 ids),
    made once per backend and shared by the contract checks."""
    if "contract" in target.cache:
        return target.cache["contract"]
    w = workload(target, B, K, V, acceptance="medium", seed=11)
    ids32 = w.draft_token_ids.to(torch.int32)
    u = uniforms(B, K, 12, target.device)
    specs = []
    if "random" in target.capabilities.modes:
        specs += [
            ("random, draft_probs, generator", w.draft_token_ids, w.draft_probs, None, "random"),
            ("random, draft_probs, uniforms", w.draft_token_ids, w.draft_probs, u, "random"),
            ("random, draft_probs=None, generator", w.draft_token_ids, None, None, "random"),
            ("random, int32 ids", ids32, w.draft_probs, None, "random"),
        ]
    if "greedy" in target.capabilities.modes:
        specs += [
            ("greedy, draft_probs", w.draft_token_ids, w.draft_probs, None, "greedy"),
            ("greedy, draft_probs=None", ids32, None, None, "greedy"),
        ]
    calls = []
    for label, ids, draft, uu, mode in specs:
        gen = None
        if mode == "random" and uu is None:
            gen = torch.Generator(device=target.device).manual_seed(13)
        tgt = w.target_probs
        before = snapshot(ids, draft, tgt, uu)
        out = target.verify(ids, draft, tgt, mode=mode, generator=gen, uniforms=uu)
        calls.append(
            {
                "label": label,
                "out": out,
                "ids": ids,
                "inputs": [ids, draft, tgt, uu],
                "before": before,
            }
        )
    target.cache["contract"] = calls
    return calls


def _each(target: Target, fn) -> str:
    calls = _calls(target)
    for c in calls:
        fn(c)
    return f"{len(calls)} calls, B={B}, K={K}, V={V}"


@check("contract.output-shapes")
def output_shapes(target: Target) -> str:
    """token_ids is [B, K+1] int64 and num_emitted is [B] int64."""

    def one(c):
        out, label = c["out"], c["label"]
        tok, n = getattr(out, "token_ids", None), getattr(out, "num_emitted", None)
        if not isinstance(tok, torch.Tensor) or not isinstance(n, torch.Tensor):
            raise CheckFailed(f"output type {where(label)}: got {type(out).__name__}")
        if tuple(tok.shape) != (B, K + 1) or tuple(n.shape) != (B,):
            raise CheckFailed(
                f"output shape {where(label)}: token_ids {tuple(tok.shape)} (expected "
                f"{(B, K + 1)}), num_emitted {tuple(n.shape)} (expected {(B,)})"
            )
        if tok.dtype != torch.int64 or n.dtype != torch.int64:
            raise CheckFailed(
                f"output dtype {where(label)}: token_ids {tok.dtype}, num_emitted {n.dtype}; "
                "both must be torch.int64"
            )

    return _each(target, one)


@check("contract.output-device")
def output_device(target: Target) -> str:
    """Outputs are on the inputs' device."""

    def one(c):
        out = c["out"]
        for name in ("token_ids", "num_emitted"):
            t = getattr(out, name)
            if t.device.type != target.device.type:
                raise CheckFailed(
                    f"output device {where(c['label'])}: {name} is on {t.device}, the inputs on "
                    f"{target.device}"
                )

    return _each(target, one) + f", on {target.device}"


@check("contract.padding")
def padding(target: Target) -> str:
    """Every position from num_emitted on is -1; every emitted token is in [0, V)."""

    def one(c):
        check_output(c["out"], c["ids"], V, target.device, c["label"])

    return _each(target, one)


@check("contract.num-emitted")
def num_emitted(target: Target) -> str:
    """1 <= num_emitted <= K+1."""

    def one(c):
        n = c["out"].num_emitted.cpu()
        bad = torch.nonzero((n < 1) | (n > K + 1)).flatten()
        if bad.numel():
            b = int(bad[0])
            raise CheckFailed(
                f"num_emitted range {where(c['label'], b)}: num_emitted={int(n[b])}, must be in "
                f"1..K+1=1..{K + 1}"
            )

    return _each(target, one)


@check("contract.accepted-prefix")
def accepted_prefix(target: Target) -> str:
    """The first num_emitted-1 tokens are the drafts, unchanged."""

    def one(c):
        tok, n = c["out"].token_ids.cpu(), c["out"].num_emitted.cpu()
        ids = c["ids"].cpu().to(torch.int64)
        for b in range(B):
            m = int(n[b]) - 1
            if not torch.equal(tok[b, :m], ids[b, :m]):
                raise CheckFailed(
                    f"accepted prefix {where(c['label'], b)}: the first num_emitted-1={m} tokens "
                    f"{tok[b, :m].tolist()} must equal the drafts {ids[b, :m].tolist()}"
                )

    return _each(target, one)


@check("contract.inputs-unmodified")
def inputs_unmodified(target: Target) -> str:
    """No input tensor (ids, draft_probs, target_probs, uniforms) is modified."""
    names = ["draft_token_ids", "draft_probs", "target_probs", "uniforms"]

    def one(c):
        for name, b, a in zip(names, c["before"], c["inputs"], strict=True):
            if b is not None and not torch.equal(a, b):
                raise CheckFailed(
                    f"input modified {where(c['label'])}: verify() changed {name} in place"
                )

    return _each(target, one)


@check("contract.empty-batch")
def empty_batch(target: Target) -> str:
    """B = 0 gives token_ids [0, K+1] and num_emitted [0], int64."""
    w = workload(target, 2, K, V, seed=3)
    ids, draft, tgt = w.draft_token_ids[:0], w.draft_probs[:0], w.target_probs[:0]
    for mode in target.capabilities.modes:
        out = target.verify(ids, draft, tgt, mode=mode)
        check_output(out, ids, V, target.device, f"B=0, {mode}")
    return "B=0 in every claimed mode"
