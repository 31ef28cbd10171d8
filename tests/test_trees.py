"""Tree utilities (specsample.trees): layouts, converters, masks, the EAGLE-2 builder, workloads."""

from __future__ import annotations

import math

import pytest
import torch
from specsample import trees as T

INF = math.inf


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def some_trees() -> list[torch.Tensor]:
    out = [
        T.chain(0),
        T.chain(1),
        T.chain(5),
        T.star(4),
        T.balanced_tree(2, 3),
        T.balanced_tree(3, 2),
    ]
    out += [T.random_tree(n, gen(s)) for s in range(12) for n in (1, 2, 7, 20, 45)]
    out += [
        T.eagle2_shaped(k, d, n, gen(k + d + n))
        for k, d, n in [(4, 4, 8), (4, 6, 16), (8, 5, 32), (10, 8, 64)]
    ]
    return out


# --------------------------------------------------------------------------------------------------
# Generators and structure, worked by hand
# --------------------------------------------------------------------------------------------------


def test_small_generators_by_hand():
    assert T.chain(4).tolist() == [-1, 0, 1, 2] and T.chain(4).dtype == torch.int64
    assert T.chain(0).shape == (0,)
    assert T.star(3).tolist() == [-1, -1, -1]
    #        root
    #       /    \
    #      0      1
    #     / \    / \
    #    2   3  4   5
    assert T.balanced_tree(2, 2).tolist() == [-1, -1, 0, 0, 1, 1]
    assert T.balanced_tree(3, 3).shape == (3 + 9 + 27,)
    assert T.balanced_tree(5, 0).shape == (0,)


def test_random_tree_is_topological_seeded_and_uses_every_choice():
    a, b = T.random_tree(30, gen(3)), T.random_tree(30, gen(3))
    assert torch.equal(a, b)
    T.validate_parents(a)
    # node 1's parent is -1 or 0; over many seeds both occur
    seen = {int(T.random_tree(2, gen(s))[1]) for s in range(40)}
    assert seen == {-1, 0}


def test_depths_positions_children_by_hand():
    # root -> a(0), b(1); a -> c(2); c -> d(3)
    p = torch.tensor([-1, -1, 0, 2])
    assert T.depths(p).tolist() == [1, 1, 2, 3]
    assert T.positions(p).tolist() == [0, 1, 1, 2, 3]
    assert T.positions(p, start=7).tolist() == [7, 8, 8, 9, 10]
    assert T.children(p) == [[0, 1], [2], [], [3], []]
    batch = torch.stack([p, T.chain(4)])
    assert T.depths(batch).tolist() == [[1, 1, 2, 3], [1, 2, 3, 4]]
    assert T.positions(batch).shape == (2, 5)
    assert T.positions(T.chain(0), start=3).tolist() == [3]  # the root alone
    assert T.positions(torch.zeros(2, 0, dtype=torch.int64)).tolist() == [[0], [0]]


