"""The ``triton`` backend under ``verify_tree(..., rule="traversal")``: the traversal kernel
(``backends/_triton_traversal.py``) against the float64 reference (``core/reference_traversal.py``).

Runs under triton's CPU interpreter, in a subprocess with ``TRITON_INTERPRET=1`` (set before triton
is imported), or directly when this process already is in interpreter mode; the compiled-kernel
tests run where a CUDA device exists. Shapes are small: the interpreter is slow.

The traversal rule in random mode needs trees drafted with replacement. Where the ``triton``
backend does not list ``"with_replacement"`` in ``Capabilities.tree_sampling`` (that sampling is
claimed together with the token rule's support for it), these tests verify through a subclass that
adds it, and call it with ``rule="traversal"`` only.
"""

from __future__ import annotations

import dataclasses

import pytest
import specsample
import torch
from specsample import trees
from specsample.conformance.tree_common import compare_tree, random_case
from specsample.reference_tree import reference_verify_tree
from triton_interpreter import HAVE_TRITON, in_interpreter, run_interpreter_suite

WR = "with_replacement"


def _interp() -> bool:
    return in_interpreter()


INNER = pytest.mark.skipif(
    not _interp(), reason="needs TRITON_INTERPRET=1 (run by test_traversal_interpreter_suite)"
)
GPU = [
    pytest.mark.gpu(needs=("triton",)),
    pytest.mark.skipif(_interp(), reason="the compiled kernel (not under the interpreter)"),
]
# Compiled on an H100 the kernel accepts less than the reference on some requests (the reason the
# GPU backend does not claim the rule, docs/backends/triton.md): strict, so a fix shows up as an
# unexpected pass and the claim can come back.
COMPILED_FAULT = pytest.mark.xfail(
    strict=True, reason="compiled traversal kernel not yet exact (docs/backends/triton.md)"
)


def _backend():
    """The triton backend, claiming random trees drafted with replacement (see the docstring) and
    the traversal rule (which the compiled kernel does not claim: see COMPILED_FAULT)."""
    be = specsample.get_backend("triton")
    caps = be.capabilities
    if WR in caps.tree_sampling and "traversal" in caps.tree_rules:
        return be
    from specsample.backends.triton_backend import TritonBackend

    class TritonTraversal(TritonBackend):
        capabilities = dataclasses.replace(
            caps,
            tree_sampling=tuple(dict.fromkeys((*caps.tree_sampling, WR))),
            tree_rules=tuple(dict.fromkeys((*caps.tree_rules, "traversal"))),
        )

    return TritonTraversal()


def _target(device="cpu"):
    from specsample.conformance.checks import Target

    return Target("triton", _backend(), "fast", torch.device(device))


def _run(case, **kw):
    """``(backend output, reference output)`` of ``rule="traversal"`` on a TreeCase."""
    args = (case.ids, case.parents, case.p, case.q)
    kw = dict(draft_sampling=WR, num_nodes=case.num_nodes, rule="traversal", **kw)
    kw.setdefault("uniforms", case.u)
    return _backend().verify_tree(*args, **kw), reference_verify_tree(*args, **kw)


def _assert_equal(out, ref):
    for name in ("status", "num_emitted", "accepted_nodes", "token_ids"):
        a, b = getattr(out, name).cpu(), getattr(ref, name).cpu()
        assert torch.equal(a, b), (name, a, b)


