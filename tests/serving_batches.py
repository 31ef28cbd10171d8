"""Inputs and checks shared by the serving kernels' tests (triton, CUDA, the CPU emulation)."""

from __future__ import annotations

import specsample
import torch


def mixed_serving_batch(
    B, K, V, *, seed, dtype=torch.float32, probs=False, draft="logits", device="cpu"
):
    """``(draft_token_ids [B, K], verify_serving keyword arguments)`` on ``device``: greedy and
    sampling requests, K_b from 0..K, temperatures from tiny to large, top-k and top-p on some
    requests, explicit uniforms; drafts mostly the target's argmax. Target (and draft) as logits,
    or probabilities with ``probs``; ``draft`` is ``"logits"``, ``"probs"`` or None (one-hot)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K + 1, V, generator=g) * 3
    draft_logits = logits[:, :K] + torch.randn(B, K, V, generator=g)
    ids = torch.where(
        torch.rand(B, K, generator=g) < 0.6,
        logits[:, :K].argmax(-1),
        torch.randint(0, V, (B, K), generator=g),
    )
    temps = torch.tensor([0.0, 1.0, 0.7, 0.05, 3.0, 0.0, 1.3])
    kwargs = {
        "num_draft_tokens": torch.randint(0, K + 1, (B,), generator=g),
        "temperature": temps[torch.randint(0, len(temps), (B,), generator=g)],
        "top_k": torch.tensor([0, 1, 3, 0, V // 2])[torch.randint(0, 5, (B,), generator=g)],
        "top_p": torch.tensor([1.0, 0.9, 0.5, 1e-6, 0.99])[torch.randint(0, 5, (B,), generator=g)],
        "uniforms": torch.rand(B, K + 1, generator=g),
    }
    if probs:
        kwargs["target_probs"] = torch.softmax(logits, -1).to(dtype)
    else:
        kwargs["target_logits"] = logits.to(dtype)
    if draft == "logits":
        kwargs["draft_logits"] = draft_logits.to(dtype)
    elif draft == "probs":
        kwargs["draft_probs"] = torch.softmax(draft_logits, -1).to(dtype)
    ids = ids.to(device)
    return ids, {k: v.to(device) for k, v in kwargs.items()}


def check_one_launch_and_graph_replay(
    name: str, kernel_name: str | tuple[str, ...], temperature: float | None = None
) -> None:
    """GPU: one launch of each kernel named in ``kernel_name`` (a name, or several) per
    ``verify_serving`` call of backend ``name`` (bf16 logits; seeds, or a generator); under
    CUDA-graph capture, seeded calls repeat their tokens on every replay and generator calls draw
    fresh coins. ``temperature``: one for every request (default: the mixed batch's, greedy
    requests included)."""
    from torch.profiler import ProfilerActivity, profile

    be = specsample.get_backend(name)
    ids, kwargs = mixed_serving_batch(64, 4, 32000, seed=1, dtype=torch.bfloat16, device="cuda")
    del kwargs["uniforms"]
    if temperature is not None:
        kwargs["temperature"] = torch.full((64,), temperature, device="cuda")
    zeros = torch.zeros(64, dtype=torch.int64, device="cuda")  # no host copy under capture
    seeded = dict(kwargs, seeds=torch.arange(64, device="cuda"), offsets=zeros)
    for _ in range(2):
        be.verify_serving(ids, **seeded)
        be.verify_serving(ids, **kwargs)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            be.verify_serving(ids, **seeded)
            be.verify_serving(ids, **kwargs)
        torch.cuda.synchronize()
    ops = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    # (the argument checks of verify_serving may add small elementwise kernels of their own)
    for kernel in (kernel_name,) if isinstance(kernel_name, str) else kernel_name:
        kernels = [e for e in ops if kernel in e.name]
        assert len(kernels) == 10, (kernel, sorted({e.name for e in ops}))

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        be.verify_serving(ids, **seeded)
        be.verify_serving(ids, **kwargs)
    torch.cuda.current_stream().wait_stream(s)
    for args, fresh in ((seeded, False), (kwargs, True)):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = be.verify_serving(ids, **args)
        draws = []
        for _ in range(3):
            graph.replay()
            draws.append(out.token_ids.clone())
        torch.cuda.synchronize()
        distinct = len({tuple(d.flatten().tolist()) for d in draws})
        assert distinct == (3 if fresh else 1)
