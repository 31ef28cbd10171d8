"""The tree comparison's last-token tolerance at the largest float32 coin, where no coin above
the bracket exists to run the reference with."""

from __future__ import annotations

import dataclasses

import pytest
import specsample
import torch
from specsample.conformance.checks import CheckFailed, Target
from specsample.conformance.tree_common import TreeCase, compare_tree

TOP = 1.0 - 2.0**-24


class _Shifted:
    """The reference, but the last token moved one id up: what a float32 row sum that rounds up
    gives at the top coin (target row [1 - 2**-24, 3.9e-8]: its float32 sum is 1.0, so the
    threshold 1 - 2**-24 no longer falls inside token 0's mass)."""

    capabilities = dataclasses.replace(
        specsample.get_backend("torch-loop").capabilities, devices=("cpu",)
    )

    def verify_tree(self, *args, **kwargs):
        out = specsample.reference_verify_tree(*args, **kwargs)
        tok = out.token_ids.clone()
        last = out.num_emitted - 1
        rows = torch.arange(tok.shape[0])
        tok[rows, last] = tok[rows, last] + 1
        return dataclasses.replace(out, token_ids=tok)


def _case(last_coin: float) -> TreeCase:
    q = torch.tensor([[[0.25, 0.75], [TOP, 3.858e-8], [0.5, 0.5]]], dtype=torch.float32)
    u = torch.tensor([[0.01, 0.5, last_coin]], dtype=torch.float32)
    return TreeCase(
        torch.tensor([[0, 1]]),
        torch.tensor([[-1, -1]]),
        torch.tensor([2]),
        torch.zeros(1, 2, 2),
        q,
        u,
        "star of 2, V=2",
    )


def test_top_coin_excuses_a_draw_past_the_reference():
    target = Target("shifted", _Shifted(), "fast", torch.device("cpu"))
    # Node 0 (token 0) is accepted; the last token comes from row 1 with the top coin.
    assert compare_tree(target, _case(TOP), "random", None, "token") == 1


def test_the_same_shift_at_an_ordinary_coin_fails():
    target = Target("shifted", _Shifted(), "fast", torch.device("cpu"))
    with pytest.raises(CheckFailed, match="last token"):
        compare_tree(target, _case(0.5), "random", None, "token")
