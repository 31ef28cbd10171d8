"""The serving kernels' own source (``csrc/kernel_serving.cuh``, one block per request, and
``csrc/kernel_serving_split.cuh``, one block per row) run on the CPU against the float64 serving
reference, token for token.

``tests/cuda_emulation/cuda_host.h`` stands in for the CUDA built-ins the kernel calls (a fiber
per CUDA thread, barriers for ``__syncthreads`` and the warp shuffles), so the host C++ compiler
builds the kernel files unchanged into ``serving_host.cpp``, a small program that runs them block
after block over inputs written by this test; the split kernel's blocks run in launch order, in
reverse (another block finishes each request) and with three blocks per counted row (every row's
count in flight at once, a chunk other than the last one finishing it), on a workspace of garbage. Blocks of 64 threads (two warps) keep it fast while
the cross-warp reductions and scans still run; float32 and bfloat16 (float16 goes through inline
PTX, not emulated: the GPU tests in tests/test_cuda_serving.py cover it). What it cannot show:
races between real threads (the fibers switch only at barriers), the device's ``exp`` / ``pow``
(the host's are used), and speed. Skipped without a C++ compiler.
"""

from __future__ import annotations

import math
import re
import subprocess

import pytest
import specsample
import torch
from emulation_host import CXX, build_host_program, write_tensor
from serving_batches import mixed_serving_batch
from specsample.backends import _cuda_build, _cupy_serving
from specsample.reference_serving import reference_verify_serving
from specsample.serving import validate_serving

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler (c++, g++ or $CXX)")
THREADS = 64


# one-block; split in launch order; split in reverse order; split with three blocks per counted
# row (serving_host.cpp's kernel codes)
KERNELS = {"one-block": 0, "split": 1, "split-reversed": 2, "split-chunks": 3}
CHUNKS = 3


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    return build_host_program("serving_host.cpp", tmp_path_factory.mktemp("serving_host"))


@pytest.fixture(params=list(KERNELS))
def program(request, host):
    """(the host program, the kernel it runs)."""
    return host, KERNELS[request.param]


def _run(program, tmp_path, ids, **kwargs):
    """Validate like ``verify_serving``, run the kernel on the CPU, return (tokens, num, status)."""
    inputs = validate_serving(ids, **kwargs)
    B, K, V = inputs.batch_size, inputs.num_draft, inputs.vocab_size
    dtype = {torch.float32: "f32", torch.bfloat16: "bf16"}[inputs.target.dtype]
    coins = 0 if inputs.uniforms is not None else 1 if inputs.seeds is not None else 2
    assert coins != 2, "the emulation runs explicit coins or seeds"

    def put(name, t):
        write_tensor(tmp_path, name, t)

    put("ids", inputs.draft_token_ids)
    put("num", inputs.num_draft_tokens)
    put("target", inputs.target)
    if inputs.draft is not None:
        put("draft", inputs.draft)
    put("temp", inputs.temperature)
    put("top_k", inputs.top_k)
    put("top_p", inputs.top_p)
    put("flags", inputs.param_flags)
    if coins == 0:
        put("uniforms", inputs.uniforms)
    else:
        put("seeds", inputs.seeds)
        put("offsets", inputs.offsets)
    meta = [
        B, K, V, dtype, int(inputs.target_is_logits), int(inputs.draft is not None),
        int(inputs.draft_is_logits), coins, THREADS,
        int(inputs.draft_token_ids.dtype == torch.int64), program[1],
        CHUNKS if program[1] == 3 else 1,
    ]  # fmt: skip
    (tmp_path / "meta.txt").write_text(" ".join(map(str, meta)))
    subprocess.run([str(program[0]), str(tmp_path)], check=True, timeout=600)
    tokens = torch.frombuffer(bytearray((tmp_path / "tokens.bin").read_bytes()), dtype=torch.int64)
    num = torch.frombuffer(bytearray((tmp_path / "num_out.bin").read_bytes()), dtype=torch.int64)
    status = torch.frombuffer(bytearray((tmp_path / "status.bin").read_bytes()), dtype=torch.int32)
    return tokens.reshape(B, K + 1), num, status


