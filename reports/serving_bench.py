"""The ``serving`` benchmark: the whole serving step, from bf16 logits to tokens (docs/serving.md).

Each cell is a realistic mix (about 25 % greedy requests, draft counts drawn from ``0..8``,
temperature 0.6-1.0, top-p 0.9-0.95, bf16 target and draft logits, drafts drawn from the draft
logits so that about 70 % are accepted, per-request seeds) at one
``(B, V)``. Every backend claiming ``Capabilities.serving`` is timed through
``verify_serving_flat``, next to the ``baseline``: what an engine does today, softmax + top-k/top-p
filter in PyTorch, then a probabilities-in ``verify`` of the random requests and an argmax of the
greedy ones (:func:`baseline_step`). The floor is reading each owned logits row once (``T + B``
target rows and ``T`` draft rows, ``V`` bf16 values each) at the device's copy bandwidth.

Run: ``specsample bench --serving [serving|serving-tiny] --out serving.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from .presets import PRESETS
from .timing import Timer, TimingPolicy


@dataclass(frozen=True)
class ServingPreset:
    """A grid of serving cells plus a timing policy."""

    name: str
    batch: tuple[int, ...]
    vocab: tuple[int, ...]
    max_k: int = 8
    greedy_share: float = 0.25
    policy: TimingPolicy = field(default_factory=TimingPolicy)


SERVING_PRESETS = {
    "serving": ServingPreset(
        name="serving",
        batch=(1, 8, 64, 256),
        vocab=(128256, 151936),
        policy=replace(PRESETS["standard"].policy, budget_s=2.0),
    ),
    "serving-tiny": ServingPreset(
        name="serving-tiny",
        batch=(1, 4),
        vocab=(256,),
        max_k=3,
        policy=PRESETS["tiny"].policy,
    ),
}


#: standard deviation of the noise added to a target row's logits to make the draft's (the target's
#: logits have standard deviation 2): each draft is accepted with probability about 0.7, as a good
#: drafter's are
DRAFT_NOISE = 0.5


def serving_workload(
    batch: int, vocab: int, max_k: int, greedy_share: float, seed: int, device
) -> dict[str, Any]:
    """One realistic cell in the flattened layout: a dict of ``verify_serving_flat`` arguments
    (``draft_token_ids`` [T] int64, ``cu_num_draft_tokens`` [B] int64, bf16 ``target_logits``
    [T+B, V] and ``draft_logits`` [T, V], per-request parameters and seeds), on ``device``.

    The draft logits are the target logits of the same position plus Gaussian noise
    (:data:`DRAFT_NOISE`), and each draft token is drawn from its draft row as a drafter would: the
    argmax for greedy requests, a sample at the request's temperature (Gumbel-max) for the others.
    Acceptance is then realistic (neither every draft rejected, as with uniform ids, nor all
    accepted): ``tests/test_serving_bench.py`` pins its range.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_k + 1, (batch,), generator=g)
    cu = torch.cumsum(counts, 0)
    T = int(cu[-1])
    greedy = torch.randperm(batch, generator=g) < round(greedy_share * batch)  # the share, exactly
    temperature = torch.where(greedy, 0.0, 0.6 + 0.4 * torch.rand(batch, generator=g))
    top_p = 0.9 + 0.05 * torch.rand(batch, generator=g)
    target = torch.randn(T + batch, vocab, generator=g, dtype=torch.float32) * 2.0
    # Draft row j belongs to request owner[j]; in the flat layout request b's target rows start
    # b rows after its draft rows (each earlier request owns one bonus row more).
    owner = torch.repeat_interleave(torch.arange(batch), counts)
    draft = target[torch.arange(T) + owner] + DRAFT_NOISE * torch.randn(T, vocab, generator=g)
    draft = draft.to(torch.bfloat16).float()  # draw from the logits the call receives
    row_temperature = temperature[owner].clamp_min(1e-6).unsqueeze(1)
    gumbel = -torch.log(-torch.log(torch.rand(T, vocab, generator=g).clamp_min(1e-20)))
    sampled = (draft / row_temperature + gumbel).argmax(dim=1)
    ids = torch.where(greedy[owner], draft.argmax(dim=1), sampled)
    args = {
        "draft_token_ids": ids,
        "cu_num_draft_tokens": cu,
        "max_num_draft_tokens": max_k,
        "target_logits": target.to(torch.bfloat16),
        "draft_logits": draft.to(torch.bfloat16),
        "temperature": temperature,
        "top_p": top_p,
        "seeds": torch.arange(batch, dtype=torch.int64) + seed,
        "offsets": torch.zeros(batch, dtype=torch.int64),
    }
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}


def floor_bytes(args: dict) -> int:
    """Bytes a serving step must read at least: every owned logits row once (target and draft)."""
    total = args["target_logits"].numel() * args["target_logits"].element_size()
    return total + args["draft_logits"].numel() * args["draft_logits"].element_size()


