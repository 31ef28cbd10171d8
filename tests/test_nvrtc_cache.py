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
        return b"CUBIN:" + code.encode(), {n: f"_Z{len(n)}{n}" for n in name_expressions}

    compiler = types.SimpleNamespace(
        get_cache_dir=lambda: str(tmp_path), compile_using_nvrtc=compile_using_nvrtc
    )
    function = types.SimpleNamespace(Module=Module)
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
    assert fake_cupy.loaded == [b"CUBIN:k", b"CUBIN:k"]
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
    assert len(fake_cupy.calls) == 2 and fake_cupy.loaded[-1] == b"CUBIN:k"
    entry.write_bytes(b"garbage")
    _nvrtc.compile_module("k", [], ["f<1>"], 0)
    assert len(fake_cupy.calls) == 3
