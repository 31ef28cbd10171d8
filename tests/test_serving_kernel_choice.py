"""Which serving kernel ``cupy`` launches (the ``cuda-cpp`` op reads the same variable in C++):
the split kernel unless ``SPECSAMPLE_SERVING_SPLIT=0``, read at every call. No GPU needed."""

from __future__ import annotations

import pytest
from specsample.backends import _cupy_serving


@pytest.mark.parametrize(
    ("value", "split"), [(None, True), ("0", False), ("1", True), ("", True), ("00", True)]
)
def test_split_unless_zero(monkeypatch, value, split):
    if value is None:
        monkeypatch.delenv("SPECSAMPLE_SERVING_SPLIT", raising=False)
    else:
        monkeypatch.setenv("SPECSAMPLE_SERVING_SPLIT", value)
    assert _cupy_serving.split_requested() is split


def test_the_op_reads_the_same_rule():
    """The C++ launcher's test is the same: exactly "0" asks for the one-block kernel."""
    from specsample.backends import _cuda_build

    text = (_cuda_build.csrc_dir() / "verify_torch_serving.cu").read_text()
    assert "return !(v != nullptr && v[0] == '0' && v[1] == '\\0');" in text
