"""The specsample-flashinfer plugin against a CPU stand-in of FlashInfer (tests/peer_standins.py):
the adapter's layout conversions, its unavailable reason, and conformance through the adapter."""

from __future__ import annotations

import dataclasses
import importlib.util
import types

import pytest
import torch
from peer_standins import CALLS, PLUGIN_SRC, installed
from specsample.hookspecs import hookimpl

# A few seconds on two CPU cores; `specsample conform --backend flashinfer` runs them all on a GPU.
CHAIN_CHECKS_RUN = (
    "contract.output-shapes",
    "contract.padding",
    "contract.inputs-unmodified",
    "stats.acceptance",
    "stats.losslessness",
    "repro.same-state",
    "badinput.values",
)


def cpu_backend_class(use_accepted_counter: bool = False):
    """The adapter with ``devices=("cpu",)`` so it runs on the stand-in here; the mutant variant
    reads FlashInfer's accepted counter instead of the emitted one (the fault it must avoid)."""
    from specsample.contract import VerifyOutput
    from specsample_flashinfer.backend import FlashInferBackend

    class CpuFlashInfer(FlashInferBackend):
        capabilities = dataclasses.replace(
            FlashInferBackend.capabilities, devices=("cpu",), needs_gpu=False, cuda_graphs=False
        )

        def _verify(self, inputs):
            out = super()._verify(inputs)
            if not use_accepted_counter:
                return out
            n = CALLS[-1]["accepted"].to(torch.int64).clamp_max(inputs.num_draft) + 1
            return VerifyOutput(out.token_ids, n)

    return CpuFlashInfer


def register(registry, cls, monkeypatch) -> None:
    """Reset the registry and add a plugin registering ``cls`` before it loads."""
    plugin = types.ModuleType("flashinfer_standin_plugin")
    plugin.register_backends = hookimpl(lambda register: register(cls))
    monkeypatch.setenv("SPECSAMPLE_PLUGINS", "")  # installed plugins (a real adapter) stay out
    registry.reset()
    registry._registry.manager.register(plugin, name="flashinfer-standin")


def _workload(B=64, K=4, V=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(B, K, V, generator=g) * 2, -1).to(dtype)
    q = torch.softmax(torch.randn(B, K + 1, V, generator=g) * 2, -1).to(dtype)
    ids = torch.multinomial(p.float().reshape(-1, V), 1, generator=g).reshape(B, K)
    return ids, p, q


def test_unavailable_with_the_reason_when_flashinfer_is_missing(fresh_registry, monkeypatch):
    if importlib.util.find_spec("flashinfer") is not None:
        pytest.skip("flashinfer is installed here")
    monkeypatch.syspath_prepend(str(PLUGIN_SRC["flashinfer"]))
    import specsample_flashinfer

    monkeypatch.setenv("SPECSAMPLE_PLUGINS", "")  # only this module, by hand
    fresh_registry.reset()
    fresh_registry._registry.manager.register(specsample_flashinfer, name="flashinfer")
    info = {i.name: i for i in fresh_registry.list_backends()}["flashinfer"]
    assert not info.available
    assert "flashinfer not installed" in info.reason and "docs/peers.md" in info.reason


def test_layout_int32_ids_k_plus_1_rows_fresh_int32_counters():
    with installed("flashinfer"):
        backend = cpu_backend_class()()
        ids, p, q = _workload(B=8)
        for draft, id_dtype in ((p, torch.int64), (None, torch.int32)):
            CALLS.clear()
            out = backend.verify(ids.to(id_dtype), draft, q, generator=torch.Generator())
            call = CALLS[-1]
            assert call["ids_dtype"] == torch.int32
            assert call["target_shape"] == (8, 5, 16) and call["draft_shape"] == (8, 4, 16)
            assert call["counter_dtypes"] == (torch.int32, torch.int32)
            assert call["counters_zero"]
            assert out.token_ids.dtype == torch.int64 and out.num_emitted.dtype == torch.int64
            assert torch.equal(out.num_emitted, call["emitted"].long() + 1)


def test_emitted_count_not_the_inflated_accepted_counter():
    with installed("flashinfer"):
        backend = cpu_backend_class()()
        ids, p, q = _workload(B=256, seed=3)
        CALLS.clear()
        out = backend.verify(ids, p, q, generator=torch.Generator().manual_seed(1))
        accepted, emitted = CALLS[-1]["accepted"], CALLS[-1]["emitted"]
        assert bool((accepted > emitted).any()), "the stand-in must show the inflated counter"
        assert torch.equal(out.num_emitted, emitted.long() + 1)


def test_no_uniforms_generator_reproducible():
    with installed("flashinfer"):
        backend = cpu_backend_class()()
        ids, p, q = _workload(B=16)
        with pytest.raises(ValueError, match="uniforms"):
            backend.verify(ids, p, q, uniforms=torch.rand(16, 5))
        a = backend.verify(ids, p, q, generator=torch.Generator().manual_seed(5))
        b = backend.verify(ids, p, q, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a.token_ids, b.token_ids)
        assert CALLS[-1]["generator"] is not None and CALLS[-1]["seed"] is None


