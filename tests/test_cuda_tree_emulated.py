"""The tree kernels' own source run on the CPU against the float64 references, token for token:
``verify_tree_kernel`` (``csrc/kernel_tree.cuh``, the token rule) and ``verify_traversal_kernel``
(``csrc/kernel_traversal.cuh``, traversal verification).

``tests/cuda_emulation/cuda_host.h`` stands in for the CUDA built-ins (a fiber per CUDA thread,
barriers for ``__syncthreads``, the votes and the warp shuffles), so the host C++ compiler builds
the kernel files unchanged into ``tree_host.cpp``, which runs one block of ``kTreeThreads``
threads per request (one block per request: the cluster kernels' exchanges are inline PTX, not
emulated). float32 and bfloat16 (float16 goes through inline PTX: the GPU tests in
tests/test_cuda_tree.py cover it); explicit coins. Every comparison is exact: status,
``num_emitted``, ``accepted_nodes`` and all tokens. The sums over the vocabulary add in another
order than the reference's, so a coin within rounding (~1e-16 relative) of a threshold could
differ; with random coins that has negligible probability. What it cannot show: races between
real threads (the fibers switch only at barriers), the device's rounding of anything but the
IEEE double operations the kernels use, and speed. Skipped without a C++ compiler.
"""

from __future__ import annotations

import subprocess

import pytest
import torch
from emulation_host import CXX, build_host_program, write_tensor
from specsample import trees
from specsample.backends import _cuda_build
from specsample.reference import reference_verify
from specsample.reference_tree import reference_verify_tree
from specsample.status import Status
from specsample.validation_tree import validate_tree_inputs
from traversal_batches import traversal_batch

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler (c++, g++ or $CXX)")


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    return build_host_program(
        "tree_host.cpp", tmp_path_factory.mktemp("tree_host"), "-ffp-contract=off"
    )


def _run(program, tmp_path, ids, parents, p, q, philox=None, **kw):
    """Validate like ``verify_tree``, run the kernel on the CPU: ``(tokens, num, nodes, status)``.
    The coins are ``kw["uniforms"]``, or with ``philox=(seed, offset)`` the kernel's own draws."""
    inputs = validate_tree_inputs(ids, parents, p, q, **kw)
    B, N, V, D = inputs.batch_size, inputs.num_nodes_max, inputs.vocab_size, inputs.max_depth
    dtype = {torch.float32: "f32", torch.bfloat16: "bf16"}[inputs.target_probs.dtype]
    greedy = inputs.mode == "greedy"
    has_p = inputs.draft_probs is not None and not greedy and N > 0
    traversal = inputs.rule == "traversal" and not greedy

    def put(name, t):
        write_tensor(tmp_path, name, t)

    put("ids", inputs.draft_token_ids)
    put("parents", inputs.parents)
    put("num", inputs.num_nodes)
    put("target", inputs.target_probs)
    if has_p:
        put("draft", inputs.draft_probs)
    if not greedy and philox is None:
        assert inputs.uniforms is not None, "explicit coins or philox=(seed, offset)"
        put("uniforms", inputs.uniforms)
    seed, offset = philox or (0, 0)
    meta = [
        B, N, V, dtype, D, int(traversal), int(greedy), int(has_p),
        int(inputs.needs_distinct_siblings), int(inputs.draft_sampling == "without_replacement"),
        int(inputs.draft_token_ids.dtype == torch.int64), int(philox is None), seed, offset,
    ]  # fmt: skip
    (tmp_path / "meta.txt").write_text(" ".join(map(str, meta)))
    subprocess.run([str(program), str(tmp_path)], check=True, timeout=600)

    def get(name, dtype, shape):
        raw = bytearray((tmp_path / f"{name}.bin").read_bytes())
        return (
            torch.frombuffer(raw, dtype=dtype).reshape(shape)
            if raw
            else torch.empty(shape, dtype=dtype)
        )

    return (
        get("tokens", torch.int64, (B, D + 1)),
        get("num_out", torch.int64, (B,)),
        get("nodes", torch.int64, (B, D)),
        get("status", torch.int32, (B,)),
    )