def _radix_rows(tmp_path) -> int:
    """16-bit rows of the last run that the split kernel took off its histogram path (a count
    overflowed); always 0 for the one-block kernel."""
    return int((tmp_path / "radix_rows.txt").read_text())


def _exact(program, tmp_path, ids, **kwargs):
    tokens, num, status = _run(program, tmp_path, ids, **kwargs)
    ref = reference_verify_serving(ids, **kwargs)
    assert status.tolist() == ref.status.tolist()
    differ = torch.nonzero((tokens != ref.token_ids).any(dim=1)).flatten()
    assert len(differ) == 0, (
        differ.tolist(), tokens[differ].tolist(), ref.token_ids[differ].tolist()
    )  # fmt: skip
    assert num.tolist() == ref.num_emitted.tolist()
    return tokens, num, status


@pytest.mark.parametrize(
    "dtype, probs, draft",
    [
        (torch.float32, False, "logits"),
        (torch.bfloat16, False, "logits"),
        (torch.bfloat16, False, "none"),
        (torch.bfloat16, False, "probs"),
        (torch.float32, True, "probs"),
        (torch.bfloat16, True, "logits"),
    ],
    ids=[
        "f32-logits",
        "bf16-logits",
        "bf16-no-draft",
        "bf16-draft-probs",
        "f32-probs",
        "bf16-probs-draft-logits",
    ],  # fmt: skip
)
def test_mixed_batch_exact(program, tmp_path, dtype, probs, draft):
    """Mixed batches token for token; both outcomes of the accept test occur."""
    ids, kwargs = mixed_serving_batch(16, 3, 300, seed=1, dtype=dtype, probs=probs, draft=draft)
    tokens, num, status = _exact(program, tmp_path, ids, **kwargs)
    assert (status == 0).all()
    assert 0 < int((num < kwargs["num_draft_tokens"] + 1).sum()) < 16
    assert _radix_rows(tmp_path) == 0  # every 16-bit row through the histogram


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_unaligned_rows_and_seeds(program, tmp_path, dtype):
    """Rows of V = 1001 (not a multiple of 16 bytes: the element-by-element load path, and a
    short last vector), int32 ids, seeded coins."""
    ids, kwargs = mixed_serving_batch(8, 2, 1001, seed=2, dtype=dtype)
    del kwargs["uniforms"]
    kwargs["seeds"] = torch.arange(8) * 7919 - 3
    kwargs["offsets"] = torch.arange(8) * 5
    _exact(program, tmp_path, ids.to(torch.int32), **kwargs)
    assert _radix_rows(tmp_path) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_filter_ties(program, tmp_path, dtype):
    """Tie rules at the top-k and top-p boundaries (``-0.0`` ties ``0.0``, whole tie groups
    kept), probabilities with zeros, top-p's boundary hit exactly; in bfloat16 the split kernel
    takes them from its histogram of values."""
    row = torch.tensor([2.0, 1.0, 1.0, 0.0, -0.0, 0.0, -1.0, -1.0, -5.0, -math.inf, 1.0, -2.0])
    logits = row.repeat(8, 2, 1).to(dtype)
    ids = torch.tensor([[1], [4], [3], [7], [2], [10], [9], [5]])
    kwargs = {
        "target_logits": logits,
        "temperature": torch.tensor([1.0, 1.0, 0.5, 2.0, 1.0, 1.0, 1.0, 1.0]),
        "top_k": torch.tensor([2, 5, 4, 7, 0, 3, 0, 6]),
        "top_p": torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5, 0.6, 0.999, 0.7]),
        "uniforms": torch.linspace(0.05, 0.95, 16).reshape(8, 2),
    }
    kwargs["uniforms"][1, 0] = 0.01
    _exact(program, tmp_path, ids, **kwargs)
    probs = torch.softmax(logits.float(), -1)
    probs[:, :, 3:6] = 0.0
    probs[:, :, 5] = -0.0
    kwargs["target_probs"] = probs.to(dtype)
    del kwargs["target_logits"]
    _exact(program, tmp_path, ids, **kwargs)
    row = torch.tensor([0.5, 0.125, 0.125, 0.0, 0.125, 0.125, 0.0, 0.0]).to(dtype)
    u = torch.linspace(0.0, 0.99, 12).reshape(12, 1)
    for p, allowed in ((0.5, {0}), (0.75, {0, 1, 2, 4, 5})):
        tokens, _, _ = _exact(
            program, tmp_path, torch.zeros(12, 0, dtype=torch.int64),
            target_probs=row.repeat(12, 1, 1), top_p=torch.full((12,), p), uniforms=u,
        )  # fmt: skip
        assert set(tokens[:, 0].tolist()) == allowed