def test_a_changed_signature_is_named(monkeypatch):
    with installed("flashinfer"):
        import sys

        sampling = sys.modules["flashinfer.sampling"]
        monkeypatch.setattr(sampling, "chain_speculative_sampling", lambda probs, ids: None)
        ids, p, q = _workload(B=2)
        with pytest.raises(TypeError, match="chain_speculative_sampling has parameters"):
            cpu_backend_class()().verify(ids, p, q)


def test_capabilities_say_what_flashinfer_cannot_do():
    with installed("flashinfer"):
        from specsample_flashinfer.backend import FlashInferBackend

        caps = FlashInferBackend.capabilities
        assert caps.uniforms is False and caps.modes == ("random",) and caps.devices == ("cuda",)
        assert FlashInferBackend.peer == "FlashInfer"


def _conform(fresh_registry, cls, names, monkeypatch):
    from specsample.conformance.checks import run_check

    register(fresh_registry, cls, monkeypatch)
    return {n: run_check("flashinfer", n, "fast") for n in names}


def test_conformance_runs_through_the_adapter(fresh_registry, monkeypatch):
    """Chain checks at the fast level on the stand-in: the structural and statistical ones pass,
    the exact ones report "not claimed" (no uniforms), greedy is not claimed."""
    with installed("flashinfer"):
        names = (*CHAIN_CHECKS_RUN, "exact.random", "greedy.exact")
        res = _conform(fresh_registry, cpu_backend_class(), names, monkeypatch)
    for name in CHAIN_CHECKS_RUN:
        assert res[name].outcome == "pass", (name, res[name].details)
    assert res["exact.random"].outcome == "not-claimed"
    assert "uniforms" in res["exact.random"].details
    assert res["greedy.exact"].outcome == "not-claimed"


def test_conformance_catches_an_adapter_that_reads_the_accepted_counter(
    fresh_registry, monkeypatch
):
    with installed("flashinfer"):
        mutant = cpu_backend_class(use_accepted_counter=True)
        res = _conform(fresh_registry, mutant, ["stats.acceptance"], monkeypatch)
    assert res["stats.acceptance"].outcome == "fail", res["stats.acceptance"].details


def test_the_conform_command_runs_through_the_adapter(fresh_registry, tmp_path, monkeypatch):
    """`specsample conform --backend flashinfer -k ...` (its runner, in process) on the stand-in:
    the JSON lists the structural and statistical checks as passed, the exact ones not claimed."""
    from specsample.conformance.runner import run_conformance

    subset = ["-k", "contract.padding or stats.losslessness or exact.random"]
    with installed("flashinfer"):
        register(fresh_registry, cpu_backend_class(), monkeypatch)
        doc = run_conformance(["flashinfer"], "fast", str(tmp_path / "c.json"), subset, quiet=True)
    checks = doc["backends"]["flashinfer"]["checks"]
    assert checks["contract.padding"]["outcome"] == "pass"
    assert checks["stats.losslessness"]["outcome"] == "pass"
    assert checks["exact.random"]["outcome"] == "not-claimed"


def test_graph_capture_advances_an_offset_created_outside_the_capture(monkeypatch):
    """Under capture the adapter passes seed/offset tensors and advances the offset in the graph.
    The offset must exist before the capture: a tensor created (filled) during it would be reset
    by every replay, and every replay would repeat its tokens."""
    from specsample_flashinfer import backend as adapter

    with installed("flashinfer"):
        backend = cpu_backend_class()()
        ids, p, q = _workload(B=4)
        gen = torch.Generator().manual_seed(9)
        monkeypatch.setattr(adapter, "_capturing", lambda device: True)
        with pytest.raises(RuntimeError, match="outside CUDA-graph capture"):
            backend.verify(ids, p, q, generator=gen)
        monkeypatch.setattr(adapter, "_capturing", lambda device: False)
        backend.verify(ids, p, q, generator=gen)  # the eager warm-up creates the offset
        offset = backend._graph_offsets[torch.device("cpu")]
        assert int(offset) == adapter.GRAPH_OFFSET_START
        assert CALLS[-1]["seed"] is None and CALLS[-1]["generator"] is gen
        monkeypatch.setattr(adapter, "_capturing", lambda device: True)
        step = adapter.philox_increment(4, 4)
        for n in (1, 2):
            backend.verify(ids, p, q, generator=gen)
            assert CALLS[-1]["offset"] is offset, "a captured call must reuse the eager offset"
            assert int(offset) == adapter.GRAPH_OFFSET_START + n * step
            assert int(CALLS[-1]["seed"]) == gen.initial_seed()