def baseline_step(args: dict) -> torch.Tensor:
    """What an engine does today: softmax + top-p in PyTorch on every row (float32), then the
    probabilities-in serving verify of torch-vectorized (temperature 1, no filter; greedy requests
    by argmax). Returns the padded tokens ``[B, K+1]``."""
    import torch
    from specsample import get_backend
    from specsample.serving_layout import flat_to_padded

    cu, K = args["cu_num_draft_tokens"], args["max_num_draft_tokens"]
    temp = args["temperature"]
    T = args["draft_token_ids"].shape[0]
    B = cu.shape[0]
    starts = cu - (cu - torch.cat([cu.new_zeros(1), cu[:-1]]))
    row_req = torch.repeat_interleave(
        torch.arange(B, device=cu.device), (cu - starts) + 1, output_size=T + B
    )
    draft_req = torch.repeat_interleave(
        torch.arange(B, device=cu.device), cu - starts, output_size=T
    )

    def probs(logits, req):
        t = torch.where(temp[req] == 0, 1.0, temp[req]).unsqueeze(1)
        p = torch.softmax(logits.float() / t, dim=-1)
        s, idx = torch.sort(p, dim=-1, descending=True)
        keep = (torch.cumsum(s, -1) - s) < args["top_p"][req].unsqueeze(1)
        s = torch.where(keep, s, 0.0)
        return torch.zeros_like(p).scatter_(-1, idx, s / s.sum(-1, keepdim=True))

    q = flat_to_padded(probs(args["target_logits"], row_req), cu, K, bonus=True)
    p = flat_to_padded(probs(args["draft_logits"], draft_req), cu, K, bonus=False)
    ids = flat_to_padded(args["draft_token_ids"], cu, K, bonus=False)
    # The distributions are final: verify them as they are (temperature 1, no filter), greedy
    # requests by argmax.
    out = get_backend("torch-vectorized").verify_serving(
        ids, num_draft_tokens=cu - starts, target_probs=q, draft_probs=p,
        temperature=torch.where(temp == 0, 0.0, 1.0), seeds=args["seeds"], offsets=args["offsets"],
    )  # fmt: skip
    return out.token_ids


def _unusable(name: str) -> str | None:
    """Why backend ``name`` cannot time the serving step here (None: it can)."""
    from specsample import list_backends

    info = {i.name: i for i in list_backends()}[name]
    if not info.available:
        return f"unavailable: {info.reason}"
    if not (info.capabilities and info.capabilities.serving):
        return "serving not claimed"
    return None


def run(preset: ServingPreset, backends: list[str] | None, device: str) -> list[dict[str, Any]]:
    """Time every cell of ``preset``; one result dict per (cell, backend or ``baseline``):
    ``status`` ``"ok"`` with the timing, or ``"skipped"`` / ``"error"`` with a ``reason`` (a
    backend that is unavailable or claims no serving, a call that raised)."""
    import torch
    from specsample import get_backend, list_backends

    from .timing import copy_bandwidth

    names = backends or [
        i.name for i in list_backends() if i.available and i.capabilities and i.capabilities.serving
    ]
    skip = {name: _unusable(name) for name in names}
    timer = Timer(device, preset.policy)
    bandwidth = copy_bandwidth(torch.device(device))["bandwidth_Bps"]
    rows = []
    for vocab in preset.vocab:
        for batch in preset.batch:
            args = serving_workload(batch, vocab, preset.max_k, preset.greedy_share, 0, device)
            floor = floor_bytes(args)
            floor_s = floor / bandwidth if bandwidth else None
            cell = {
                "batch": batch, "vocab": vocab, "tokens": int(args["cu_num_draft_tokens"][-1]),
                "floor_bytes": floor, "floor_s": floor_s, "device": device,
            }  # fmt: skip
            calls = {"baseline": lambda i, args=args: baseline_step(args)}
            for name in names:
                if skip[name]:
                    continue
                be = get_backend(name)
                flat = dict(args)
                ids, cu = flat.pop("draft_token_ids"), flat.pop("cu_num_draft_tokens")
                calls[name] = lambda i, be=be, ids=ids, cu=cu, flat=flat: be.verify_serving_flat(
                    ids, cu, **flat
                )
            for name in ["baseline", *names]:
                row = {"backend": name, **cell, "median_s": None, "floor_ratio": None}
                if name != "baseline" and skip[name]:
                    rows.append({**row, "status": "skipped", "reason": skip[name]})
                    continue
                try:
                    m = timer.measure(calls[name])
                except Exception as e:  # noqa: BLE001 - one failing backend must not end the run
                    rows.append({**row, "status": "error", "reason": f"{type(e).__name__}: {e}"})
                    continue
                median = m.to_dict(keep_samples=False)["median"]
                rows.append({
                    **row, "status": "ok", "median_s": median,
                    "floor_ratio": median / floor_s if floor_s else None,
                })  # fmt: skip
    return rows


def serving_document(
    preset: ServingPreset, backends: list[str] | None, device: str
) -> dict[str, Any]:
    """:func:`run` as a results document: ``schema`` ``specsample.serving-bench/1``, ``preset``,
    ``device``, ``environment`` and ``cells`` (one per cell and backend or ``baseline``)."""
    from .environment import collect_environment

    return {
        "schema": "specsample.serving-bench/1",
        "preset": preset.name,
        "device": device,
        "environment": collect_environment(device),
        "cells": run(preset, backends, device),
    }


def serving_summary(doc: dict[str, Any]) -> str:
    """A terminal table of a serving results document."""
    from tabulate import tabulate

    def timing(c: dict[str, Any]) -> str:
        if c.get("median_s") is None:
            return f"{c.get('status', 'error')}: {c.get('reason', '')}"
        return f"{c['median_s'] * 1e6:.1f}"

    rows = [
        [c["backend"], c["batch"], c["vocab"], c["tokens"], timing(c),
         "-" if c["floor_ratio"] is None else f"{c['floor_ratio']:.1f}x"]
        for c in doc["cells"]
    ]  # fmt: skip
    head = ["backend", "B", "V", "T (drafts)", "median us", "x floor"]
    return f"serving benchmark ({doc['preset']}, {doc['device']})\n" + tabulate(rows, headers=head)