def _exact(program, tmp_path, ids, parents, p, q, what, **kw):
    """The kernel's outputs equal the reference's; returns the reference's output."""
    tokens, num, nodes, status = _run(program, tmp_path, ids, parents, p, q, **kw)
    ref = reference_verify_tree(ids, parents, p, q, **kw)
    for name, got in (("status", status), ("num_emitted", num), ("accepted_nodes", nodes),
                      ("token_ids", tokens)):  # fmt: skip
        want = getattr(ref, name)
        bad = torch.nonzero((got != want).reshape(got.shape[0], -1).any(dim=1)).flatten().tolist()
        assert not bad, (
            f"{what}: {name} differs in requests {bad}: {got[bad].tolist()} != {want[bad].tolist()}"
        )
    return ref


@pytest.mark.parametrize(
    ("B", "N", "V", "dtype", "seed"),
    [(48, 5, 2, torch.float32, 1), (48, 7, 3, torch.bfloat16, 2), (40, 9, 8, torch.float32, 3),
     (24, 12, 300, torch.float32, 4), (24, 10, 257, torch.bfloat16, 5)],
)  # fmt: skip
def test_traversal_exact(program, tmp_path, B, N, V, dtype, seed):
    """Chains, stars and random trees, padded, tiny and a few hundred tokens (V = 257 and V = 3:
    the element-wise load path; V = 8 and 300 with float32 the 16-byte one): the traversal
    kernel equals the float64 traversal reference; acceptances deep in the tree, at inner nodes
    after their children failed, and empty paths all occur."""
    ids, parents, counts, p, q, u = traversal_batch(B, N, V, seed, dtype=dtype)
    kw = dict(num_nodes=counts, uniforms=u, draft_sampling="with_replacement", rule="traversal")
    ref = _exact(program, tmp_path, ids, parents, p, q, f"traversal N={N} V={V} {dtype}", **kw)
    assert (ref.status == 0).all()
    num = ref.num_emitted.tolist()
    assert 1 in num and max(num) >= 3, num
    inner = [
        b for b in range(B)
        if ref.num_emitted[b] > 1
        and int(ref.accepted_nodes[b, ref.num_emitted[b] - 2]) in parents[b, : counts[b]].tolist()
    ]  # fmt: skip
    assert inner, "no inner node accepted after its children were rejected"


def test_traversal_large_tree(program, tmp_path):
    """128 nodes (the kernel's limit), random trees and stars: long post-order walks with many
    rejections and re-weighted subtrees."""
    ids, parents, counts, p, q, u = traversal_batch(4, 128, 6, 6, kinds=("random", "star"),
                                                     padded=False)  # fmt: skip
    kw = dict(num_nodes=counts, uniforms=u, draft_sampling="with_replacement", rule="traversal")
    _exact(program, tmp_path, ids, parents, p, q, "traversal N=128", **kw)


@pytest.mark.parametrize("V", [2, 5, 300])
def test_traversal_chain_is_block_verification(program, tmp_path, V):
    """On a chain the traversal kernel emits verify(rule="block")'s tokens with the same coins."""
    B, K = 64, 4
    g = torch.Generator().manual_seed(V)
    logits = torch.randn(B, K + 1, V, generator=g) * 2
    q = torch.softmax(logits, -1)
    p = torch.softmax(logits[:, :K] + torch.randn(B, K, V, generator=g), -1)
    ids = torch.multinomial(p.reshape(B * K, V), 1, generator=g).reshape(B, K)
    u = torch.rand(B, K + 1, generator=g)
    parents = trees.chain(K).expand(B, K).contiguous()
    tokens, num, _, status = _run(program, tmp_path, ids, parents, p, q, uniforms=u,
                                  draft_sampling="with_replacement", rule="traversal")  # fmt: skip
    want = reference_verify(ids, p, q, uniforms=u, rule="block")
    assert torch.equal(status, want.status)
    assert torch.equal(num, want.num_emitted)
    assert torch.equal(tokens, want.token_ids)
    assert int(num.min()) == 1 and int(num.max()) == K + 1, num.tolist()


