"""Extra memory per call (docs/memory.md): the documented bound holds on the CPU, and a call whose
temporaries do not fit on a CUDA device is refused before allocating."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from specsample.backends import _memory

# One call in a fresh process; prints the growth of the peak resident set size over the call.
_MEASURE = textwrap.dedent(
    """
    import sys, torch, specsample
    name, mode, B, K, V, dtype = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), sys.argv[6]
    rule = sys.argv[7]
    dtype = getattr(torch, dtype)
    torch.set_num_threads(1)
    backend = specsample.get_backend(name)
    small = (torch.zeros((2, 2), dtype=torch.int64), torch.full((2, 2, 8), 0.1, dtype=dtype),
             torch.full((2, 3, 8), 0.1, dtype=dtype))
    for m in ("random", "greedy"):
        backend.verify(*small, mode=m, uniforms=torch.rand(2, 3), rule=rule)
    q = torch.rand((B, K + 1, V), dtype=dtype)
    p = torch.rand((B, K, V), dtype=dtype)
    ids = torch.randint(0, V, (B, K))
    u = torch.rand((B, K + 1)) if mode == "random" else None
    def status_kb(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    # Reset the peak (VmHWM) to the current RSS, so that earlier peaks (imports, the inputs'
    # generation) cannot hide the call's own (Linux >= 4.0: "5" > clear_refs).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kb("VmRSS")
    backend.verify(ids, p, q, mode=mode, uniforms=u, rule=rule)
    print(status_kb("VmHWM") - before)
    """
)


def _extra_peak(
    name: str, mode: str, B: int, K: int, V: int, dtype: str, rule: str = "token"
) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, name, mode, str(B), str(K), str(V), dtype, rule],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the RSS")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_vectorized_random_stays_within_the_documented_bound(dtype):
    B, K, V = 64, 3, 60_000
    bound = _memory.vectorized_extra_bytes(
        B, K, V, "random", element_size=4 if dtype == "float32" else 2
    )
    extra = _extra_peak("torch-vectorized", "random", B, K, V, dtype)
    assert extra <= bound, f"extra peak {extra / 1e6:.0f} MB > documented {bound / 1e6:.0f} MB"
    # The bound is tight: the [B, V] temporaries are really there (no O(B*K*V) copy, no slack x2).
    assert extra >= bound // 2, f"extra peak {extra / 1e6:.0f} MB, bound {bound / 1e6:.0f} MB"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the RSS")
def test_torch_vectorized_greedy_needs_no_row_sized_temporaries():
    B, K, V = 64, 3, 60_000
    extra = _extra_peak("torch-vectorized", "greedy", B, K, V, "float32")
    input_bytes = B * (2 * K + 1) * V * 4
    assert extra <= _memory.vectorized_extra_bytes(B, K, V, "greedy") + input_bytes // 50


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the RSS")
@pytest.mark.parametrize(("K", "dtype"), [(1, "bfloat16"), (4, "float32")])
def test_torch_vectorized_block_stays_within_the_documented_bound(K, dtype):
    """rule="block": float64 draft rows 1..K-1 for the residual masses, a float64 final row."""
    B, V = 32, 60_000
    bound = _memory.vectorized_extra_bytes(
        B, K, V, "random", element_size=4 if dtype == "float32" else 2, rule="block"
    )
    extra = _extra_peak("torch-vectorized", "random", B, K, V, dtype, rule="block")
    assert extra <= bound, f"extra peak {extra / 1e6:.0f} MB > documented {bound / 1e6:.0f} MB"
    assert extra >= bound // 2, f"extra peak {extra / 1e6:.0f} MB, bound {bound / 1e6:.0f} MB"
    # more than the token rule's bound: the pre-check must not use that one for block calls
    assert extra > _memory.vectorized_extra_bytes(B, K, V, "random")


def test_the_block_formula():
    B, K, V = 8, 4, 1000
    block = _memory.vectorized_extra_bytes(B, K, V, "random", rule="block")
    assert block == 32 * B * (K - 1) * V + 48 * B * V + 64 * B * (K + 1)
    # greedy mode and K = 0 run the token rule's algorithm
    for mode, k in (("greedy", K), ("random", 0)):
        assert _memory.vectorized_extra_bytes(B, k, V, mode, rule="block") == (
            _memory.vectorized_extra_bytes(B, k, V, mode)
        )
    with pytest.raises(ValueError, match="rule must be 'token' or 'block', got 'traversal'"):
        _memory.vectorized_extra_bytes(B, K, V, "random", rule="traversal")


def test_the_formula():
    random = _memory.vectorized_extra_bytes(8, 4, 1000, "random")
    assert random == 28 * 8 * 1000 + 64 * 8 * 5
    assert _memory.vectorized_extra_bytes(8, 4, 1000, "greedy") == 64 * 8 * 5
    assert _memory.vectorized_extra_bytes(8, 4, 1000, "greedy", copied_input_bytes=10) == 2570
    with pytest.raises(ValueError, match="mode"):
        _memory.vectorized_extra_bytes(1, 1, 1, "sample")
    with pytest.raises(ValueError, match="element_size"):
        _memory.vectorized_extra_bytes(1, 1, 1, "random", element_size=8)


def test_check_fits_does_nothing_off_cuda():
    _memory.check_fits(torch.device("cpu"), 10**18, "anything")
    assert _memory.available_bytes(torch.device("cpu")) is None


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA device with 1 GiB free and 256 MiB cached by torch's allocator, 64 MiB of it in use."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 256 * 2**20)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 64 * 2**20)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    return torch.device("cuda", 0)


def test_check_fits_refuses_what_does_not_fit(fake_cuda):
    free = 2**30 + 192 * 2**20
    assert _memory.available_bytes(fake_cuda) == free
    _memory.check_fits(fake_cuda, free, "fits exactly")
    with pytest.raises(_memory.NotEnoughMemory) as info:
        _memory.check_fits(fake_cuda, free + 1, "torch-vectorized random B=4096, K=8, V=128256")
    message = str(info.value)
    assert "torch-vectorized random B=4096, K=8, V=128256" in message
    assert "1.19 GiB is free" in message and "cuda:0" in message
    assert isinstance(info.value, MemoryError)


def test_check_fits_skips_under_graph_capture(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    _memory.check_fits(fake_cuda, 10**18, "captured")


def test_the_vectorized_backends_check_large_cuda_calls(monkeypatch):
    """torch-vectorized and torch-compile ask check_fits before a large CUDA call, not a small one."""
    import types

    from specsample.backends import _memory

    seen = []
    monkeypatch.setattr(_memory, "check_fits", lambda device, needed, what: seen.append(what))
    big = types.SimpleNamespace(
        device=torch.device("cuda", 0),
        batch_size=256,
        num_draft=8,
        vocab_size=128256,
        mode="random",
        rule="token",
        target_probs=torch.empty(0),
    )
    _memory.check_vectorized_call(big, "torch-vectorized")
    small = types.SimpleNamespace(**{**vars(big), "batch_size": 1})
    _memory.check_vectorized_call(small, "torch-vectorized")
    cpu = types.SimpleNamespace(**{**vars(big), "device": torch.device("cpu")})
    _memory.check_vectorized_call(cpu, "torch-vectorized")
    assert seen == ["torch-vectorized random B=256, K=8, V=128256"]


def test_a_block_call_that_does_not_fit_is_refused_before_allocating(fake_cuda, monkeypatch):
    """rule="block" is checked against its own, larger, footprint: a call the token rule's bound
    lets through is refused, with the rule named in the message, before any allocation."""
    import types

    B, K, V = 256, 8, 128256
    token = _memory.vectorized_extra_bytes(B, K, V, "random")
    block = _memory.vectorized_extra_bytes(B, K, V, "random", rule="block")
    free = (token + block) // 2
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    call = types.SimpleNamespace(
        device=fake_cuda,
        batch_size=B,
        num_draft=K,
        vocab_size=V,
        mode="random",
        rule="token",
        target_probs=torch.empty(0),
    )
    _memory.check_vectorized_call(call, "torch-vectorized")  # the token rule fits
    with pytest.raises(_memory.NotEnoughMemory) as info:
        _memory.check_vectorized_call(
            types.SimpleNamespace(**{**vars(call), "rule": "block"}), "torch-vectorized"
        )
    message = str(info.value)
    assert "torch-vectorized random rule=block B=256, K=8, V=128256" in message
    assert f"needs about {block / 2**30:.2f} GiB" in message
