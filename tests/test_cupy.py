"""The ``cupy`` backend: CPU-checkable facts everywhere, the kernel itself where CuPy and a GPU are."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import specsample
import torch
from specsample.backends import _cuda_build, cupy_backend
from specsample.backends.cupy_backend import CupyBackend
from specsample.workloads import make_workload

HAS_CUPY = importlib.util.find_spec("cupy") is not None
HAS_CUDA = torch.cuda.is_available()


def test_reason_when_cupy_missing(monkeypatch):
    real = importlib.util.find_spec

    def fake(name, *a, **k):
        return None if name == "cupy" else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    ok, reason = CupyBackend.is_available()
    assert not ok and reason.startswith("cupy not installed")


def test_availability_imports_no_cupy():
    had = "cupy" in sys.modules
    CupyBackend.is_available()
    specsample.list_backends()
    assert had or "cupy" not in sys.modules


def test_reason_without_gpu():
    ok, reason = CupyBackend.is_available()
    if not HAS_CUPY:
        assert reason.startswith("cupy not installed")
    elif torch.version.cuda is None:
        assert reason == "torch built without CUDA"
    elif not HAS_CUDA:
        assert reason == "no CUDA device"
    else:
        assert ok


def test_same_kernel_source_as_cuda_cpp():
    # NVRTC compiles the very header the torch extension includes
    torch_src = (_cuda_build.csrc_dir() / "torch_common.cuh").read_text()
    assert f'#include "{_cuda_build.KERNEL_HEADER}"' in torch_src
    assert cupy_backend._KERNEL_TYPES == {
        "float32": "float",
        "float16": "specsample::f16",
        "bfloat16": "specsample::bf16",
    }
    header = (_cuda_build.csrc_dir() / _cuda_build.KERNEL_HEADER).read_text()
    assert "verify_kernel(SPECSAMPLE_KERNEL_PARAMS)" in header
    assert "verify_cluster_kernel(SPECSAMPLE_KERNEL_PARAMS)" in header


def test_capabilities_match_cuda_cpp():
    from specsample.backends.cuda_cpp import CudaCppBackend

    assert CupyBackend.capabilities == CudaCppBackend.capabilities


# ------------------------------------------------------------------------------------------------
# GPU
# ------------------------------------------------------------------------------------------------
def _ref(w, mode, u):
    out = specsample.reference_verify(
        w.draft_token_ids, w.draft_probs, w.target_probs, mode=mode, uniforms=u
    )
    return out.token_ids.cpu(), out.num_emitted.cpu()


@pytest.mark.gpu(needs=("cupy",))
@pytest.mark.parametrize(
    "B,K,V,dtype,with_p",
    [
        (1, 8, 128256, torch.float32, True),
        (5, 16, 997, torch.float16, True),
        (64, 4, 32000, torch.bfloat16, False),
        (3, 0, 100, torch.float32, True),
    ],
)
def test_matches_reference(B, K, V, dtype, with_p):
    backend = specsample.get_backend("cupy")
    w = make_workload(
        B, K, V, dtype=dtype, device="cuda", acceptance="low", with_draft_probs=with_p, seed=K
    )
    u = torch.rand((B, K + 1), device="cuda")
    for mode in ("random", "greedy"):
        out = backend.verify(
            w.draft_token_ids, w.draft_probs, w.target_probs, mode=mode, uniforms=u
        )
        want = _ref(w, mode, u)
        assert torch.equal(out.token_ids.cpu(), want[0]), mode
        assert torch.equal(out.num_emitted.cpu(), want[1]), mode


@pytest.mark.gpu(needs=("cupy",))
def test_same_generator_state_same_tokens_as_cuda_cpp():
    ok, reason = specsample.get_backend("cuda-cpp").is_available()
    if not ok:
        pytest.skip(reason)
    w = make_workload(16, 8, 32000, device="cuda", acceptance="low", seed=4)
    outs = []
    for name in ("cuda-cpp", "cupy"):
        g = torch.Generator("cuda").manual_seed(31)
        outs.append(
            specsample.get_backend(name).verify(
                w.draft_token_ids, w.draft_probs, w.target_probs, generator=g
            )
        )
        assert g.get_offset() == _cuda_build.philox_increment(8)
    assert torch.equal(outs[0].token_ids, outs[1].token_ids)


@pytest.mark.gpu(needs=("cupy",))
def test_philox_stream_and_cupy_arrays_entry_point():
    import cupy

    B, K, V = 4, 6, 5003
    w = make_workload(B, K, V, device="cuda", acceptance="low", seed=8)
    tok, num, status = cupy_backend.verify_cupy(
        cupy.from_dlpack(w.draft_token_ids),
        cupy.from_dlpack(w.draft_probs),
        cupy.from_dlpack(w.target_probs),
        seed=77,
        offset=12,
    )
    cupy.cuda.get_current_stream().synchronize()
    want = _ref(w, "random", _cuda_build.philox_uniforms(77, 12, B, K).cuda())
    assert torch.equal(torch.from_dlpack(tok).cpu(), want[0])
    assert torch.equal(torch.from_dlpack(num).cpu(), want[1])
    assert torch.from_dlpack(status).cpu().tolist() == [0] * B


@pytest.mark.gpu(needs=("cupy",))
def test_greedy_split_kernel_and_capture_query():
    B, K, V = 1, 8, 32000
    w = make_workload(B, K, V, device="cuda", seed=6, greedy_drafter=True)
    want = _ref(w, "greedy", None)
    assert _cuda_build.choose_split(B, K, V, True, 132) > 0
    for split in (-1, 0, 3):
        for _ in range(2):
            tok, num, _ = cupy_backend.verify_torch(
                w.draft_token_ids, None, w.target_probs, mode="greedy", split=split
            )
            assert torch.equal(tok.cpu(), want[0]) and torch.equal(num.cpu(), want[1]), split
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        assert not cupy_backend._stream_is_capturing(s.cuda_stream)
        cupy_backend.verify_torch(w.draft_token_ids, None, w.target_probs, mode="greedy")
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=s):
            assert cupy_backend._stream_is_capturing(s.cuda_stream)
            gtok, _, _ = cupy_backend.verify_torch(
                w.draft_token_ids, None, w.target_probs, mode="greedy"
            )
    torch.cuda.current_stream().wait_stream(s)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(gtok.cpu(), want[0])


@pytest.mark.gpu(needs=("cupy",))
def test_cuda_graph_capture():
    B, K, V = 4, 4, 32000
    w = make_workload(B, K, V, device="cuda", acceptance="low", seed=1)
    g = torch.Generator("cuda").manual_seed(5)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        cupy_backend.verify_torch(w.draft_token_ids, w.draft_probs, w.target_probs, generator=g)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    # a user generator must be registered with the graph (the default one always is)
    if not hasattr(graph, "register_generator_state"):
        pytest.skip("this torch cannot register a user generator with a graph")
    graph.register_generator_state(g)
    with torch.cuda.graph(graph):
        tok, num, _ = cupy_backend.verify_torch(
            w.draft_token_ids, w.draft_probs, w.target_probs, generator=g
        )
    seen = set()
    for _ in range(4):
        graph.replay()
        torch.cuda.synchronize()
        assert ((num >= 1) & (num <= K + 1)).all()
        seen.add(tuple(tok.flatten().tolist()))
    assert len(seen) > 1
