"""claims.*: performance claims of the capabilities that can be verified cheaply."""

from __future__ import annotations

import torch

from .check_common import check_output, uniforms, workload
from .checks import CheckFailed, NotClaimed, Target, check


@check("claims.host-sync-free")
def host_sync_free(target: Target) -> str:
    """For backends claiming host_sync_free: the default call (values checked in the backend,
    reported in status) makes no host synchronization that torch can see
    (torch.cuda.set_sync_debug_mode("error"))."""
    if not target.capabilities.host_sync_free:
        raise NotClaimed("host_sync_free not claimed")
    target.require_cuda("detecting host synchronizations")
    B, K, V = 64, 4, 1000
    dev = target.device
    w = workload(target, B, K, V, seed=900, acceptance="medium")
    u = uniforms(B, K, 901, dev)
    gen = torch.Generator(device=dev).manual_seed(902)
    calls = []
    if "random" in target.capabilities.modes:
        calls += [
            ("random, generator", dict(generator=gen)),
            ("random, uniforms", dict(uniforms=u)),
            ("random, draft_probs=None", dict(generator=gen, draft=None)),
        ]
    if "greedy" in target.capabilities.modes:
        calls.append(("greedy", dict(mode="greedy")))

    def call(kw):
        kw = dict(kw)
        draft = kw.pop("draft", w.draft_probs)
        return target.verify(w.draft_token_ids, draft, w.target_probs, **kw)

    for _, kw in calls:  # warm-up: lazy initialization and compilation may synchronize
        call(kw)
    torch.cuda.synchronize(dev)
    outs = []
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for label, kw in calls:
            try:
                outs.append((label, call(kw)))
            except RuntimeError as e:
                if "synchroniz" not in str(e).lower():
                    raise
                raise CheckFailed(
                    f"host sync [{label}]: the backend claims host_sync_free but its default call "
                    f"synchronized the host: {e}"
                ) from e
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    for label, out in outs:
        check_output(out, w.draft_token_ids, V, dev, label)
    return f"{len(calls)} calls under sync debug mode 'error'"
