"""The ``cuda-cpp`` backend: CPU-checkable facts everywhere, the kernel itself where a GPU is."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import specsample
import torch
from specsample.backends import _cuda_build
from specsample.backends.cuda_cpp import CudaCppBackend
from specsample.workloads import make_workload

HAS_CUDA = torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------
# CPU: sources, schema, availability, Philox
# ------------------------------------------------------------------------------------------------
def _kernel_text() -> str:
    d = _cuda_build.csrc_dir()
    return "\n".join((d / name).read_text() for name in _cuda_build.kernel_sources())


def test_sources_ship_with_the_package():
    d = _cuda_build.csrc_dir()
    names = (*_cuda_build.kernel_sources(), *_cuda_build.TORCH_SOURCES, *_cuda_build.HOST_HEADERS)
    for name in names:
        assert (d / name).is_file(), f"{name} missing from {d}"
    assert len(_cuda_build.kernel_sources()) >= 6  # the entry header and its parts
    assert len(_cuda_build.sources_hash(*names)) == 64


def test_every_binding_file_is_built_and_hashed():
    """A .cu file or a torch_*.cuh header added to csrc/ must be in the build's source list (or
    its op never registers) and in the hash that names the library (or edits to it are not
    rebuilt)."""
    d = _cuda_build.csrc_dir()
    assert {p.name for p in d.glob("*.cu")} == set(_cuda_build.TORCH_SOURCES)
    assert {p.name for p in d.glob("torch_*.cuh")} | {"launch_config.h"} == set(
        _cuda_build.HOST_HEADERS
    )
    # exactly one file defines the library, the others add to it
    defs = [
        n for n in _cuda_build.TORCH_SOURCES if "TORCH_LIBRARY(specsample" in (d / n).read_text()
    ]
    assert defs == [_cuda_build.TORCH_SOURCE]


def test_extension_name_covers_every_source_and_the_flags(monkeypatch, tmp_path):
    """A built library is loaded by name without a ninja run, so its name must change with any
    file it is built from (every translation unit and host header included) and with the nvcc
    flags."""
    base = _cuda_build.extension_name(9, 0)
    assert base.startswith("specsample_verify_sm90_") and base == _cuda_build.extension_name(9, 0)
    assert _cuda_build.extension_name(8, 0) != base
    monkeypatch.setattr(_cuda_build, "CUDA_CFLAGS", ("-O2", "-lineinfo"))
    assert _cuda_build.extension_name(9, 0) != base
    monkeypatch.undo()
    monkeypatch.setattr(_cuda_build, "torch_version", lambda: "2.99.0")
    assert _cuda_build.extension_name(9, 0) != base
    monkeypatch.undo()
    for name in (*_cuda_build.HOST_HEADERS, *_cuda_build.TORCH_SOURCES, "kernel_block.cuh"):
        copy = tmp_path / name
        copy.write_bytes((_cuda_build.csrc_dir() / name).read_bytes() + b"// changed\n")
        real = _cuda_build.source_path
        monkeypatch.setattr(
            _cuda_build, "source_path", lambda n, c=copy, r=real: c if n == c.name else r(n)
        )
        assert _cuda_build.extension_name(9, 0) != base, name
        monkeypatch.undo()


def test_the_extension_leaves_the_cxx_standard_to_torch():
    """torch.utils.cpp_extension adds the standard torch was built with only when the caller gives
    none; a pinned older one compiles torch's headers differently from its libraries, or not at all
    (recent torch headers refuse C++17)."""
    import inspect

    source = inspect.getsource(_cuda_build.build_extension)
    assert "std=" not in source
    assert not any(flag.startswith(("-std", "--std")) for flag in _cuda_build.CUDA_CFLAGS)


def test_a_library_that_cannot_load_is_rebuilt_not_loaded(tmp_path):
    """A damaged library (a link cut short) makes _load_built answer False, so the build runs."""
    broken = tmp_path / "specsample_verify_sm90_000000000000.so"
    broken.write_bytes(b"not an ELF file")
    assert _cuda_build._load_built(str(broken)) is False


def test_kernel_headers_include_only_each_other():
    # NVRTC (the cupy backend) compiles them with no system headers on its include path
    parts = set(_cuda_build.kernel_sources())
    for name in parts:
        text = (_cuda_build.csrc_dir() / name).read_text()
        for included in re.findall(r"^\s*#\s*include\s*(\S+)", text, flags=re.M):
            assert included.strip('"') in parts, f"{name} includes {included}"
        assert "curand_kernel" not in text


def _cpp_string_literal_after(text: str, marker: str) -> str:
    start = text.index(marker) + len(marker)
    end = text.index(");", start)
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', text[start:end]))


def test_op_schema_matches_the_binding():
    text = (_cuda_build.csrc_dir() / _cuda_build.TORCH_SOURCE).read_text()
    assert _cpp_string_literal_after(text, "m.def(") == _cuda_build.OP_SCHEMA
    assert 'm.impl("verify"' in text
    schema = torch._C.parse_schema("specsample::" + _cuda_build.OP_SCHEMA)
    names = [a.name for a in schema.arguments]
    assert names[:6] == [
        "draft_token_ids",
        "draft_probs",
        "target_probs",
        "uniforms",
        "generator",
        "greedy",
    ]
    assert len(schema.returns) == 3  # token_ids, num_emitted, status


def test_split_choice():
    # greedy only, and only while every row of the call together is small (a few us of DRAM)
    assert _cuda_build.choose_split(1, 4, 128256, True, 132) == 132 // 5
    assert _cuda_build.choose_split(1, 8, 32000, True, 132) == 132 // 9
    assert _cuda_build.choose_split(1, 8, 128256, True, 132) == 0
    assert _cuda_build.choose_split(1, 4, 128256, False, 132) == 0
    assert _cuda_build.choose_split(64, 8, 32000, True, 132) == 0
    assert _cuda_build.choose_split(1, 100, 1000, True, 132) == 1  # more rows than SMs
    # the C++ launcher decides the same way over a whole grid: tests/test_launch_config.py


def test_load_path_choice():
    # the 16-byte load path needs whole vectors per row and every streamed base on 16 bytes
    assert _cuda_build.rows_aligned(128256, 4, 4096, 8192, False)
    assert _cuda_build.rows_aligned(32000, 2, 4096, 0, False)  # no draft probabilities
    assert not _cuda_build.rows_aligned(32003, 4, 4096, 8192, False)  # V * 4 not a multiple of 16
    assert not _cuda_build.rows_aligned(1004, 2, 4096, 8192, False)  # V * 2 not a multiple of 16
    assert not _cuda_build.rows_aligned(128256, 4, 4100, 8192, True)  # q off 16 bytes
    assert not _cuda_build.rows_aligned(128256, 4, 4096, 8196, False)  # p off 16 bytes: random
    assert _cuda_build.rows_aligned(128256, 4, 4096, 8196, True)  # greedy never reads p
    # the C++ launcher decides the same way over a whole grid: tests/test_launch_config.py


def test_limits_agree_with_the_kernel():
    text = _kernel_text()
    assert f"constexpr int kMaxK = {_cuda_build.MAX_K};" in text
    assert f"constexpr int kMaxStepRows = {_cuda_build.MAX_STEP_ROWS};" in text
    assert CudaCppBackend.capabilities.max_k == _cuda_build.MAX_K >= 32


def test_capabilities():
    caps = CudaCppBackend.capabilities
    assert caps.devices == ("cuda",) and caps.needs_gpu and caps.fused
    assert caps.launches_per_call == 1 and caps.cuda_graphs
    assert set(caps.dtypes) == {"float32", "float16", "bfloat16"}
    assert set(caps.modes) == {"random", "greedy"}


def test_unavailable_reason_without_gpu():
    ok, reason = CudaCppBackend.is_available()
    if torch.version.cuda is None:
        assert not ok and reason == "torch built without CUDA"
    elif not HAS_CUDA:
        assert not ok and reason == "no CUDA device"
    info = {i.name: i for i in specsample.list_backends()}["cuda-cpp"]
    assert info.available == ok and info.reason == ("" if ok else reason)


def test_nvcc_missing_is_reported(monkeypatch):
    monkeypatch.setattr(_cuda_build, "torch_cuda_reason", lambda: "")
    monkeypatch.setattr(_cuda_build, "find_nvcc", lambda: None)
    ok, reason = CudaCppBackend.is_available()
    assert not ok and reason.startswith("nvcc not found")


def test_availability_builds_nothing(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("is_available must not build")

    monkeypatch.setattr(_cuda_build, "build_extension", boom)
    CudaCppBackend.is_available()


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU message")
def test_build_command_without_gpu():
    out = subprocess.run(
        [sys.executable, "-m", "specsample", "build"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1
    assert "cuda-cpp: cannot build here:" in out.stdout


KAT = [  # Random123 tests/kat_vectors, philox4x32 10: counter, key, expected
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (
        (0xFFFFFFFF,) * 4,
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_python_philox_known_answers(counter, key, expected):
    assert _cuda_build.philox4x32_10(counter, key) == expected


def test_philox_stream_layout():
    # accept draws (i < K) and the final draw (i = K) are distinct positions of one subsequence
    u = _cuda_build.philox_uniforms(seed=5, offset=0, batch_size=3, num_draft=6)
    assert u.shape == (3, 7) and u.dtype == torch.float32
    assert ((u >= 0) & (u < 1)).all()
    assert len(set(u.flatten().tolist())) == u.numel()
    # offsets count 32-bit numbers: skipping 4 = one Philox block
    v = _cuda_build.philox_uniforms(seed=5, offset=4, batch_size=3, num_draft=2)
    assert torch.equal(v, u[:, 4:7])
    assert [_cuda_build.philox_increment(k) for k in (0, 3, 4, 7, 8)] == [4, 4, 8, 8, 12]


def test_auto_config_is_sane():
    for B in (1, 8, 64, 256, 4096):
        for greedy in (False, True):
            cl, nt, rows = _cuda_build.choose_config(B, 8, 128256, greedy, 132, True)
            assert cl in _cuda_build.CLUSTER_SIZES and nt % 32 == 0 and 1 <= rows <= 16
            assert _cuda_build.choose_config(B, 8, 128256, greedy, 132, False)[0] == 1
            # multi-row greedy steps only where the kernel streams rows together (clusters of 4+)
            assert rows == 1 or (greedy and cl >= 4)
        assert _cuda_build.choose_config(B, 8, 128256, True, 132, False)[2] == 1
    assert _cuda_build.choose_config(1, 8, 128256, False, 132, True)[0] == 16


# ------------------------------------------------------------------------------------------------
# GPU: the kernel
# ------------------------------------------------------------------------------------------------
def _ref(w, mode, u):
    out = specsample.reference_verify(
        w.draft_token_ids, w.draft_probs, w.target_probs, mode=mode, uniforms=u
    )
    return out.token_ids.cpu(), out.num_emitted.cpu()


CASES = [
    (1, 8, 128256, torch.float32, "low", True),
    (3, 0, 1000, torch.float32, "high", True),
    (5, 16, 997, torch.float16, "high", True),
    (64, 4, 32000, torch.bfloat16, "low", True),
    (8, 1, 32003, torch.float32, "low", False),
    (2, 32, 513, torch.float32, "high", True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("B,K,V,dtype,acc,with_p", CASES)
def test_matches_reference_with_uniforms(B, K, V, dtype, acc, with_p):
    backend = specsample.get_backend("cuda-cpp")
    w = make_workload(
        B, K, V, dtype=dtype, device="cuda", acceptance=acc, with_draft_probs=with_p, seed=B + K
    )
    u = torch.rand((B, K + 1), device="cuda", generator=torch.Generator("cuda").manual_seed(V))
    for mode in ("random", "greedy"):
        out = backend.verify(
            w.draft_token_ids, w.draft_probs, w.target_probs, mode=mode, uniforms=u
        )
        want = _ref(w, mode, u)
        assert torch.equal(out.token_ids.cpu(), want[0]), mode
        assert torch.equal(out.num_emitted.cpu(), want[1]), mode


@pytest.mark.gpu
@pytest.mark.parametrize("B,K,V,dtype,acc,with_p", CASES[:4])
def test_in_kernel_philox_matches_python_stream(B, K, V, dtype, acc, with_p):
    backend = specsample.get_backend("cuda-cpp")
    w = make_workload(
        B, K, V, dtype=dtype, device="cuda", acceptance=acc, with_draft_probs=with_p, seed=3
    )
    g = torch.Generator("cuda").manual_seed(2024)
    seed, offset = g.initial_seed(), g.get_offset()
    out = backend.verify(w.draft_token_ids, w.draft_probs, w.target_probs, generator=g)
    assert g.get_offset() - offset == _cuda_build.philox_increment(K)
    want = _ref(w, "random", _cuda_build.philox_uniforms(seed, offset, B, K).cuda())
    assert torch.equal(out.token_ids.cpu(), want[0])


@pytest.mark.gpu
@pytest.mark.parametrize("cluster", [1, 2, 4, 8, 16])
def test_every_cluster_size(cluster):
    from specsample.backends.cuda_cpp import verify_op

    if cluster > 1 and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("thread-block clusters need sm_90")
    w = make_workload(6, 8, 4099, device="cuda", acceptance="low", seed=cluster)
    u = torch.rand((6, 9), device="cuda")
    for threads in (128, 512):
        got = verify_op(
            w.draft_token_ids,
            w.draft_probs,
            w.target_probs,
            uniforms=u,
            cluster=cluster,
            threads=threads,
        )
        assert torch.equal(got[0].cpu(), _ref(w, "random", u)[0])
        for rows in (1, 9):
            got = verify_op(
                w.draft_token_ids,
                w.draft_probs,
                w.target_probs,
                mode="greedy",
                cluster=cluster,
                threads=threads,
                rows_per_step=rows,
            )
            assert torch.equal(got[0].cpu(), _ref(w, "greedy", None)[0])


@pytest.mark.gpu
@pytest.mark.parametrize(
    "B,K,V,dtype", [(1, 4, 32000, torch.float32), (3, 12, 4099, torch.bfloat16)]
)
def test_greedy_split_kernel(B, K, V, dtype):
    from specsample.backends.cuda_cpp import verify_op

    for drafter in (True, False):
        w = make_workload(B, K, V, dtype=dtype, device="cuda", seed=K, greedy_drafter=drafter)
        want = _ref(w, "greedy", None)
        assert _cuda_build.choose_split(B, K, V, True, 132, w.target_probs.element_size()) > 0
        for split in (-1, 0, 1, 5, 300):
            for _ in range(2):  # back to back: the per-request counters are reset by the kernel
                tok, num, _ = verify_op(
                    w.draft_token_ids.to(torch.int32),
                    None,
                    w.target_probs,
                    mode="greedy",
                    split=split,
                )
                assert torch.equal(tok.cpu(), want[0]) and torch.equal(num.cpu(), want[1]), split
        # on another stream (its own workspace), and captured into a graph (the cluster kernel)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            tok, _, _ = verify_op(w.draft_token_ids, None, w.target_probs, mode="greedy")
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=s):
                gtok, gnum, _ = verify_op(w.draft_token_ids, None, w.target_probs, mode="greedy")
        torch.cuda.current_stream().wait_stream(s)
        assert torch.equal(tok.cpu(), want[0])
        for _ in range(2):
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(gtok.cpu(), want[0]) and torch.equal(gnum.cpu(), want[1])


def _off_16_bytes(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t whose first element lies one element past a 16-byte boundary."""
    buf = torch.empty(t.numel() + 8, dtype=t.dtype, device=t.device)
    start = next(i for i in range(1, 8) if (buf.data_ptr() + i * t.element_size()) % 16)
    out = buf[start : start + t.numel()].view(t.shape)
    out.copy_(t)
    assert out.is_contiguous() and out.data_ptr() % 16
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("backend_name", ["cuda-cpp", "cupy"])
@pytest.mark.parametrize("B,K,V", [(1, 8, 128256), (6, 4, 4096), (40, 3, 1000)])
def test_rows_off_16_bytes_take_the_elementwise_path(backend_name, B, K, V):
    # V * 4 is a multiple of 16 here, so only the base pointers decide the load path: q or p off
    # 16 bytes must give the same tokens as aligned copies (random: either; greedy: only q counts)
    if backend_name == "cupy":
        pytest.importorskip("cupy")
    backend = specsample.get_backend(backend_name)
    w = make_workload(B, K, V, device="cuda", acceptance="low", seed=V + K)
    u = torch.rand((B, K + 1), device="cuda", generator=torch.Generator("cuda").manual_seed(B))
    want = {m: _ref(w, m, u if m == "random" else None) for m in ("random", "greedy")}
    layouts = {
        "q off": (w.draft_probs, _off_16_bytes(w.target_probs)),
        "p off": (_off_16_bytes(w.draft_probs), w.target_probs),
    }
    for name, (p, q) in layouts.items():
        for mode in ("random", "greedy"):
            out = backend.verify(
                w.draft_token_ids,
                p,
                q,
                mode=mode,
                uniforms=u if mode == "random" else None,
            )
            assert torch.equal(out.token_ids.cpu(), want[mode][0]), (name, mode)
            assert torch.equal(out.num_emitted.cpu(), want[mode][1]), (name, mode)


