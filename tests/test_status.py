"""Per-request status: randomized bad inputs, every backend against the float64 reference.

The conformance check ``status.bad-values`` plants one bad value at each place the contract names;
this test throws many random mixtures at every backend (ids out of range, NaN/inf/negative values
anywhere, zero rows, rows summing past float32, bad uniforms; K = 0 included; all dtypes) and
requires the reference's status, tokens and counts exactly. On a GPU the fused kernels run in every
launch shape (cluster sizes, the greedy split kernel, the element-wise load path).
"""

from __future__ import annotations

import pytest
import specsample
import torch
from specsample.reference import reference_verify
from specsample.status import Status, describe, status_error

NAN, INF = float("nan"), float("inf")


def bad_batch(trial: int, V: int, K: int, B: int = 4):
    """A batch whose requests carry random bad values (deterministic in ``trial``)."""
    g = torch.Generator().manual_seed(trial)
    ids = torch.randint(0, V, (B, K), generator=g)
    if trial % 3 == 0 and K > 0:
        ids[trial % B, trial % K] = [-1, V, V + 3][trial % 3 // 1 % 3]
    q = torch.rand(B, K + 1, V, generator=g)
    p = torch.rand(B, K, V, generator=g)
    q, p = q / q.sum(-1, keepdim=True), p / p.sum(-1, keepdim=True)
    values = [NAN, INF, -INF, -0.5, 0.0]
    for i in range(trial % 4):
        b = int(torch.randint(0, B, (), generator=g))
        k = int(torch.randint(0, K + 1, (), generator=g))
        v = int(torch.randint(0, V, (), generator=g))
        q[b, k, v] = values[(trial + i) % len(values)]
        if trial % 5 == 0 and K > 0:
            p[b, min(k, K - 1), v] = values[(trial + i + 1) % len(values)]
    if trial % 7 == 0:
        q[0, K] = 0.0
    if trial % 11 == 0:
        q[1] = 0.0
    if trial % 9 == 0:
        q[2] = 3e38 / max(1, V // 4)  # rows summing past float32 (and, for small V, not)
    u = torch.rand(B, K + 1, generator=g)
    if trial % 13 == 0:
        u[3, 0] = 1.0
    return ids, p, q, u


def assert_same(out, ref, label):
    assert torch.equal(out.status.cpu(), ref.status.cpu()), (
        f"{label}: status {out.status.tolist()} != reference {ref.status.tolist()}"
    )
    assert torch.equal(out.num_emitted.cpu(), ref.num_emitted.cpu()), label
    assert torch.equal(out.token_ids.cpu(), ref.token_ids.cpu()), label


def run_differential(verify, trials, device="cpu", dtypes=(torch.float32,), shapes=None):
    shapes = shapes or [(3, 7), (1, 40), (0, 5), (5, 300)]
    flagged = 0
    for trial in range(trials):
        K, V = shapes[trial % len(shapes)]
        ids, p, q, u = bad_batch(trial, V, K)
        for dtype in dtypes:
            for mode in ("random", "greedy"):
                for pp in (p, None):
                    args = (
                        ids.to(device),
                        None if pp is None else pp.to(device, dtype),
                        q.to(device, dtype),
                    )
                    kw = {"mode": mode, "uniforms": u.to(device)}
                    ref = reference_verify(*args, **kw)
                    out = verify(*args, **kw)
                    assert_same(
                        out, ref, f"trial {trial} {dtype} {mode} p={'no' if pp is None else 'yes'}"
                    )
                    flagged += int((ref.status != 0).sum())
    assert flagged > 0  # the batches do exercise the flags


@pytest.mark.parametrize("name", ["torch-loop", "torch-vectorized"])
def test_cpu_backends_match_the_reference_on_bad_inputs(name):
    run_differential(
        specsample.get_backend(name).verify, 40, dtypes=(torch.float32, torch.bfloat16)
    )


def test_status_bits_and_messages():
    assert describe(0) == "ok"
    assert describe(Status.BAD_DRAFT_ID | Status.ZERO_ROW).startswith("draft_token_ids holds")
    assert "unknown status bits 0x400" in describe(0x400)
    assert describe(Status.BAD_TREE).startswith("parents does not describe a valid tree")
    assert status_error(torch.zeros(3, dtype=torch.int32)) is None
    err = status_error(torch.tensor([0, 0, 2, 16, 1], dtype=torch.int32))
    assert str(err).startswith("request 2: target_probs holds a NaN, infinite or negative value")
    assert "(status=2)" in str(err) and "2 more requests flagged: [3, 4]" in str(err)


def test_flagged_outputs_and_raise_for_status():
    ids = torch.tensor([[0, 1], [5, 1], [1, 2]])
    q = torch.full((3, 3, 4), 0.25)
    q[2, 0, 3] = NAN  # not read in random mode (request 2's draft 0 is token 1)
    out = specsample.get_backend("torch-vectorized").verify(
        ids, None, q, uniforms=torch.zeros(3, 3)
    )
    assert out.status.tolist() == [0, int(Status.BAD_DRAFT_ID), 0]
    assert out.token_ids[1].tolist() == [-1, -1, -1] and out.num_emitted.tolist() == [3, 0, 3]
    with pytest.raises(ValueError, match=r"^request 1: draft_token_ids holds an id outside"):
        out.raise_for_status()
    greedy = specsample.get_backend("torch-vectorized").verify(ids, None, q, mode="greedy")
    assert greedy.status.tolist()[1] == int(Status.BAD_DRAFT_ID)


def test_status_is_graph_free_of_host_reads_on_cpu():
    """The default call of torch-vectorized returns status without reading it on the host: the
    output tensors are produced by tensor ops only (no .item() on the inputs' values)."""
    ids = torch.tensor([[0, 9]])
    q = torch.full((1, 3, 4), 0.25)
    out = specsample.get_backend("torch-vectorized").verify(ids, None, q)
    assert out.status.dtype == torch.int32 and out.status.device == q.device


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["torch-vectorized", "cuda-cpp", "triton"])
def test_gpu_backends_match_the_reference_on_bad_inputs(name):
    run_differential(
        specsample.get_backend(name).verify,
        36,
        device="cuda",
        dtypes=(torch.float32, torch.float16, torch.bfloat16),
        shapes=[(3, 7), (1, 40), (0, 5), (5, 300), (4, 40000), (33, 1000)],
    )


@pytest.mark.gpu(needs=("cupy",))
def test_cupy_matches_the_reference_on_bad_inputs():
    run_differential(
        specsample.get_backend("cupy").verify,
        24,
        device="cuda",
        dtypes=(torch.float32, torch.bfloat16),
        shapes=[(3, 7), (5, 300), (4, 40000), (33, 1000)],
    )


@pytest.mark.gpu
@pytest.mark.parametrize("cluster", [1, 2, 4, 8, 16])
def test_every_kernel_shape_flags_like_the_reference(cluster):
    """Explicit launch shapes of the CUDA kernel (random and greedy cluster kernels, and the greedy
    split kernel) on bad inputs, over a vocabulary split across many blocks."""
    from specsample.backends.cuda_cpp import verify_op

    if cluster > 1 and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("thread-block clusters need sm_90")
    for trial in range(24):
        K, V = [(3, 4099), (6, 40000), (0, 1003)][trial % 3]
        ids, p, q, u = bad_batch(trial, V, K)
        for dtype in (torch.float32, torch.bfloat16):
            args = (ids.cuda(), p.cuda().to(dtype), q.cuda().to(dtype))
            ref = reference_verify(*args, uniforms=u.cuda())
            for threads in (128, 512):
                tok, num, st = verify_op(*args, uniforms=u.cuda(), cluster=cluster, threads=threads)
                assert torch.equal(st.cpu(), ref.status.cpu()), (trial, dtype, threads)
                assert torch.equal(tok.cpu(), ref.token_ids.cpu()), (trial, dtype, threads)
                assert torch.equal(num.cpu(), ref.num_emitted.cpu()), (trial, dtype, threads)
            gref = reference_verify(*args, mode="greedy")
            for split in (0, 3) if cluster == 1 else (0,):
                for rows in (1, 9):
                    tok, num, st = verify_op(
                        *args,
                        mode="greedy",
                        cluster=cluster if split == 0 else 0,
                        rows_per_step=rows,
                        split=split,
                    )
                    assert torch.equal(st.cpu(), gref.status.cpu()), (trial, dtype, split, rows)
                    assert torch.equal(tok.cpu(), gref.token_ids.cpu()), (trial, dtype, split)
                    assert torch.equal(num.cpu(), gref.num_emitted.cpu()), (trial, dtype, split)


def test_plain_int_copies_of_the_status_bits_match_status():
    # The tensor backends keep the bits as plain ints (constants for torch.compile); a renumbered
    # Status must not leave them behind.
    from specsample.backends import _serving_vectorized, _tree_vectorized, _vectorized

    names = {"_BAD_ID": Status.BAD_DRAFT_ID, "_BAD_TARGET": Status.BAD_TARGET_VALUE,
             "_BAD_DRAFT": Status.BAD_DRAFT_VALUE, "_BAD_UNIFORM": Status.BAD_UNIFORM,
             "_ZERO_ROW": Status.ZERO_ROW, "_OVERFLOW": Status.ROW_SUM_OVERFLOW,
             "_BAD_TREE": Status.BAD_TREE, "_REPEATED": Status.REPEATED_SIBLING}  # fmt: skip
    checked = 0
    for module in (_vectorized, _tree_vectorized, _serving_vectorized):
        for name, bit in names.items():
            if hasattr(module, name):
                assert getattr(module, name) == int(bit), f"{module.__name__}.{name}"
                checked += 1
    assert checked >= 6 + 8 + 5