def test_zero_residual_falls_back_to_q(program, tmp_path):
    """Draft logits equal to the target's under top-k = 3, drafts outside the top 3: every coin
    rejects, the residual is all zero, the token is drawn from q' (one of the top 3)."""
    g = torch.Generator().manual_seed(6)
    B, K, V = 12, 2, 30
    logits = torch.randn(B, K + 1, V, generator=g)
    ids = logits[:, :K].argmin(-1)
    u = torch.rand(B, K + 1, generator=g)
    u[:, K] = torch.linspace(0.0, 0.99, B)
    tokens, num, _ = _exact(
        program, tmp_path, ids, target_logits=logits, draft_logits=logits[:, :K].clone(),
        top_k=torch.full((B,), 3), uniforms=u,
    )  # fmt: skip
    assert (num == 1).all()
    top3 = logits[:, 0].topk(3).indices
    rank = (top3 == tokens[:, :1]).int()
    assert rank.any(dim=1).all() and len(set(rank.argmax(dim=1).tolist())) > 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_status(program, tmp_path, dtype):
    """Every status bit as the reference sets it; unowned rows unread; flagged requests emit -1.
    In bfloat16 the split kernel reads the checks of sampling rows off its histogram."""
    ids, kwargs = mixed_serving_batch(11, 3, 20, seed=8, dtype=dtype)
    kwargs["num_draft_tokens"] = torch.tensor([3, 1, 3, 2, 3, 3, 3, 3, 2, 3, 3])
    kwargs["temperature"] = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    tl, dl, u = kwargs["target_logits"], kwargs["draft_logits"], kwargs["uniforms"]
    ids[0, 2] = 20
    tl[1, 3, 4] = math.nan
    tl[2, 3, 0] = math.inf
    dl[3, 1, 1] = math.nan
    u[4, 3] = 1.0
    dl[5, 0, 0] = math.nan
    tl[6, 1] = -math.inf
    tl[7, 0, :5] = -math.inf
    tl[8, 2, 3] = math.nan
    u[8, 0] = 2.0
    tl[10, 1] = -math.inf
    tl[10, 1, 7] = math.nan
    tokens, num, status = _exact(program, tmp_path, ids, **kwargs)
    S = specsample.Status
    assert status.tolist() == [
        S.BAD_DRAFT_ID, 0, S.BAD_TARGET_VALUE, S.BAD_DRAFT_VALUE, S.BAD_UNIFORM, 0, S.ZERO_ROW,
        0, S.BAD_TARGET_VALUE, 0, S.BAD_TARGET_VALUE,
    ]  # fmt: skip
    flagged = status != 0
    assert (num[flagged] == 0).all() and (tokens[flagged] == -1).all()