def test_traversal_status(program, tmp_path):
    """Every status bit as the traversal reference sets it: a bad tree, a bad id and a bad coin
    (both bits), a bad value in an inner target row and in a first child's draft row (both bits,
    though the walk would not reach them), a bad value in an accepted leaf's row, a row summing
    to zero and one past the float32 range; flagged requests emit -1."""
    V, N = 4, 3
    ids = torch.tensor([[1, 2, 3]] * 10)
    parents = torch.tensor([[-1, 0, 0]] * 10)
    p = torch.full((10, N, V), 0.25)
    q = torch.full((10, N + 1, V), 0.25)
    u = torch.full((10, N + 1), 0.5)
    u[:, 1] = 0.0  # node 1 (a leaf under node 0) is accepted unless flagged
    parents[0, 2] = 2  # not an earlier node
    ids[1, 0] = 4
    u[1, 3] = 1.0
    q[2, 1, 0] = float("nan")  # node 0's row: inner
    p[2, 1, 0] = float("inf")  # node 1's row: the first child of node 0
    q[3, 0, 3] = -1.0  # the root's row
    q[4, 2, 0] = float("inf")  # node 1's row: the accepted leaf
    q[5, 2, 0] = float("nan")
    q[5, 1, 2] = 0.05  # ... the same leaf rejected (weight 0.2): its row is never read
    u[5, 1] = 0.99
    q[6] = 0.0  # every row zero: every weight 0, the root's residual falls back to a zero row
    parents[7] = torch.tensor([-1, 0, 1])  # a chain whose every weight is 0:
    q[7, 0] = 3e38  # the root's residual max(0, q - p) past float32
    q[7, 0, 1] = 0.0
    q[8, 2] = 2e38  # the accepted leaf's row past float32
    counts = torch.tensor([3, 3, 3, 3, 3, 3, 3, 3, 3, 0])
    kw = dict(num_nodes=counts, uniforms=u, draft_sampling="with_replacement", rule="traversal")
    for dtype in (torch.float32, torch.bfloat16):
        ref = _exact(program, tmp_path, ids, parents, p.to(dtype), q.to(dtype), f"status {dtype}",
                     **kw)  # fmt: skip
        S = Status
        want = [S.BAD_TREE, S.BAD_DRAFT_ID | S.BAD_UNIFORM, S.BAD_TARGET_VALUE | S.BAD_DRAFT_VALUE,
                S.BAD_TARGET_VALUE, S.BAD_TARGET_VALUE, 0, S.ZERO_ROW, S.ROW_SUM_OVERFLOW,
                S.ROW_SUM_OVERFLOW, 0]  # fmt: skip
        assert ref.status.tolist() == [int(x) for x in want], ref.status.tolist()
        flagged = ref.status != 0
        assert (ref.num_emitted[flagged] == 0).all()


def test_traversal_zero_residual_falls_back_to_the_row(program, tmp_path):
    """Target rows below the draft row everywhere (unnormalized, as rows may be): the first
    rejection at the root leaves a zero residual, so the root keeps its row, normalized by its
    sum, and weight 1; the next sibling's weight becomes min(1, (q(x) / sum q) / p(x)) = 1 and it
    is accepted whatever its coin."""
    B, V = 8, 5
    g = torch.Generator().manual_seed(31)
    p = torch.softmax(torch.randn(B, 3, V, generator=g), -1)
    q = torch.rand(B, 4, V, generator=g)
    scale = torch.tensor([0.5, 0.25, 0.9, 0.1, 0.5, 0.25, 0.9, 0.1]).reshape(B, 1)
    q[:, 0] = scale * p[:, 0]
    ids = torch.multinomial(p[:, 0], 3, replacement=True, generator=g)
    parents = trees.star(3).expand(B, 3).contiguous()
    u = torch.rand(B, 4, generator=g)
    u[:, 0] = 0.95  # above every first weight (the scale)
    u[:, 1] = torch.linspace(0.0, 0.99, B)
    for dtype in (torch.float32, torch.bfloat16):
        ref = _exact(program, tmp_path, ids, parents, p.to(dtype), q.to(dtype), f"fallback {dtype}",
                     uniforms=u, draft_sampling="with_replacement", rule="traversal")  # fmt: skip
        assert ref.accepted_nodes[:, 0].tolist() == [1] * B, ref.accepted_nodes.tolist()