def _drawn_case(B, N, V, seed):
    """Random trees drafted as the rule assumes: every node's token drawn from its parent's draft
    row, with replacement (repeated sibling tokens occur), rows on a 1/64 grid with zeros."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(B, N, dtype=torch.int64)
    parents = torch.zeros(B, N, dtype=torch.int64)
    q = torch.zeros(B, N + 1, V)
    p = torch.zeros(B, N, V)
    for b in range(B):
        parents[b] = trees.random_tree(N, generator=g)
        for a in range(N + 1):
            q[b, a] = torch.distributions.Multinomial(64, torch.ones(V)).sample() / 64
        for kids in trees.children(parents[b]):
            row = torch.distributions.Multinomial(64, torch.ones(V)).sample() / 64
            for c in kids:
                p[b, c] = row
                ids[b, c] = int(torch.multinomial(row, 1, generator=g))
    u = torch.rand(B, N + 1, generator=g)
    return ids, parents, p, q, u


# ----------------------------------------------------------------------------- subprocess driver


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")
def test_traversal_interpreter_suite():
    """The interpreter tests of this file, in a subprocess with TRITON_INTERPRET=1."""
    if _interp():
        pytest.skip("already in interpreter mode: the tests run directly")
    run_interpreter_suite(__file__, timeout=900)


# ----------------------------------------------------------------------------- interpreter (CPU)


def _compare(out, ref, args, kw):
    """Status, ``num_emitted``, ``accepted_nodes`` and the accepted tokens equal the reference's;
    the last token may differ only where the reference with the last coin moved by
    ``cdf_epsilon(V)`` either way brackets it (the conformance suite's near-tie excuse). Returns
    the number of such near-tie differences."""
    from specsample.conformance.check_common import cdf_epsilon

    for name in ("status", "num_emitted", "accepted_nodes"):
        assert torch.equal(getattr(out, name).cpu(), getattr(ref, name).cpu()), name
    got, want = out.token_ids.cpu(), ref.token_ids.cpu()
    rows = torch.nonzero((got != want).any(dim=1)).flatten().tolist()
    if rows:
        u, N, eps = kw["uniforms"], args[0].shape[1], cdf_epsilon(args[3].shape[-1])
        lo_u, hi_u = u.clone(), u.clone()
        lo_u[:, N] = (lo_u[:, N] - eps).clamp(min=0.0)
        hi_u[:, N] = (hi_u[:, N] + eps).clamp(max=1.0 - 2.0**-24)
        lo = reference_verify_tree(*args, **{**kw, "uniforms": lo_u}).token_ids.cpu()
        hi = reference_verify_tree(*args, **{**kw, "uniforms": hi_u}).token_ids.cpu()
        for b in rows:
            j = int(ref.num_emitted[b]) - 1
            assert torch.equal(got[b, :j], want[b, :j]), (b, got[b], want[b])
            assert lo[b, j] <= got[b, j] <= hi[b, j], (b, got[b], want[b], lo[b], hi[b])
    return len(rows)


@INNER
def test_interp_traversal_drawn_trees_are_exact():
    """Trees drafted with replacement (repeated sibling tokens: the same token tried twice under a
    parent, against its updated row): every output equals the reference, last token included."""
    torch.manual_seed(0)  # the Multinomial rows
    ids, parents, p, q, u = _drawn_case(24, 7, 5, seed=1)
    repeated = sum(
        len(kids) > len({int(ids[b, c]) for c in kids})
        for b in range(24)
        for kids in trees.children(parents[b])
    )
    assert repeated > 5
    out = _backend().verify_tree(
        ids, parents, p, q, draft_sampling=WR, uniforms=u, rule="traversal"
    )
    ref = reference_verify_tree(ids, parents, p, q, draft_sampling=WR, uniforms=u, rule="traversal")
    _assert_equal(out, ref)
    assert (ref.status == 0).all() and (ref.num_emitted > 1).any() and (ref.num_emitted == 1).any()


@INNER
@pytest.mark.parametrize(
    "kinds, B, N, V, seed",
    [
        (["balanced", "eagle2", "star", "chain", "random"], 30, 12, 9, 3),
        (["random", "eagle2"], 8, 20, 1500, 4),  # two tiles per row
    ],
)
def test_interp_traversal_random_trees(kinds, B, N, V, seed):
    """Random float32 trees padded with num_nodes: status, path and accepted nodes exactly the
    reference's, the last token within the conformance suite's near-tie excuse (the reference
    with the last coin moved by cdf_epsilon(V) either way must bracket it). Near ties need a coin
    within about 1e-6 of a CDF boundary: on these cases none occurs, and a count above 1 fails."""
    case = random_case(kinds, B, N, V, seed)
    near = compare_tree(_target(), case, "random", WR, "traversal")
    assert near <= 1, f"{near} near-tie differences in {B} requests"


@INNER
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_interp_traversal_half_precision(dtype):
    case = random_case(["random", "balanced"], 10, 8, 40, 5)
    args = (case.ids, case.parents, case.p.to(dtype), case.q.to(dtype))
    kw = dict(draft_sampling=WR, num_nodes=case.num_nodes, rule="traversal", uniforms=case.u)
    out = _backend().verify_tree(*args, **kw)
    assert _compare(out, reference_verify_tree(*args, **kw), args, kw) <= 1


@INNER
def test_interp_traversal_chain_is_the_block_kernel():
    """On a chain the rule is block verification: verify_tree equals verify(rule="block") token
    for token, with explicit coins and with the same generator seed (the same Philox counters)."""
    g = torch.Generator().manual_seed(6)
    B, K, V = 32, 4, 30
    q = torch.softmax(torch.randn(B, K + 1, V, generator=g) * 2, -1)
    p = torch.softmax(torch.randn(B, K, V, generator=g) * 2, -1)
    ids = torch.multinomial(p.reshape(B * K, V), 1, generator=g).reshape(B, K)
    u = torch.rand(B, K + 1, generator=g)
    parents = trees.chain(K).expand(B, K).contiguous()
    be = _backend()
    outs = []
    for kw in ({"uniforms": u}, {"generator": torch.Generator().manual_seed(8)}):
        chain = be.verify(ids, p, q, rule="block", **kw)
        kw = {
            k: (torch.Generator().manual_seed(8) if k == "generator" else v) for k, v in kw.items()
        }
        tree = be.verify_tree(ids, parents, p, q, draft_sampling=WR, rule="traversal", **kw)
        assert torch.equal(tree.token_ids, chain.token_ids)
        assert torch.equal(tree.num_emitted, chain.num_emitted)
        outs.append(tree)
    assert len(set(outs[0].num_emitted.tolist())) > 2  # several accepted lengths occur


@INNER
def test_interp_traversal_zero_residuals_fall_back():
    """p = q on a chain with q_0(x_0) = 0: every weight is 0, every residual is all zero (the
    rows themselves are kept, renormalized), the root's new weight is 0/0 -> 1, and the last token
    is drawn from q_0."""
    g = torch.Generator().manual_seed(9)
    B, N, V = 4, 3, 50
    q = torch.softmax(torch.randn(B, N + 1, V, generator=g), -1)
    ids = torch.randint(0, V, (B, N), generator=g)
    q[torch.arange(B), 0, ids[:, 0]] = 0
    p = q[:, :N].clone()
    u = torch.rand(B, N + 1, generator=g)
    parents = trees.chain(N).expand(B, N).contiguous()
    out = _backend().verify_tree(
        ids, parents, p, q, draft_sampling=WR, uniforms=u, rule="traversal"
    )
    ref = reference_verify_tree(ids, parents, p, q, draft_sampling=WR, uniforms=u, rule="traversal")
    _assert_equal(out, ref)
    assert (out.num_emitted == 1).all() and (out.status == 0).all()


@INNER
def test_interp_traversal_status():
    """Bad values flag a request where the rule reads them (docs/rules.md, traversal "Status"),
    exactly as the reference does: rows of positions with children and the first child's draft row
    in full, a leaf's row only when that leaf is accepted."""
    S = specsample.Status
    B, V = 10, 16
    parents = torch.tensor([[-1, 0, 0, -1]] * B)  # node 0 has children 1, 2; node 3 is a leaf
    g = torch.Generator().manual_seed(2)
    q = torch.softmax(torch.randn(B, 5, V, generator=g), -1)
    p = torch.softmax(torch.randn(B, 4, V, generator=g), -1)
    p[:, 2] = p[:, 1]  # siblings share their draft row
    p[:, 3] = p[:, 0]
    ids = torch.randint(0, V, (B, 4), generator=g)
    rb = torch.arange(B)
    for node, pos in ((0, 0), (1, 1), (2, 1)):  # weight 0: nodes 1, 2, then 0 are rejected
        q[rb, pos, ids[:, node]] = 0.0
    # node 3, tried last, where the root's residual is largest (smallest: weight 0, in request 7)
    ids[:, 3] = (q[:, 0] - p[:, 0]).argmax(-1)
    ids[7, 3] = (q[7, 0] - p[7, 0]).argmin()
    u = torch.full((B, 5), 0.999)
    u[:, 4] = 0.5
    ids[0, 2] = V  # BAD_DRAFT_ID
    q[1, 1, 3] = float("nan")  # node 0's row (its children's target row): BAD_TARGET
    p[2, 1, 0] = -1.0  # the first child's draft row: BAD_DRAFT
    p[3, 2, 0] = float("nan")  # the second child's draft row: never read
    q[4, 0, 1] = float("inf")
    p[4, 0, 1] = float("nan")  # both bits
    u[5, 4] = 1.0  # BAD_UNIFORM (the last coin)
    u[6, 3] = 0.0  # node 3 (a leaf, tried last) is accepted
    q[6, 4, 0] = float("nan")  # ... its row is read: BAD_TARGET
    q[7, 4, 0] = float("nan")  # node 3 rejected: its row is never read
    parents[8, 2] = 2  # BAD_TREE (a parent that is not an earlier node)
    q[9, 3, 0] = float("nan")  # leaf 2's row; node 2 is rejected (coin 0.999): not read
    out = _backend().verify_tree(
        ids, parents, p, q, draft_sampling=WR, uniforms=u, rule="traversal"
    )
    ref = reference_verify_tree(ids, parents, p, q, draft_sampling=WR, uniforms=u, rule="traversal")
    _assert_equal(out, ref)
    st = out.status.tolist()
    assert st[0] == S.BAD_DRAFT_ID and st[5] == S.BAD_UNIFORM and st[8] == S.BAD_TREE
    assert st[1] == st[6] == S.BAD_TARGET_VALUE and st[2] == S.BAD_DRAFT_VALUE
    assert st[4] == S.BAD_TARGET_VALUE | S.BAD_DRAFT_VALUE
    assert st[3] == st[7] == st[9] == 0
    assert out.accepted_nodes[7].tolist() == [-1] * 4 and out.num_emitted[7] == 1
    assert out.accepted_nodes[3].tolist() == [3, -1, -1, -1]


@INNER
def test_interp_traversal_greedy_is_the_token_walk():
    case = random_case(["balanced", "random"], 12, 10, 20, 7)
    be = _backend()
    kw = dict(mode="greedy", num_nodes=case.num_nodes)
    a = be.verify_tree(case.ids, case.parents, None, case.q, rule="traversal", **kw)
    b = be.verify_tree(case.ids, case.parents, None, case.q, **kw)
    _assert_equal(a, b)


# ----------------------------------------------------------------------------- compiled (CUDA)


@pytest.mark.parametrize(
    "kinds, B, N, V",
    [
        (["balanced", "eagle2", "star", "chain", "random"], 200, 16, 300),
        (["eagle2", "random"], 64, 64, 32000),
        (["random"], 2, 24, 128256),
    ],
)
@GPU[0]
@GPU[1]
@COMPILED_FAULT
def test_compiled_traversal_exact(kinds, B, N, V):
    case = random_case(kinds, B, N, V, seed=B + N)
    target = _target("cuda")
    assert compare_tree(target, case, "random", WR, "traversal") <= max(1, B // 100)
    dev = torch.device("cuda")
    args = (c.to(dev) for c in (case.ids, case.parents, case.p.bfloat16(), case.q.bfloat16()))
    args = tuple(args)
    kw = dict(
        draft_sampling=WR, num_nodes=case.num_nodes.to(dev), rule="traversal",
        uniforms=case.u.to(dev),
    )  # fmt: skip
    out = _backend().verify_tree(*args, **kw)
    assert _compare(out, reference_verify_tree(*args, **kw), args, kw) <= max(1, B // 100)


@GPU[0]
@GPU[1]
@COMPILED_FAULT
def test_compiled_traversal_dyadic_and_chain():
    torch.manual_seed(0)
    ids, parents, p, q, u = _drawn_case(64, 12, 7, seed=2)
    dev = "cuda"
    args = [t.to(dev) for t in (ids, parents, p, q)]
    out = _backend().verify_tree(*args, draft_sampling=WR, uniforms=u.to(dev), rule="traversal")
    ref = reference_verify_tree(*args, draft_sampling=WR, uniforms=u.to(dev), rule="traversal")
    _assert_equal(out, ref)

    g = torch.Generator().manual_seed(3)
    B, K, V = 256, 6, 1000
    q = torch.softmax(torch.randn(B, K + 1, V, generator=g) * 2, -1).to(dev)
    p = torch.softmax(torch.randn(B, K, V, generator=g) * 2, -1).to(dev)
    ids = torch.multinomial(p.reshape(B * K, V), 1).reshape(B, K)
    chain = trees.chain(K, device=dev).expand(B, K).contiguous()
    be = _backend()
    a = be.verify(ids, p, q, rule="block", generator=torch.Generator(dev).manual_seed(4))
    b = be.verify_tree(
        ids, chain, p, q, draft_sampling=WR, rule="traversal",
        generator=torch.Generator(dev).manual_seed(4),
    )  # fmt: skip
    assert torch.equal(a.token_ids, b.token_ids)


@GPU[0]
@GPU[1]
def test_compiled_traversal_one_launch_and_graph_replay():
    """One kernel launch per call; under CUDA graph capture each replay draws fresh coins."""
    from torch.profiler import ProfilerActivity, profile

    be = _backend()
    case = random_case(["eagle2", "random"], 64, 32, 32000, seed=11)
    c = case.to(torch.device("cuda"), torch.float32)
    args = (c.ids, c.parents, c.p, c.q)
    kw = dict(draft_sampling=WR, num_nodes=c.num_nodes, rule="traversal")
    for _ in range(2):
        be.verify_tree(*args, **kw)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            be.verify_tree(*args, **kw)
        torch.cuda.synchronize()
    ops = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(ops) == 5, sorted({e.name for e in ops})

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        be.verify_tree(*args, **kw)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = be.verify_tree(*args, **kw)
    draws = []
    for _ in range(3):
        graph.replay()
        draws.append(out.token_ids.clone())
    torch.cuda.synchronize()
    assert len({tuple(d.flatten().tolist()) for d in draws}) == 3