@pytest.mark.gpu
def test_cuda_graph_replays_draw_fresh_numbers():
    from specsample.backends.cuda_cpp import verify_op

    B, K, V = 4, 4, 32000
    w = make_workload(B, K, V, device="cuda", acceptance="low", seed=1)
    g = torch.cuda.default_generators[torch.cuda.current_device()]  # registered with every graph
    g.manual_seed(9)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        verify_op(w.draft_token_ids, w.draft_probs, w.target_probs)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tok, num, _ = verify_op(w.draft_token_ids, w.draft_probs, w.target_probs)
    seen = set()
    for _ in range(3):
        offset = g.get_offset()
        graph.replay()
        want = _ref(w, "random", _cuda_build.philox_uniforms(g.initial_seed(), offset, B, K).cuda())
        assert torch.equal(tok.cpu(), want[0])
        seen.add(tuple(tok.flatten().tolist()))
    assert len(seen) > 1


@pytest.mark.gpu
def test_one_launch_per_call():
    backend = specsample.get_backend("cuda-cpp")
    w = make_workload(2, 4, 1000, device="cuda", seed=0)
    backend.verify(w.draft_token_ids, w.draft_probs, w.target_probs)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        backend.verify(w.draft_token_ids, w.draft_probs, w.target_probs)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1


