"""Backend.verify_tree on the PyTorch backends: the tree conformance checks pass, can fail on a
planted bug, and are not claimed without Capabilities.tree_modes; the fuzzer makes tree cases."""

from __future__ import annotations

import dataclasses

import pytest
import specsample
import torch
from specsample import Status
from specsample.conformance.check_tree import tree_boundaries, tree_lossless_exact
from specsample.conformance.checks import CheckFailed, NotClaimed, Target, check_names, run_check
from specsample.contract import Backend, Capabilities
from specsample.fuzz import run_fuzz
from specsample.fuzz_cases import make_case

TREE_CHECKS = [n for n in check_names("fast") if n.startswith("tree.")]


@pytest.mark.parametrize("name", ["torch-loop", "torch-vectorized"])
def test_tree_checks_pass(name):
    claims = specsample.get_backend(name).capabilities.tree_rules
    for check in TREE_CHECKS:
        result = run_check(name, check, "fast")
        if check == "tree.traversal-exact" and "traversal" not in claims:
            assert result.outcome == "not-claimed", (check, result.details)
            continue
        assert result.outcome == "pass", (check, result.details)


def test_every_tree_check_is_registered():
    assert set(TREE_CHECKS) == {
        "tree.chain", "tree.exact", "tree.boundaries", "tree.repeated-siblings",
        "tree.lossless-exact", "tree.lossless-stats", "tree.bad-input", "tree.traversal-exact",
        "tree.acceptance-length",
    }  # fmt: skip


class _WrongSampling(specsample.get_backend("torch-loop").__class__):
    """Treats siblings drawn without replacement as if drawn with replacement."""

    name = "mutant-tree-sampling"

    def _verify_tree(self, inputs):
        if inputs.draft_sampling == "without_replacement":
            inputs = dataclasses.replace(inputs, draft_sampling="with_replacement")
        return super()._verify_tree(inputs)


class _OpenBucket(specsample.get_backend("torch-loop").__class__):
    """Target-only walk with an open lower bucket edge (lo < u), the coin-0 bug."""

    name = "mutant-tree-bucket"

    def _verify_tree(self, inputs):
        from specsample.backends import _tree_loop

        original = _tree_loop._target_only

        def shifted(ids, kids, q_row, coin):
            return original(ids, kids, q_row, coin if coin > 0 else -1.0)

        _tree_loop._target_only = shifted
        try:
            return super()._verify_tree(inputs)
        finally:
            _tree_loop._target_only = original


def test_planted_tree_bugs_fail_the_checks():
    cpu = torch.device("cpu")
    with pytest.raises(CheckFailed, match="without_replacement"):
        tree_lossless_exact(Target("m", _WrongSampling(), "fast", cpu))
    with pytest.raises(CheckFailed):
        tree_boundaries(Target("m", _OpenBucket(), "fast", cpu))


class _NoTrees(Backend):
    name = "no-trees"
    capabilities = Capabilities(status_flags=True)

    def _verify(self, inputs):
        raise AssertionError("not called")


def test_a_backend_without_tree_claims():
    be = _NoTrees()
    ids = torch.zeros((1, 1), dtype=torch.int64)
    q = torch.full((1, 2, 3), 1 / 3)
    with pytest.raises(ValueError, match="does not verify trees"):
        be.verify_tree(ids, torch.tensor([[-1]]), None, q)
    with pytest.raises(NotClaimed):
        tree_boundaries(Target("no-trees", be, "fast", torch.device("cpu")))


def test_arguments_and_status():
    be = specsample.get_backend("torch-vectorized")
    ids = torch.tensor([[1, 2], [1, 1]])
    parents = torch.tensor([[-1, 0], [-1, -1]])
    q = torch.full((2, 3, 4), 0.25)
    with pytest.raises(ValueError, match="rule must be one of"):
        be.verify_tree(ids, parents, None, q, rule="no-such-rule")
    with pytest.raises(ValueError, match="does not verify trees with rule='traversal'"):
        p = torch.full((2, 2, 4), 0.25)
        be.verify_tree(ids, parents, p, q, draft_sampling="with_replacement", rule="traversal")
    with pytest.raises(ValueError, match="draft_sampling must be one of"):
        be.verify_tree(ids, parents, torch.full((2, 2, 4), 0.25), q)
    out = be.verify_tree(ids, parents, None, q, uniforms=torch.zeros(2, 3))
    assert out.status.tolist() == [0, int(Status.REPEATED_SIBLING)]
    assert out.token_ids.shape == (2, 3) and out.accepted_nodes.shape == (2, 2)
    assert out.token_ids.tolist() == [[1, 2, 0], [-1, -1, -1]]
    with pytest.raises(ValueError, match=r"request 1, node 1 repeats token 1"):
        be.verify_tree(ids, parents, None, q, validate="full")
    empty = be.verify_tree(ids[:0], parents[:0], None, q[:0], max_depth=1)
    assert empty.token_ids.shape == (0, 2) and empty.accepted_nodes.shape == (0, 1)


def test_fuzz_makes_tree_cases_for_tree_backends():
    caps = specsample.get_backend("torch-loop").capabilities
    cases = [make_case(0, i, caps) for i in range(16)]
    assert sum(c.tree is not None for c in cases) == 4
    assert all(c.tree is None for c in (make_case(0, i, Capabilities()) for i in range(16)))
    result = run_fuzz("torch-loop", cases=40, seed=3)
    assert not result.divergences, result.summary()


@pytest.mark.parametrize("page", ["README.md", "docs/contract-trees.md"])
def test_the_tree_example_runs_and_matches_its_comments(page):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / page).read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "from_sglang" in b)
    ns: dict = {}
    exec(compile(block, page, "exec"), ns)
    out, parents = ns["out"], ns["parents"]
    assert parents.tolist() == [[-1, -1, 0]]
    assert out.accepted_nodes.tolist() == [[0, 2]] and out.token_ids.tolist() == [[2, 5, 3]]
    assert specsample.trees.to_retrieve_indices(parents[0]).tolist() == [[0, 2, -1], [0, 1, 3]]


def test_default_num_nodes_is_made_once_per_shape():
    """``num_nodes=None`` gives the same cached tensor on every call of one shape (a fill per call
    would be a second kernel launch beside a fused backend's one), and inputs are not modified."""
    from specsample.validation_tree import full_tree_counts, validate_tree_inputs

    ids = torch.tensor([[1, 2, 3]])
    parents = torch.tensor([[-1, 0, 0]])
    q = torch.full((1, 4, 5), 0.2)
    a = validate_tree_inputs(ids, parents, None, q)
    b = validate_tree_inputs(ids, parents, None, q)
    assert a.num_nodes is b.num_nodes and a.num_nodes.tolist() == [3]
    assert full_tree_counts(2, 3, q.device) is not a.num_nodes  # another shape, another tensor
    out = specsample.get_backend("torch-vectorized").verify_tree(ids, parents, None, q)
    assert a.num_nodes.tolist() == [3] and out.num_emitted.shape == (1,)