def test_top_k_keeps_exactly_k_and_cdf_boundary(program, tmp_path):
    """Distinct logits, K = 0: the coins spread over [0, 1) draw exactly the top-k tokens (not
    one more, not one less); a coin landing exactly on a cumulative boundary takes the next token
    (``cumsum > u * sum``, not ``>=``)."""
    V, B = 300, 32
    logits = torch.randperm(V, generator=torch.Generator().manual_seed(9)).float() * 1e-3
    ids = torch.zeros(B, 0, dtype=torch.int64)
    u = torch.linspace(0.0, 0.999, B).reshape(B, 1)
    for k in (1, 5, 12):
        tokens, _, _ = _exact(
            program, tmp_path, ids, target_logits=logits.repeat(B, 1, 1),
            top_k=torch.full((B,), k), uniforms=u,
        )  # fmt: skip
        assert set(tokens[:, 0].tolist()) == set(logits.topk(k).indices.tolist())
    probs = torch.tensor([0.5, 0.25, 0.25, 0.0]).repeat(3, 1, 1)
    tokens, _, _ = _exact(
        program, tmp_path, torch.zeros(3, 0, dtype=torch.int64), target_probs=probs,
        uniforms=torch.tensor([[0.5], [0.75], [0.0]]),
    )  # fmt: skip
    assert tokens[:, 0].tolist() == [1, 2, 0]


def test_histogram_edges(program, tmp_path):
    """bfloat16 rows the split kernel's histogram must get right: 66,000 equal logits in a row of
    70,000 (a 16-bit count overflows: the kernel detects it and selects by radix instead), -inf
    masks with top-k beyond the finite values, temperatures whose weights underflow, and a
    distribution of many distinct values under top-k and top-p; one row with more distinct values
    than the kernel's list of weights holds (its thread-range scans)."""
    g = torch.Generator().manual_seed(11)
    B, K, V = 6, 1, 70000
    logits = torch.randn(B, K + 1, V, generator=g) * 2
    logits[0:2, :, :66000] = 0.5  # overflowing counts
    logits[2, :, 100:] = -math.inf  # 100 finite values
    # ~15,000 distinct bfloat16 values: magnitudes spread over 60 binades, both signs
    logits[5] = torch.randn(K + 1, V, generator=g).sign() * 2.0 ** (
        torch.rand(K + 1, V, generator=g) * 60 - 50
    )
    logits = logits.to(torch.bfloat16)
    assert len(torch.unique(logits[5, 0])) > 12000
    ids = logits[:, 0].float().argmax(-1, keepdim=True)
    ids[1, 0] = 7  # a value in the big tie group
    kwargs = {
        "target_logits": logits,
        "draft_logits": (logits.float()[:, :K] + 0.3 * torch.randn(B, K, V, generator=g)).to(
            torch.bfloat16
        ),
        "temperature": torch.tensor([1.0, 0.7, 1.0, 0.01, 0.6, 50.0]),
        "top_k": torch.tensor([0, 20, 500, 0, 5000, 0]),
        "top_p": torch.tensor([0.9, 1.0, 0.95, 0.9, 0.9, 0.5]),
        "uniforms": torch.rand(B, K + 1, generator=g),
    }
    kwargs["draft_logits"][2, :, 100:] = -math.inf
    tokens, num, status = _exact(program, tmp_path, ids, **kwargs)
    assert (status == 0).all()
    # the overflow is detected on exactly the four target rows of requests 0 and 1
    assert _radix_rows(tmp_path) == (0 if program[1] == 0 else 4)


