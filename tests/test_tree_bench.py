"""``specsample bench --tree``: the tree grid runs, records its floor from the walks, and refuses
the chain-only flags."""

from __future__ import annotations

import json

import pytest
import torch
from specsample import cli, trees
from specsample.reports.tree_bench import KINDS, must_read_bytes, tree_workload


@pytest.mark.parametrize("kind", KINDS)
def test_workload_drafts_valid_trees(kind):
    args = tree_workload(kind, batch=3, nodes=16, vocab=200, seed=1, device="cpu")
    ids, parents = args["draft_token_ids"], args["parents"]
    assert ids.shape == parents.shape == (3, 16) and args["target_probs"].shape == (3, 17, 200)
    for b in range(3):
        trees.validate_parents(parents[b])
        for kids in trees.children(parents[b]):
            tokens = ids[b, kids].tolist()
            assert len(set(tokens)) == len(tokens)  # distinct siblings (every rule accepts them)
    if kind == "draft-probs":
        # draft_probs[b, i] is the row node i was drawn from: siblings share it
        for b in range(3):
            for kids in trees.children(parents[b]):
                for c in kids[1:]:
                    assert torch.equal(args["draft_probs"][b, c], args["draft_probs"][b, kids[0]])
    else:
        assert args["draft_probs"] is None


def test_floor_counts_the_rows_each_rule_needs():
    # One request, root with children 0 and 1, node 0 with child 2; the walk accepted node 0 only.
    args = {
        "draft_token_ids": torch.zeros(1, 3, dtype=torch.int64),
        "parents": torch.tensor([[-1, -1, 0]]),
        "target_probs": torch.zeros(1, 4, 10, dtype=torch.float32),
    }
    walk = torch.tensor([[0, -1]])
    fixed = 3 * (8 + 8)
    gathered = (2 + 1) * 4  # children of the root and of node 0
    row = 10 * 4
    assert must_read_bytes("greedy", args, walk) == fixed + gathered + 2 * row
    assert must_read_bytes("target-only", args, walk) == fixed + gathered + row
    # draft-probs: the first child was accepted at the root, node 0's child rejected
    assert must_read_bytes("draft-probs", args, walk) == fixed + 2 * gathered + (2 * 1 + 1) * row


def test_cli_tree_run_and_errors(tmp_path, capsys):
    out = tmp_path / "tree.json"
    argv = [
        "bench",
        "--tree",
        "tree-tiny",
        "--backend",
        "torch-vectorized,numpy",
        "--out",
        str(out),
    ]
    assert cli.main([*argv, "--no-progress", "--kind", "greedy,target-only"]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "specsample.tree-bench/1" and doc["preset"] == "tree-tiny"
    ok = [c for c in doc["cells"] if c["status"] == "ok"]
    assert {c["kind"] for c in ok} == {"greedy", "target-only"} and len(ok) == 4
    assert all(c["backend"] == "torch-vectorized" and c["median_s"] > 0 for c in ok)
    assert all(c["must_read_bytes"] > 0 and c["ratio_to_floor"] > 0 for c in ok)
    skipped = [c for c in doc["cells"] if c["status"] == "skipped"]
    assert skipped and all("not claimed" in c["reason"] for c in skipped)  # numpy claims no trees
    assert "tree benchmark (tree-tiny, cpu)" in capsys.readouterr().out

    assert cli.main([*argv, "--no-progress"]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err
    assert cli.main(["bench", "--tree", "--k", "4", "--out", str(tmp_path / "x.json")]) == 2
    assert "--k: not used with --tree" in capsys.readouterr().err
    assert cli.main(["bench", "--nodes", "8", "--out", str(tmp_path / "y.json")]) == 2
    assert "add --tree" in capsys.readouterr().err