def test_validate_parents_names_request_and_node():
    T.validate_parents(torch.tensor([-1, 0, 0, 1]))
    with pytest.raises(ValueError, match=r"node 2: parents = 2; expected -1 .* < 2"):
        T.validate_parents(torch.tensor([-1, 0, 2]))
    with pytest.raises(ValueError, match=r"request 1, node 1: parents = 3"):
        T.validate_parents(torch.tensor([[-1, 0, 1, 2], [-1, 3, 0, 0]]))
    with pytest.raises(ValueError, match=r"request 0, node 0: parents = -2"):
        T.validate_parents(torch.tensor([[-2, 0]]))
    # padding entries are ignored
    bad_tail = torch.tensor([[-1, 0, 9, 9], [-1, -1, -1, 0]])
    T.validate_parents(bad_tail, num_nodes=torch.tensor([2, 4]))
    with pytest.raises(ValueError, match=r"request 0, node 2"):
        T.validate_parents(bad_tail, num_nodes=torch.tensor([3, 4]))
    with pytest.raises(
        ValueError, match=r"request 1: num_nodes = 5; expected a value in \[0, N=4\]"
    ):
        T.validate_parents(bad_tail, num_nodes=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"num_nodes must have shape \[2\]"):
        T.validate_parents(bad_tail, num_nodes=torch.tensor([1]))
    with pytest.raises(TypeError, match="parents must be int64"):
        T.validate_parents(torch.tensor([-1.0, 0.0]))
    with pytest.raises(ValueError, match=r"parents must have shape \[N\] or \[B, N\]"):
        T.validate_parents(torch.zeros(1, 1, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="K = -1"):
        T.chain(-1)


# --------------------------------------------------------------------------------------------------
# Engine layouts
# --------------------------------------------------------------------------------------------------

# root with children a (node 0, position 1) and b (node 1, position 2); a has child c (node 2, pos 3)
ABC = torch.tensor([-1, -1, 0])


def test_sglang_layout_by_hand():
    nxt, sib = T.to_sglang(ABC)
    #                       root  a   b   c
    assert nxt.tolist() == [1, 3, -1, -1]  # root -> a, a -> c
    assert sib.tolist() == [-1, 2, -1, -1]  # a -> b
    assert torch.equal(T.from_sglang(nxt, sib), ABC)


def test_retrieve_indices_by_hand():
    r = T.to_retrieve_indices(ABC)
    # leaves in node order: b (node 1), c (node 2)
    assert r.tolist() == [[0, 2, -1], [0, 1, 3]]
    assert torch.equal(T.from_retrieve_indices(r), ABC)
    # a Medusa-style matrix with rows in another order and a non-leaf path also decodes
    r2 = torch.tensor([[0, 1, 3], [0, 1, -1], [0, 2, -1]])
    assert torch.equal(T.from_retrieve_indices(r2), ABC)
    assert T.to_retrieve_indices(T.chain(0)).tolist() == [[0]]
    assert T.to_retrieve_indices(T.chain(3)).tolist() == [[0, 1, 2, 3]]
    assert T.to_retrieve_indices(T.star(2)).tolist() == [[0, 1], [0, 2]]


def test_round_trips_on_many_trees():
    for p in some_trees():
        nxt, sib = T.to_sglang(p)
        assert nxt.shape == (p.shape[0] + 1,)
        assert torch.equal(T.from_sglang(nxt, sib), p)
        assert torch.equal(T.from_retrieve_indices(T.to_retrieve_indices(p)), p)
        r = T.to_retrieve_indices(p)
        assert r.shape[1] == (int(T.depths(p).max()) + 1 if p.numel() else 1)


def test_sglang_batched_with_padding():
    p = torch.tensor([[-1, 0, 0, 1], [-1, -1, 7, 7]])  # request 1: two real nodes, garbage tail
    n = torch.tensor([4, 2])
    nxt, sib = T.to_sglang(p, n)
    assert nxt.tolist() == [[1, 2, 4, -1, -1], [1, -1, -1, -1, -1]]
    assert sib.tolist() == [[-1, -1, 3, -1, -1], [-1, 2, -1, -1, -1]]
    back = T.from_sglang(nxt, sib, n)
    assert back.tolist() == [[-1, 0, 0, 1], [-1, -1, -1, -1]]
    with pytest.raises(ValueError, match=r"request 1, position 3 is not reached"):
        T.from_sglang(nxt, sib)  # without num_nodes, request 1's tail is unreachable


def test_from_sglang_rejects_bad_layouts():
    with pytest.raises(ValueError, match="position 2 is not reached from the root"):
        T.from_sglang(torch.tensor([1, -1, -1]), torch.tensor([-1, -1, -1]))
    with pytest.raises(ValueError, match="position 1 is a child of position 2"):
        T.from_sglang(torch.tensor([2, -1, 1]), torch.tensor([-1, -1, -1]))
    with pytest.raises(
        ValueError,
        match=r"position 0: retrive_next_token = 5; expected -1 or a position in \[1, 2\]",
    ):
        T.from_sglang(torch.tensor([5, -1, -1]), torch.tensor([-1, -1, -1]))
    with pytest.raises(ValueError, match="siblings must be in increasing order"):
        T.from_sglang(torch.tensor([2, -1, -1]), torch.tensor([-1, -1, 1]))
    with pytest.raises(ValueError, match="expected the same"):
        T.from_sglang(torch.tensor([1, -1]), torch.tensor([-1, -1, -1]))


def test_from_retrieve_indices_rejects_bad_matrices():
    with pytest.raises(
        ValueError, match=r"retrieve_indices\[0, 0\] = 1; every path starts at the root"
    ):
        T.from_retrieve_indices(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"\[1, 2\]: position 3 has parent 2 here but 1"):
        T.from_retrieve_indices(torch.tensor([[0, 1, 3], [0, 2, 3]]))
    with pytest.raises(ValueError, match="position 1 appears in no row"):
        T.from_retrieve_indices(torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match=r"\[0, 2\] = 2 follows -1 padding"):
        T.from_retrieve_indices(torch.tensor([[0, -1, 2]]))
    with pytest.raises(ValueError, match="positions must increase along a path"):
        T.from_retrieve_indices(torch.tensor([[0, 2, 1]]))


# --------------------------------------------------------------------------------------------------
# Attention masks
# --------------------------------------------------------------------------------------------------


def unpack(words: torch.Tensor, T_: int) -> torch.Tensor:
    out = torch.zeros(*words.shape[:-1], T_, dtype=torch.bool)
    for j in range(T_):
        out[..., j] = ((words[..., j // 32].to(torch.int64) >> (j % 32)) & 1).bool()
    return out


def test_masks_by_hand():
    F, Tr = False, True
    full = T.attention_mask(ABC, prefix_len=2)
    #                     prefix    a   b   c
    assert full.tolist() == [
        [Tr, Tr, Tr, F, F],  # a: itself
        [Tr, Tr, F, Tr, F],  # b: itself
        [Tr, Tr, Tr, F, Tr],  # c: a and itself
    ]
    assert torch.equal(T.attention_mask(ABC), full[:, 2:])
    assert T.packed_attention_mask(ABC).tolist() == [[0b001], [0b010], [0b101]]
    # over positions (root first), as SGLang packs them
    assert T.packed_attention_mask(ABC, include_root=True).tolist() == [
        [0b0001],
        [0b0011],
        [0b0101],
        [0b1011],
    ]
    assert T.attention_mask(ABC, 1, include_root=True).shape == (4, 5)


def test_mask_forms_agree_and_bit_31_wraps():
    for p in [*some_trees(), T.chain(33), T.chain(70)]:
        N = p.shape[0]
        q = T.attention_mask(p)
        full = T.attention_mask(p, prefix_len=3)
        assert full.shape == (N, N + 3) and full[:, :3].all() and torch.equal(full[:, 3:], q)
        packed = T.packed_attention_mask(p)
        assert packed.dtype == torch.int32 and packed.shape == (N, max(1, math.ceil(N / 32)))
        assert torch.equal(unpack(packed, N), q)
        assert torch.equal(q.sum(-1), T.depths(p))  # a node sees its depth's worth of tree tokens
        assert torch.equal(
            unpack(T.packed_attention_mask(p, include_root=True), N + 1),
            T.attention_mask(p, include_root=True),
        )
    row31 = T.packed_attention_mask(T.chain(33))[31]
    assert row31.tolist() == [-1, 0]  # bits 0..31 set
    assert T.packed_attention_mask(T.chain(33))[32].tolist() == [-1, 1]


def test_masks_batched():
    p = torch.stack([ABC, T.chain(3)])
    m = T.attention_mask(p, 1)
    assert m.shape == (2, 3, 4)
    assert torch.equal(m[0], T.attention_mask(ABC, 1)) and torch.equal(
        m[1], T.attention_mask(T.chain(3), 1)
    )
    assert T.packed_attention_mask(p)[1].tolist() == [[1], [3], [7]]


# --------------------------------------------------------------------------------------------------
# EAGLE-2 builder
# --------------------------------------------------------------------------------------------------

# topk = 2, depth = 3, width = topk**2 = 4; flat candidate index = step * 4 + j.
# step 0: the root's children 0 (-0.1) and 1 (-2.0); slots 2, 3 unused.
# step 1: beams 0 and 1 -> children 4 (-0.3), 5 (-1.6) of 0 and 6 (-2.1), 7 (-5.0) of 1.
# step 2: beams 4 and 5 -> children 8 (-0.6), 9 (-2.8) of 4 and 10 (-1.8), 11 (-5.6) of 5.
SCORES = torch.tensor(
    [
        [-0.1, -2.0, -INF, -INF],
        [-0.3, -1.6, -2.1, -5.0],
        [-0.6, -2.8, -1.8, -5.6],
    ]
)
PARENTS = torch.tensor([[-1, -1, -1, -1], [0, 0, 1, 1], [4, 4, 5, 5]])


def test_eagle2_builder_by_hand():
    # the five best: 0 (-0.1), 4 (-0.3), 8 (-0.6), 5 (-1.6), 10 (-1.8); in candidate order
    cand, par = T.build_eagle2_tree(SCORES, PARENTS, 5)
    assert cand.tolist() == [0, 4, 5, 8, 10]
    assert par.tolist() == [-1, 0, 0, 1, 2]
    # what SGLang's builder outputs for this selection (root = position 0, seq_len 7)
    nxt, sib = T.to_sglang(par)
    assert nxt.tolist() == [1, 2, 4, 5, -1, -1]
    assert sib.tolist() == [-1, -1, 3, -1, -1, -1]
    assert T.positions(par, start=7).tolist() == [7, 8, 9, 9, 10, 10]
    # one more node: candidate 1 (-2.0) joins as a second child of the root
    cand, par = T.build_eagle2_tree(SCORES, PARENTS, 6)
    assert cand.tolist() == [0, 1, 4, 5, 8, 10] and par.tolist() == [-1, -1, 0, 0, 2, 3]
    assert T.build_eagle2_tree(SCORES, PARENTS, 0)[0].shape == (0,)


def test_candidates_from_sglang_by_hand():
    # the same draft as SCORES / PARENTS in SGLang's per-step lists (one request). SGLang numbers
    # candidates over all steps flattened: step 0 -> 0, 1; step 1 -> 2..5; step 2 -> 6..9.
    score_list = [
        torch.tensor([[[-0.1, -2.0]]]),  # [B, 1, topk]: the root's children
        torch.tensor([[[-0.3, -1.6], [-2.1, -5.0]]]),  # children of beams 0 and 1
        torch.tensor([[[-0.6, -2.8], [-1.8, -5.6]]]),  # children of beams 2 and 3 (ours: 4 and 5)
    ]
    parents_list = [
        torch.tensor([[-1, 0, 1]]),  # step 0: the root, then the step's beams 0 and 1
        torch.tensor([[2, 3]]),  # the beams expanded by step 2
        torch.tensor([[6, 8]]),  # the next step's beams: not read
    ]
    scores, parents = T.candidates_from_sglang(score_list, parents_list, topk=2)
    assert torch.equal(scores[0], SCORES) and torch.equal(parents[0], PARENTS)
    cand, par = T.build_eagle2_tree(scores, parents, 5)
    assert cand.tolist() == [[0, 4, 5, 8, 10]] and par.tolist() == [[-1, 0, 0, 1, 2]]
    with pytest.raises(
        ValueError, match=r"score_list\[1\] has shape \(1, 2, 3\); expected \(1, 2, 2\)"
    ):
        T.candidates_from_sglang([score_list[0], torch.zeros(1, 2, 3)], parents_list[:2], topk=2)
    with pytest.raises(
        ValueError,
        match=r"request 0: parents_list entry 4 .* = 10; expected a candidate index in \[0, 10\)",
    ):
        T.candidates_from_sglang(
            score_list, [parents_list[0], torch.tensor([[2, 10]]), parents_list[2]], topk=2
        )


def test_eagle2_builder_batched_ties_and_connectivity():
    # a child scoring above its parent: the global top-2 (2 and 0) is not a tree; the builder
    # only takes candidates whose parent is taken
    s = torch.tensor([[-1.0, -3.0], [-0.5, -INF]])
    pa = torch.tensor([[-1, -1], [1, -1]])
    cand, par = T.build_eagle2_tree(s, pa, 2)
    assert cand.tolist() == [0, 1] and par.tolist() == [-1, -1]
    cand, par = T.build_eagle2_tree(s, pa, 3)
    assert cand.tolist() == [0, 1, 2] and par.tolist() == [-1, -1, 1]
    # ties go to the smaller index
    tie = torch.tensor([[-1.0, -1.0, -1.0]])
    assert T.build_eagle2_tree(tie, torch.tensor([[-1, -1, -1]]), 2)[0].tolist() == [0, 1]
    # batched = each request alone
    both = T.build_eagle2_tree(
        torch.stack([SCORES, SCORES.flip(-1)]),
        torch.stack([PARENTS, torch.full_like(PARENTS, -1)]),
        4,
    )
    assert both[0][0].tolist() == T.build_eagle2_tree(SCORES, PARENTS, 4)[0].tolist()
    assert both[1][1].tolist() == [-1, -1, -1, -1]


def test_eagle2_builder_errors():
    with pytest.raises(ValueError, match="only 2 candidates are reachable"):
        T.build_eagle2_tree(
            torch.tensor([[-1.0, -INF], [-2.0, -1.0]]), torch.tensor([[-1, -1], [1, 0]]), 3
        )
    with pytest.raises(ValueError, match="request 1: scores holds NaN at candidate 1"):
        T.build_eagle2_tree(
            torch.tensor([[[-1.0, -2.0]], [[-1.0, math.nan]]]), torch.full((2, 1, 2), -1), 1
        )
    with pytest.raises(
        ValueError, match=r"parents_of_candidates\[1\] = 1; expected -1 or a candidate index < 1"
    ):
        T.build_eagle2_tree(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1, 1]]), 1)
    with pytest.raises(ValueError, match="expected the same"):
        T.build_eagle2_tree(SCORES, PARENTS[:2], 2)
    with pytest.raises(ValueError, match="num_nodes = 13 exceeds the 12 candidates"):
        T.build_eagle2_tree(SCORES, PARENTS, 13)


def test_eagle2_shaped_trees():
    for topk, depth, n in [(4, 4, 8), (6, 5, 16), (8, 6, 32), (10, 8, 64), (2, 3, 10)]:
        p = T.eagle2_shaped(topk, depth, n, gen(n))
        assert p.shape == (n,)
        T.validate_parents(p)
        assert int(T.depths(p).max()) <= depth
        assert max(len(c) for c in T.children(p)) <= topk
        assert torch.equal(p, T.eagle2_shaped(topk, depth, n, gen(n)))
    # the full candidate set: topk root children, topk * topk below each later level
    full = T.eagle2_shaped(2, 3, 10, gen(0))
    assert torch.bincount(T.depths(full)).tolist() == [0, 2, 4, 4]
    with pytest.raises(ValueError, match="n = 11 exceeds the 10 candidates"):
        T.eagle2_shaped(2, 3, 11)


def test_import_stays_light():
    import subprocess
    import sys

    code = "import sys, specsample.trees; print(any(m in sys.modules for m in ('triton', 'cupy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_docs_example_runs_and_matches_its_comments():
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "trees.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    ns: dict = {}
    exec(compile(block, "docs/trees.md", "exec"), ns)
    assert ns["candidates"].tolist() == [0, 4, 5] and ns["tree"].tolist() == [-1, 0, 0]
    assert "tensor([1, 3, -1, -1]), tensor([-1, 2, -1, -1])" in block
    assert ns["nxt"].tolist() == [1, 3, -1, -1] and ns["sib"].tolist() == [-1, 2, -1, -1]
    assert ns["paths"].tolist() == [[0, 2, -1], [0, 1, 3]]
