"""repro.*: randomness comes from the generator: same state -> same output, new state -> new
output, and (for backends claiming ``cuda_graphs``) a captured call replays with fresh randomness."""

from __future__ import annotations

import torch

from .check_common import check_output, compare_to_reference, uniforms, workload
from .checks import CheckFailed, NotClaimed, Target, check

B, K, V = 128, 4, 64


def _w(target: Target):
    return workload(target, B, K, V, acceptance="medium", seed=500)


def _same(a, b) -> bool:
    return torch.equal(a.token_ids.cpu(), b.token_ids.cpu()) and torch.equal(
        a.num_emitted.cpu(), b.num_emitted.cpu()
    )


@check("repro.same-state")
def same_state(target: Target) -> str:
    """The same generator state gives the same output (a fresh generator with the same seed, a
    restored state, and the device's default generator after manual_seed)."""
    target.require_mode("random")
    w = _w(target)
    args = (w.draft_token_ids, w.draft_probs, w.target_probs)
    dev = target.device
    g1 = torch.Generator(device=dev).manual_seed(7)
    g2 = torch.Generator(device=dev).manual_seed(7)
    a = target.verify(*args, generator=g1)
    b = target.verify(*args, generator=g2)
    check_output(a, w.draft_token_ids, V, dev, "seed 7")
    if not _same(a, b):
        raise CheckFailed("same generator state: two generators seeded 7 gave different outputs")
    state = g1.get_state()
    c = target.verify(*args, generator=g1)
    g1.set_state(state)
    d = target.verify(*args, generator=g1)
    if not _same(c, d):
        raise CheckFailed(
            "same generator state: restoring a generator's state did not repeat the output"
        )
    # The default generator (generator=None).
    default = (
        torch.cuda.default_generators[dev.index or 0]
        if dev.type == "cuda"
        else torch.default_generator
    )
    saved = default.get_state()
    try:
        default.manual_seed(11)
        e = target.verify(*args)
        default.manual_seed(11)
        f = target.verify(*args)
    finally:
        default.set_state(saved)
    if not _same(e, f):
        raise CheckFailed(
            "same generator state: with generator=None the default generator's state must decide "
            "the output, but the same seed gave different outputs"
        )
    return f"B={B}, K={K}, V={V} on {dev}: explicit, restored and default generators"


@check("repro.fresh-randomness")
def fresh_randomness(target: Target) -> str:
    """Different seeds give different outputs, and consecutive calls on one generator differ (the
    generator advances)."""
    target.require_mode("random")
    w = _w(target)
    args = (w.draft_token_ids, w.draft_probs, w.target_probs)
    dev = target.device
    a = target.verify(*args, generator=torch.Generator(device=dev).manual_seed(1))
    b = target.verify(*args, generator=torch.Generator(device=dev).manual_seed(2))
    if _same(a, b):
        raise CheckFailed(
            f"different seeds: seeds 1 and 2 gave identical outputs for all {B} requests"
        )
    g = torch.Generator(device=dev).manual_seed(3)
    before = g.get_state()
    c = target.verify(*args, generator=g)
    d = target.verify(*args, generator=g)
    if _same(c, d):
        raise CheckFailed(
            "generator not advanced: two consecutive calls on one generator gave identical outputs "
            f"for all {B} requests (a call must consume the generator's randomness)"
        )
    if torch.equal(before, g.get_state()):
        raise CheckFailed("generator not advanced: the generator's state is unchanged after a call")
    return f"B={B}: seeds differ, consecutive calls differ"


@check("repro.cuda-graph")
def cuda_graph(target: Target) -> str:
    """For backends claiming cuda_graphs: a call captured in a CUDA graph replays correctly (with
    uniforms copied into the captured inputs it equals the reference each replay) and, drawing from
    the default CUDA generator, gives fresh randomness on every replay."""
    if not target.capabilities.cuda_graphs:
        raise NotClaimed("cuda_graphs not claimed")
    target.require_cuda("CUDA graph capture")
    target.require_mode("random")
    dev = target.device
    w = _w(target)
    ids, draft, tgt = w.draft_token_ids, w.draft_probs, w.target_probs
    u_static = uniforms(B, K, 1, dev)
    # A backend that draws its own random numbers (Capabilities.uniforms False) is checked on the
    # replays without uniforms only.
    with_u = getattr(target.capabilities, "uniforms", True)
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):  # warm-up outside the capture (lazy init, compilation)
        for _ in range(2):
            if with_u:
                target.verify(ids, draft, tgt, uniforms=u_static)
            target.verify(ids, draft, tgt)
    torch.cuda.current_stream(dev).wait_stream(side)
    torch.cuda.synchronize(dev)
    g_u = torch.cuda.CUDAGraph()
    if with_u:
        with torch.cuda.graph(g_u):
            out_u = target.verify(ids, draft, tgt, uniforms=u_static)
    g_r = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g_r):
        out_r = target.verify(ids, draft, tgt)
    for i in range(3 if with_u else 0):
        u_static.copy_(uniforms(B, K, 40 + i, dev))
        g_u.replay()
        torch.cuda.synchronize(dev)
        compare_to_reference(
            target,
            ids,
            draft,
            tgt,
            u=u_static.clone(),
            label=f"graph replay {i} with uniforms",
            out=type(out_u)(out_u.token_ids.clone(), out_u.num_emitted.clone()),
        )
    seen = []
    for i in range(3):
        g_r.replay()
        torch.cuda.synchronize(dev)
        check_output(out_r, ids, V, dev, f"graph replay {i}")
        seen.append(out_r.token_ids.clone())
    if torch.equal(seen[0], seen[1]) or torch.equal(seen[1], seen[2]):
        raise CheckFailed(
            "CUDA graph replay: consecutive replays gave identical outputs for all "
            f"{B} requests; each replay must draw fresh random numbers from the default generator"
        )
    if not with_u:
        return f"3 replays differ (B={B}); uniforms not claimed, so no replay with uniforms"
    return f"3 replays with uniforms equal the reference; 3 replays without differ (B={B})"