@pytest.mark.gpu
def test_torch_compile_fullgraph():
    from specsample.backends.cuda_cpp import load_op

    op = load_op()
    w = make_workload(3, 4, 1000, device="cuda", seed=2)
    u = torch.rand((3, 5), device="cuda")
    f = torch.compile(lambda a, b, c, d: op(a, b, c, d, None, False, 0, 0, 0), fullgraph=True)
    tok, num, status = f(w.draft_token_ids, w.draft_probs, w.target_probs, u)
    assert torch.equal(tok.cpu(), _ref(w, "random", u)[0])


def test_build_clears_a_stale_torch_lock(tmp_path, capsys):
    """A build killed mid-way leaves torch's ``lock`` file; the next build must not wait on it."""
    (tmp_path / "lock").write_text("")
    with _cuda_build._exclusive_build(str(tmp_path)):
        assert not (tmp_path / "lock").exists()
    assert "interrupted build" in capsys.readouterr().err


def test_build_waits_for_a_live_build(tmp_path):
    """A second build in the same directory waits for the first (its lock is not stale)."""
    fcntl = pytest.importorskip("fcntl")
    import subprocess
    import sys
    import time

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"h = open({str(tmp_path / 'specsample-build.lock')!r}, 'a+')\n"
            "fcntl.flock(h, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1.5)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    (tmp_path / "lock").write_text("")  # the live build's own torch lock
    start = time.monotonic()
    with _cuda_build._exclusive_build(str(tmp_path)):
        waited = time.monotonic() - start
    holder.wait()
    assert waited > 0.5, f"entered after {waited:.2f} s while another build held the lock"
    assert fcntl  # the test is meaningful only where the OS lock exists


def test_build_without_file_locks_leaves_torch_lock_alone(tmp_path, monkeypatch):
    """A file system without flock (some network mounts): the build goes on under torch's own
    lock, and a ``lock`` file, which may belong to a live build, is left alone."""
    fcntl = pytest.importorskip("fcntl")
    import errno

    def no_locks(*_args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    (tmp_path / "lock").write_text("")
    with _cuda_build._exclusive_build(str(tmp_path)):
        assert (tmp_path / "lock").exists()
