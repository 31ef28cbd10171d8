"""The specsample-vllm plugin against a CPU stand-in of vLLM's v1 rejection sampler
(tests/peer_standins.py): the flattened layout, the bonus row, the RNG mapping, the unavailable
reason, and conformance through the adapter."""

from __future__ import annotations

import dataclasses
import importlib.util
import types

import pytest
import torch
from peer_standins import CALLS, PLUGIN_SRC, installed
from specsample.hookspecs import hookimpl

# A few seconds on two CPU cores; `specsample conform --backend vllm` runs them all on a GPU.
CHECKS_RUN = (
    "contract.output-shapes",
    "contract.padding",
    "contract.inputs-unmodified",
    "greedy.exact",
    "stats.acceptance",
    "stats.losslessness",
    "repro.same-state",
)


def cpu_backend_class():
    from specsample_vllm.backend import VllmBackend

    class CpuVllm(VllmBackend):
        capabilities = dataclasses.replace(
            VllmBackend.capabilities, devices=("cpu",), needs_gpu=False
        )

    return CpuVllm


def register(registry, cls, monkeypatch) -> None:
    """Reset the registry and add a plugin registering ``cls`` before it loads."""
    plugin = types.ModuleType("vllm_standin_plugin")
    plugin.register_backends = hookimpl(lambda register: register(cls))
    monkeypatch.setenv("SPECSAMPLE_PLUGINS", "")  # installed plugins (a real adapter) stay out
    registry.reset()
    registry._registry.manager.register(plugin, name="vllm-standin")


def _workload(B=8, K=3, V=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(B, K, V, generator=g) * 2, -1)
    q = torch.softmax(torch.randn(B, K + 1, V, generator=g) * 2, -1)
    ids = torch.multinomial(p.reshape(-1, V), 1, generator=g).reshape(B, K)
    return ids, p, q


def test_unavailable_with_the_reason_when_vllm_is_missing(fresh_registry, monkeypatch):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    monkeypatch.syspath_prepend(str(PLUGIN_SRC["vllm"]))
    import specsample_vllm

    monkeypatch.setenv("SPECSAMPLE_PLUGINS", "")  # only this module, by hand
    fresh_registry.reset()
    fresh_registry._registry.manager.register(specsample_vllm, name="vllm")
    info = {i.name: i for i in fresh_registry.list_backends()}["vllm"]
    assert not info.available and "vllm not installed" in info.reason


def test_flattened_layout_and_bonus_row():
    with installed("vllm"):
        backend = cpu_backend_class()()
        ids, p, q = _workload()
        q_before = q.clone()
        for draft in (p, None):
            CALLS.clear()
            out = backend.verify(ids, draft, q, generator=torch.Generator().manual_seed(2))
            call = CALLS[-1]
            assert call["ids_dtype"] == torch.int32
            assert call["target_shape"] == (8 * 3, 16)  # K rows per request, no bonus row
            assert call["num_draft_tokens"] == [3] * 8
            assert call["cu"].tolist() == [3 * (b + 1) for b in range(8)]
            assert call["cu"].dtype == torch.int32
            assert torch.equal(out.num_emitted, (out.token_ids != -1).sum(1))
        # the n-gram path writes into vLLM's target rows: the adapter hands it a copy
        assert torch.equal(q, q_before)


def test_generator_mapping():
    with installed("vllm"):
        backend = cpu_backend_class()()
        ids, p, q = _workload(B=4)
        gen = torch.Generator().manual_seed(7)
        backend.verify(ids, p, q, generator=gen)
        assert set(CALLS[-1]["generators"]) == {0, 1, 2, 3}
        assert all(g is gen for g in CALLS[-1]["generators"].values())
        backend.verify(ids, p, q)  # the default generator: vLLM's unseeded path
        assert CALLS[-1]["generators"] == {}
        with pytest.raises(ValueError, match="uniforms"):
            backend.verify(ids, p, q, uniforms=torch.rand(4, 4))


def test_a_changed_signature_is_named(monkeypatch):
    with installed("vllm"):
        import sys

        leaf = sys.modules["vllm.v1.sample.rejection_sampler"]
        monkeypatch.setattr(leaf, "rejection_sample", lambda draft_token_ids, metadata: None)
        ids, p, q = _workload(B=2)
        with pytest.raises(TypeError, match="rejection_sample has parameters"):
            cpu_backend_class()().verify(ids, p, q)


def test_conformance_runs_through_the_adapter(fresh_registry, monkeypatch):
    from specsample.conformance.checks import run_check

    with installed("vllm"):
        register(fresh_registry, cpu_backend_class(), monkeypatch)
        res = {n: run_check("vllm", n, "fast") for n in (*CHECKS_RUN, "exact.random")}
    for name in CHECKS_RUN:
        assert res[name].outcome == "pass", (name, res[name].details)
    assert res["exact.random"].outcome == "not-claimed"