def test_traversal_philox_coins_and_int32_ids(program, tmp_path):
    """Without uniforms node i's coin is the kernel's Philox draw ``(seed, offset, b, i)`` and the
    last coin ``i = N``, as ``_cuda_build.philox_uniforms`` computes them: the reference with those
    coins gives the same output (int32 ids)."""
    B, N, V = 24, 8, 6
    ids, parents, counts, p, q, _ = traversal_batch(B, N, V, 41)
    seed, offset = 0x1234_5678_9ABC, 40
    kw = dict(num_nodes=counts, draft_sampling="with_replacement", rule="traversal")
    tokens, num, nodes, status = _run(program, tmp_path, ids.to(torch.int32), parents, p, q,
                                      philox=(seed, offset), **kw)  # fmt: skip
    coins = _cuda_build.philox_uniforms(seed, offset, B, N)
    ref = reference_verify_tree(ids, parents, p, q, uniforms=coins, **kw)
    assert torch.equal(status, ref.status) and torch.equal(num, ref.num_emitted)
    assert torch.equal(nodes, ref.accepted_nodes) and torch.equal(tokens, ref.token_ids)
    assert len(set(num.tolist())) > 1


def _token_batch(B, N, V, seed, dtype=torch.float32):
    """Random trees with distinct sibling tokens and full draft rows (every rule of the token
    walk can read them)."""
    g = torch.Generator().manual_seed(seed)
    ids, parents, counts, p, q, u = traversal_batch(B, N, V, seed, dtype=torch.float64)
    p = torch.rand(B, N, V, generator=g, dtype=torch.float64) ** 3 + 1e-3
    for b in range(B):
        n = int(counts[b])
        for kids in trees.children(parents[b, :n]) if n else []:
            ids[b, kids] = torch.randperm(V, generator=g)[: len(kids)]
    p = (p / p.sum(-1, keepdim=True)).to(dtype)
    return ids, parents, counts, p, q.to(dtype), u


@pytest.mark.parametrize(
    ("mode", "sampling"),
    [("random", None), ("random", "with_replacement"), ("random", "without_replacement"),
     ("greedy", None)],
)  # fmt: skip
@pytest.mark.parametrize(("N", "V", "dtype"), [(6, 8, torch.float32), (9, 300, torch.bfloat16)])
def test_token_rule_exact(program, tmp_path, mode, sampling, N, V, dtype):
    """The token rule's kernel (one block per request): target-only, recursive rejection
    sampling with and without replacement, greedy; the reference's tokens exactly."""
    ids, parents, counts, p, q, u = _token_batch(24, N, V, 10 + N, dtype)
    kw = dict(num_nodes=counts, mode=mode)
    if mode == "random":
        kw["uniforms"] = u
    if sampling is not None:
        kw["draft_sampling"] = sampling
    _exact(program, tmp_path, ids, parents, p if sampling else None, q, f"{mode} {sampling}", **kw)


def test_greedy_traversal_is_the_token_walk(program, tmp_path):
    """Greedy mode under rule="traversal" runs the token kernel's walk: the reference's tokens."""
    ids, parents, counts, p, q, _ = _token_batch(16, 7, 6, 21)
    _exact(program, tmp_path, ids, parents, p, q, "greedy traversal", num_nodes=counts,
           mode="greedy", rule="traversal")  # fmt: skip
