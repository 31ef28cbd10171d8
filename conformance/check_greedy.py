"""greedy.*: argmax verification matches the reference exactly (ties -> smallest index)."""

from __future__ import annotations

import torch

from .check_common import compare_to_reference, first_claimed_dtype, workload
from .checks import CheckFailed, Target, check


def _shapes(target: Target) -> list[tuple[int, int, int]]:
    shapes = [(96, 4, 50), (64, 6, 1000)]
    if target.full:
        shapes += [(512, 8, 32000)]
    return shapes


@check("greedy.exact")
def greedy_exact(target: Target) -> str:
    """Greedy tokens equal the reference's, with draft_probs given and None (which must not matter)."""
    target.require_mode("greedy")
    total = 0
    for i, (B, K, V) in enumerate(_shapes(target)):
        target.require_size(V, K)
        w = workload(target, B, K, V, acceptance="medium", seed=300 + i, greedy_drafter=True)
        label = f"greedy, B={B}, K={K}, V={V}"
        compare_to_reference(
            target, w.draft_token_ids, w.draft_probs, w.target_probs, mode="greedy", label=label
        )
        out = target.verify(w.draft_token_ids, None, w.target_probs, mode="greedy")
        compare_to_reference(
            target,
            w.draft_token_ids,
            None,
            w.target_probs,
            mode="greedy",
            out=out,
            label=label + ", draft_probs=None",
        )
        total += B
    return f"{total} requests, draft_probs given and None"


@check("greedy.ties")
def greedy_ties(target: Target) -> str:
    """Ties in the target row resolve to the smallest index, for accepting and for the last token."""
    target.require_mode("greedy")
    dtype = first_claimed_dtype(target)
    V = 8
    flat = [0.125] * V
    tie_13 = [0.05, 0.3, 0.05, 0.3, 0.05, 0.05, 0.1, 0.1]
    tie_67 = [0.1, 0.05, 0.05, 0.05, 0.05, 0.1, 0.3, 0.3]
    rows = [
        # (draft ids, target rows [K+1])
        ([0, 1, 6], [flat, tie_13, tie_67, flat]),  # all accepted, bonus argmax of flat -> 0
        ([1, 1, 6], [flat, tie_13, tie_67, tie_13]),  # 1 is not the smallest of a flat row: reject
        ([0, 3, 6], [flat, tie_13, tie_67, flat]),  # 3 ties with 1: reject at 1, emit 1
        ([0, 1, 7], [flat, tie_13, tie_67, flat]),  # 7 ties with 6: reject at 2, emit 6
        ([0, 1, 6], [flat, tie_13, tie_67, tie_67]),  # bonus from a tie: 6
    ]
    ids = torch.tensor([r[0] for r in rows], dtype=torch.int64, device=target.device)
    tgt = torch.tensor([r[1] for r in rows], dtype=torch.float32).to(dtype).to(target.device)
    out = target.verify(ids, None, tgt, mode="greedy")
    compare_to_reference(target, ids, None, tgt, mode="greedy", out=out, label="greedy ties")
    expected = [[0, 1, 6, 0], [0, -1, -1, -1], [0, 1, -1, -1], [0, 1, 6, -1], [0, 1, 6, 6]]
    got = out.token_ids.cpu().tolist()
    if got != expected:
        raise CheckFailed(f"greedy ties: expected {expected}, got {got}")
    return f"{len(rows)} crafted tie cases ({dtype})"
