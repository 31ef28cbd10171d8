"""Which serving kernel ``cupy`` launches (the ``cuda-cpp`` op reads the same variables in C++):
the split kernel unless ``SPECSAMPLE_SERVING_SPLIT=0``, read at every call, and how many blocks it
gives each counted row (``split_chunks``, ``SPECSAMPLE_SERVING_CHUNKS``). No GPU needed."""

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


@pytest.mark.parametrize(
    ("batch", "num_draft", "vocab", "element_size", "sms", "want"),
    [
        (1, 8, 128256, 2, 132, 7),  # 17 rows: 7 blocks each fill 119 of 132 SMs
        (1, 0, 151936, 2, 132, 8),  # one row: at most 8
        (2, 8, 128256, 2, 132, 3),  # 34 rows
        (4, 8, 128256, 2, 132, 1),  # 68 rows fill more than half the SMs
        (1, 8, 128256, 4, 132, 1),  # float32 rows are never counted by value
        (1, 2, 20000, 2, 132, 2),  # 2,500 vectors: two blocks of at least 1,024
        (1, 2, 4096, 2, 132, 1),  # 512 vectors
    ],
)
def test_split_chunks_fill_the_gpu(monkeypatch, batch, num_draft, vocab, element_size, sms, want):
    monkeypatch.delenv("SPECSAMPLE_SERVING_CHUNKS", raising=False)
    assert _cupy_serving.split_chunks(batch, num_draft, vocab, element_size, sms) == want


@pytest.mark.parametrize(("value", "want"), [("1", 1), ("3", 3), ("8", 8), ("64", 8)])
def test_split_chunks_forced(monkeypatch, value, want):
    monkeypatch.setenv("SPECSAMPLE_SERVING_CHUNKS", value)
    assert _cupy_serving.split_chunks(256, 8, 128256, 2, 132) == want
    assert _cupy_serving.split_chunks(1, 8, 128256, 4, 132) == 1  # float32: one block per row


@pytest.mark.parametrize("value", ["0", "-2", "two", "3x", " 3"])
def test_split_chunks_refuses_a_bad_value(monkeypatch, value):
    monkeypatch.setenv("SPECSAMPLE_SERVING_CHUNKS", value)
    with pytest.raises(ValueError, match="SPECSAMPLE_SERVING_CHUNKS must be a positive integer"):
        _cupy_serving.split_chunks(1, 8, 128256, 2, 132)


def test_the_op_chooses_chunks_by_the_same_rule():
    """The C++ launcher's rule, piece by piece, and the kernel's limit."""
    from specsample.backends import _cuda_build

    op = (_cuda_build.csrc_dir() / "verify_torch_serving.cu").read_text()
    for piece in (
        "if (elem != 2) return 1;",
        'std::getenv("SPECSAMPLE_SERVING_CHUNKS")',
        "return (int)std::min<long>(n, kServingChunkMax);",
        "const int64_t rows = B * (2 * K + 1);",
        "if (2 * rows > sms) return 1;",
        "const int64_t by_vectors = std::max<int64_t>((V + 7) / 8 / 1024, 1);",
        "return (int)std::min<int64_t>({(int64_t)kServingChunkMax, sms / rows, by_vectors});",
        "const int64_t rows_at = (B + 3) / 4 * 4;",
    ):
        assert piece in op, piece
    kernel = (_cuda_build.csrc_dir() / "kernel_serving_split.cuh").read_text()
    assert f"constexpr int kServingChunkMax = {_cupy_serving.CHUNK_MAX};" in kernel
    assert "constexpr int kServingChunkRowStride = kServingHistWords + 32;" in kernel
    assert _cupy_serving.CHUNK_ROW_WORDS == 32768 + 32