def test_signed_zeros_in_bfloat16_rows(program, tmp_path):
    """-0.0 and +0.0 in bfloat16 rows: as logits both are the value 0 (mass, one key), as
    probabilities both have none. The split kernel counts -0.0 under a key of its own and folds it
    afterwards; a lost or misplaced count would leave the counts short of the row, which sends the
    row to the radix path, so the test also requires that no row went there."""
    g = torch.Generator().manual_seed(23)
    B, K, V = 4, 2, 5000
    logits = torch.randn(B, K + 1, V, generator=g).clamp(-1, 1)
    zero = torch.rand(B, K + 1, V, generator=g)
    logits[zero < 0.3] = -0.0
    logits[(zero >= 0.3) & (zero < 0.4)] = 0.0
    logits = logits.to(torch.bfloat16)
    assert (torch.signbit(logits) & (logits == 0)).sum() > 3000
    probs = torch.softmax(torch.randn(B, K + 1, V, generator=g) * 3, -1)
    probs[zero < 0.3] = -0.0  # the same positions: no mass
    probs[(zero >= 0.3) & (zero < 0.4)] = 0.0
    probs = probs.to(torch.bfloat16)
    for name, rows in (("target_logits", logits), ("target_probs", probs)):
        ids = rows[:, :K].float().argmax(-1)
        kwargs = {
            name: rows,
            "draft_logits": (logits.float()[:, :K] + 0.2).to(torch.bfloat16),
            "temperature": torch.tensor([1.0, 0.5, 2.0, 1.0]),
            "top_k": torch.tensor([0, 0, 100, 0]),
            "top_p": torch.tensor([1.0, 0.8, 0.95, 0.3]),
            "uniforms": torch.rand(B, K + 1, generator=g),
        }
        tokens, num, status = _exact(program, tmp_path, ids, **kwargs)
        assert (status == 0).all(), name
        assert _radix_rows(tmp_path) == 0, name


