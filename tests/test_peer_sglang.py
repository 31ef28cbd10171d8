"""The specsample-sglang plugin against a CPU stand-in of sgl-kernel's tree kernels
(tests/peer_standins.py): the retrive_* layout, the coins per position, the outputs read back,
the unavailable reason, and the tree conformance checks through the adapter."""

from __future__ import annotations

import dataclasses
import importlib.util
import types

import pytest
import torch
from peer_standins import CALLS, PLUGIN_SRC, installed
from specsample.hookspecs import hookimpl
from specsample.reference_tree import reference_verify_tree


def cpu_backend_class():
    from specsample_sglang.backend import SglangBackend

    class CpuSglang(SglangBackend):
        capabilities = dataclasses.replace(
            SglangBackend.capabilities, devices=("cpu",), needs_gpu=False
        )

    return CpuSglang


def register(registry, cls, monkeypatch) -> None:
    """Reset the registry and add a plugin registering ``cls`` before it loads."""
    plugin = types.ModuleType("sglang_standin_plugin")
    plugin.register_backends = hookimpl(lambda register: register(cls))
    monkeypatch.setenv("SPECSAMPLE_PLUGINS", "")  # installed plugins (a real adapter) stay out
    registry.reset()
    registry._registry.manager.register(plugin, name="sglang-standin")


# node:    0   1   2   3   4        root -> 0, 1 ; 0 -> 2, 3 ; 1 -> 4
PARENTS = torch.tensor([[-1, -1, 0, 0, 1]])


def _tree(B=6, V=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    parents = PARENTS.expand(B, -1).contiguous()
    q = torch.softmax(torch.randn(B, 6, V, generator=g) * 2, -1)
    # distinct sibling tokens (the target-only rule needs them)
    ids = torch.stack([torch.randperm(V, generator=g)[:5] for _ in range(B)])
    return ids, parents, q


def test_unavailable_with_the_reason_when_sgl_kernel_is_missing(fresh_registry, monkeypatch):
    if importlib.util.find_spec("sgl_kernel") is not None:
        pytest.skip("sgl_kernel is installed here")
    monkeypatch.syspath_prepend(str(PLUGIN_SRC["sglang"]))
    import specsample_sglang

    monkeypatch.setenv("SPECSAMPLE_PLUGINS", "")  # only this module, by hand
    fresh_registry.reset()
    fresh_registry._registry.manager.register(specsample_sglang, name="sglang")
    info = {i.name: i for i in fresh_registry.list_backends()}["sglang"]
    assert not info.available and "sgl_kernel not installed" in info.reason


def test_retrive_layout_and_coins_per_position():
    with installed("sglang"):
        backend = cpu_backend_class()()
        ids, parents, q = _tree()
        u = torch.rand(6, 6, generator=torch.Generator().manual_seed(1))
        CALLS.clear()
        out = backend.verify_tree(ids, parents, None, q, uniforms=u)
        call = CALLS[-1]
        assert call["fn"] == "tree_speculative_sampling_target_only"
        # first child / next sibling over positions (position 0 = root, i+1 = node i)
        assert call["next_token"][0].tolist() == [1, 3, 5, -1, -1, -1]
        assert call["next_sibling"][0].tolist() == [-1, 2, -1, 4, -1, -1]
        assert torch.equal(call["candidates"][:, 1:], ids.to(torch.int32))
        assert call["steps"] == 5 + 1  # max_depth defaults to N
        # the coin of a position is the coin of its first child: root <- node 0, pos 1 <- node 2
        assert torch.equal(call["coins"][:, 0], u[:, 0]) and torch.equal(
            call["coins"][:, 1], u[:, 2]
        )
        assert torch.equal(call["coins"][:, 2], u[:, 4])
        assert bool((call["coins"][:, 3:] == 0).all())
        ref = reference_verify_tree(ids, parents, None, q, mode="random", uniforms=u)
        assert torch.equal(out.token_ids, ref.token_ids)
        assert torch.equal(out.accepted_nodes, ref.accepted_nodes)
        assert torch.equal(out.num_emitted, ref.num_emitted)


def test_greedy_tree_and_chain():
    with installed("sglang"):
        backend = cpu_backend_class()()
        ids, parents, q = _tree(seed=4)
        ids[:, 0] = q[:, 0].argmax(-1)  # accept node 0 at the root in every request
        out = backend.verify_tree(ids, parents, None, q, mode="greedy")
        ref = reference_verify_tree(ids, parents, None, q, mode="greedy")
        assert CALLS[-1]["fn"] == "verify_tree_greedy"
        assert torch.equal(out.token_ids, ref.token_ids) and bool((out.num_emitted >= 2).all())
        chain = backend.verify(ids[:, :3], None, q[:, :4], mode="greedy")
        assert chain.token_ids.shape == (6, 4)
        with pytest.raises(ValueError, match="mode"):
            backend.verify(ids[:, :3], None, q[:, :4])  # random chains are not claimed


def test_tree_conformance_through_the_adapter(fresh_registry, monkeypatch):
    """The exact tree checks run (the coins are coupled); the stand-in mirrors SGLang's
    coin-boundary fault, which tree.boundaries names."""
    from specsample.conformance.checks import run_check

    names = ("tree.chain", "tree.exact", "tree.bad-input", "tree.boundaries", "greedy.exact")
    with installed("sglang"):
        register(fresh_registry, cpu_backend_class(), monkeypatch)
        res = {n: run_check("sglang", n, "fast") for n in names}
    for name in ("tree.chain", "tree.exact", "greedy.exact"):
        assert res[name].outcome == "pass", (name, res[name].details)
    assert res["tree.boundaries"].outcome == "fail", res["tree.boundaries"].details
