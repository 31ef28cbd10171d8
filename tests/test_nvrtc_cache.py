"""The cupy backend's NVRTC compile path keeps float32 subnormals and caches its binaries
(CuPy replaced by a recorder, so this runs without a GPU)."""

from __future__ import annotations

import sys
import types

import pytest
from specsample.backends import _nvrtc


@pytest.fixture
def fake_cupy(monkeypatch, tmp_path):
    calls: list[tuple] = []
    loaded: list[bytes] = []

    class Device:
        def __init__(self, device_id):
            self.compute_capability = "90"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class Module:
        def load(self, image):
            loaded.append(image)

    def compile_using_nvrtc(code, options=(), name_expressions=None, **kw):
        calls.append(tuple(options))
        return b"\x7fELF" + code.encode(), {n: f"_Z{len(n)}{n}" for n in name_expressions}

    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path))
    # No get_cache_dir: CuPy 14 has none (the cache folder comes from CUPY_CACHE_DIR or the default).
    compiler = types.SimpleNamespace(compile_using_nvrtc=compile_using_nvrtc)

    class LinkState:
        def add_ptr_data(self, data, name):
            self.data = data

        def complete(self):
            return b"\x7fELF-linked:" + self.data

    function = types.SimpleNamespace(Module=Module, LinkState=LinkState)
    nvrtc = types.SimpleNamespace(getVersion=lambda: (13, 0))
    cuda = types.SimpleNamespace(Device=Device, nvrtc=nvrtc, compiler=compiler, function=function)
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.compiler", compiler)
    monkeypatch.setitem(sys.modules, "cupy.cuda.function", function)
    return types.SimpleNamespace(calls=calls, loaded=loaded, dir=tmp_path)


def test_subnormals_are_kept_whatever_the_caller_passed(fake_cupy):
    _nvrtc.compile_module("k", ["-std=c++17", "-ftz=true"], ["f<1>"], 0)
    (opts,) = fake_cupy.calls
    # NVRTC honours the last occurrence of an option: -ftz=false must come after any -ftz=true.
    assert opts[-3:] == ("-ftz=false", "-prec-div=true", "-prec-sqrt=true")
    assert max(i for i, o in enumerate(opts) if o.startswith("-ftz")) == len(opts) - 3


def test_second_compile_is_read_from_the_cache(fake_cupy):
    mod1, low1 = _nvrtc.compile_module("k", ["-DA=1"], ["f<1>", "g<2>"], 0)
    mod2, low2 = _nvrtc.compile_module("k", ["-DA=1"], ["f<1>", "g<2>"], 0)
    assert len(fake_cupy.calls) == 1
    assert low1 == low2 == {"f<1>": "_Z4f<1>", "g<2>": "_Z4g<2>"}
    assert fake_cupy.loaded == [b"\x7fELFk", b"\x7fELFk"]
    # Another source, option or name list is another entry.
    _nvrtc.compile_module("k", ["-DA=2"], ["f<1>", "g<2>"], 0)
    _nvrtc.compile_module("k2", ["-DA=1"], ["f<1>", "g<2>"], 0)
    assert len(fake_cupy.calls) == 3


def test_a_damaged_cache_entry_is_compiled_again(fake_cupy):
    _nvrtc.compile_module("k", [], ["f<1>"], 0)
    (entry,) = fake_cupy.dir.glob("specsample-*.bin")
    data = entry.read_bytes()
    entry.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one flipped bit in the image
    _nvrtc.compile_module("k", [], ["f<1>"], 0)
    assert len(fake_cupy.calls) == 2 and fake_cupy.loaded[-1] == b"\x7fELFk"
    entry.write_bytes(b"garbage")
    _nvrtc.compile_module("k", [], ["f<1>"], 0)
    assert len(fake_cupy.calls) == 3


def test_ptx_is_linked_to_a_cubin_before_it_is_cached(fake_cupy, monkeypatch):
    compiler = sys.modules["cupy.cuda.compiler"]
    monkeypatch.setattr(
        compiler,
        "compile_using_nvrtc",
        lambda code, opts, name_expressions: (b"//ptx", {"f": "_f"}),
    )
    _nvrtc.compile_module("k", [], ["f"], 0)
    _nvrtc.compile_module("k", [], ["f"], 0)  # from the cache: the linked image
    assert fake_cupy.loaded == [b"\x7fELF-linked://ptx"] * 2


def test_a_process_waiting_on_the_compile_lock_reads_the_cache_instead_of_compiling(
    fake_cupy, monkeypatch
):
    # Simulate the other process: it holds the lock and publishes the entry while we wait.
    real_lock = _nvrtc._compile_lock

    def lock_then_find_published(path):
        image = b"\x7fELF-from-another-process"
        _nvrtc._write(path, image, {"f<1>": "_Z_other"})
        return real_lock(path)

    monkeypatch.setattr(_nvrtc, "_compile_lock", lock_then_find_published)
    module, lowered = _nvrtc.compile_module("k", [], ["f<1>"], 0)
    assert fake_cupy.calls == []  # no compile of our own
    assert lowered == {"f<1>": "_Z_other"}
    assert fake_cupy.loaded == [b"\x7fELF-from-another-process"]


def test_the_compile_lock_is_exclusive_across_processes(tmp_path):
    import multiprocessing
    import time

    path = tmp_path / "specsample-x.bin"
    with _nvrtc._compile_lock(path):
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(target=_hold_lock_and_mark, args=(str(path), str(tmp_path / "mark")))
        child.start()
        time.sleep(1.0)
        assert not (tmp_path / "mark").exists()  # the child is still waiting for our lock
    child.join(30)
    assert child.exitcode == 0 and (tmp_path / "mark").exists()


def _hold_lock_and_mark(path: str, mark: str) -> None:
    from pathlib import Path

    with _nvrtc._compile_lock(Path(path)):
        Path(mark).write_text("done")