def test_constants_match_the_python_side():
    """The CuPy launcher sizes the split kernel's workspace and shared memory from these."""
    text = (_cuda_build.csrc_dir() / "kernel_serving_split.cuh").read_text()
    assert f"constexpr int kServingRecordWords = {_cupy_serving.RECORD_WORDS};" in text
    assert "constexpr int kServingHistWords = 32768;" in text
    assert "constexpr int kServingHistPhys = kServingHistWords + kServingHistWords / 64;" in text
    assert "constexpr int kServingListCap = 10240;" in text
    assert "constexpr int kServingDynamicBytes = kServingHistBytes + kServingListCap * 8;" in text
    assert _cupy_serving.DYNAMIC_BYTES == (32768 + 32768 // 64) * 4 + 10240 * 8
    threads = re.search(r"constexpr int kServingThreads = (\d+);",
                        (_cuda_build.csrc_dir() / "kernel_serving.cuh").read_text())  # fmt: skip
    assert threads and int(threads.group(1)) == _cupy_serving.SERVING_THREADS


def test_status_of_probabilities_from_the_histogram(program, tmp_path):
    """bfloat16 probabilities: a negative value, -inf, +inf and NaN are bad target values, a row
    of zeros (+0.0 and -0.0) has no mass, a row with only tiny positive values is fine."""
    g = torch.Generator().manual_seed(12)
    B, K, V = 7, 2, 40
    probs = torch.softmax(torch.randn(B, K + 1, V, generator=g) * 2, -1)
    probs[0, 1, 3] = -1e-3
    probs[1, 2, 5] = -math.inf
    probs[2, 0, 0] = math.inf
    probs[3, 1, 7] = math.nan
    probs[4, 2] = 0.0
    probs[4, 2, ::3] = -0.0
    probs[5, 1] = 1e-30
    probs = probs.to(torch.bfloat16)
    ids = probs[:, :K].float().argmax(-1)
    kwargs = {
        "target_probs": probs,
        "temperature": torch.tensor([1.0, 0.8, 1.0, 1.0, 1.0, 0.5, 1.0]),
        "top_p": torch.full((B,), 0.9),
        "top_k": torch.tensor([0, 0, 5, 0, 0, 3, 2]),
        "uniforms": torch.rand(B, K + 1, generator=g),
    }
    _, _, status = _exact(program, tmp_path, ids, **kwargs)
    S = specsample.Status
    bad = S.BAD_TARGET_VALUE
    assert status.tolist() == [bad, bad, bad, bad, S.ZERO_ROW, 0, 0]


def test_long_bfloat16_rows(program, tmp_path):
    """V = 32,000 bfloat16 logits (thousands of distinct values per row, the top-p cut deep in
    the histogram), every request sampling, top-p 0.9 and 0.95, drafts drawn near the target."""
    ids, kwargs = mixed_serving_batch(6, 3, 32000, seed=13, dtype=torch.bfloat16)
    kwargs["temperature"] = torch.tensor([1.0, 0.7, 0.9, 1.0, 0.6, 0.8])
    kwargs["top_p"] = torch.tensor([0.9, 0.95, 0.9, 1.0, 0.95, 0.9])
    kwargs["top_k"] = torch.tensor([0, 0, 50, 0, 0, 1000])
    tokens, num, status = _exact(program, tmp_path, ids, **kwargs)
    assert (status == 0).all()
    assert _radix_rows(tmp_path) == 0


def test_last_row_beyond_the_probability_tables(program, tmp_path):
    """The split kernel's last block tables q' (and a draft row's p') per 16-bit key over the kept
    range; a row whose range is longer than its share of the table has its lowest keys evaluated
    one by one. bfloat16 logits over 60 binades of both signs (about 15,000 keys between the
    smallest and the largest), no top-k / top-p and temperatures that leave every key real mass:
    the untabled keys must carry theirs."""
    g = torch.Generator().manual_seed(14)
    B, K, V = 4, 1, 40000
    logits = torch.randn(B, K + 1, V, generator=g).sign() * 2.0 ** (
        torch.rand(B, K + 1, V, generator=g) * 60 - 50
    )
    logits = logits.to(torch.bfloat16)
    keys = torch.unique(logits[0, 1])
    assert len(keys) > 14000
    draft = logits[:, :K].float() * (1 + 0.2 * torch.rand(B, K, V, generator=g))
    ids = torch.randint(0, V, (B, K), generator=g)
    kwargs = {
        "target_logits": logits,
        "draft_logits": draft.to(torch.bfloat16),
        "temperature": torch.tensor([1e4, 3e3, 1e4, 2e3]),
        "top_p": torch.ones(B),
        "top_k": torch.zeros(B, dtype=torch.int64),
        "uniforms": torch.tensor([[0.1, 0.02], [0.99, 0.05], [0.5, 0.97], [0.3, 0.5]]),
    }
    tokens, num, status = _exact(program, tmp_path, ids, **kwargs)
    assert (status == 0).all()
    # the draws fall among the lowest keys too (the ones past the table)
    last = tokens[torch.arange(B), num - 1]
    values = logits[torch.arange(B), num - 1, last].float()
    assert (values < 0).any()


def test_last_draw_over_units_of_several_rounds(program, tmp_path):
    """The last token's draw sums the row in at most 256 units of consecutive vectors, then reads
    again only the unit where the threshold is crossed. V = 300,000 bfloat16 values make a unit
    two rounds of a warp's loads (256 vectors) and, at 64 threads, four tiles when it is read
    again; every request samples its last token from the residual or the bonus row."""
    g = torch.Generator().manual_seed(15)
    B, K, V = 3, 1, 300_000
    logits = (torch.randn(B, K + 1, V, generator=g) * 2).to(torch.bfloat16)
    draft = (logits[:, :K].float() + 0.5 * torch.randn(B, K, V, generator=g)).to(torch.bfloat16)
    # request 0 drafts the target's argmax; 1 and 2 its smallest value, outside their top-p
    ids = torch.stack([logits[0, 0].float().argmax(), *logits[1:, 0].float().argmin(-1)])[:, None]
    kwargs = {
        "target_logits": logits,
        "draft_logits": draft,
        "temperature": torch.tensor([1.0, 0.8, 1.5]),
        "top_p": torch.tensor([1.0, 0.95, 0.9]),
        "top_k": torch.zeros(B, dtype=torch.int64),
        "uniforms": torch.tensor([[0.001, 0.999], [0.5, 0.37], [0.5, 0.001]]),
    }
    tokens, num, status = _exact(program, tmp_path, ids, **kwargs)
    assert (status == 0).all()
    assert num.tolist() == [2, 1, 1]  # the bonus row, then two residual draws
