"""tree.acceptance-length: its float64 law matches closed forms, it passes correct backends and
fails samplers whose acceptance is biased, lossless ones included."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import specsample
import torch
from specsample.backends import _tree_loop
from specsample.conformance.check_tree import tree_lossless_stats
from specsample.conformance.check_tree_length import (
    PARENTS,
    V,
    _rows,
    draw_trees,
    length_moments,
    tree_acceptance_length,
)
from specsample.conformance.checks import CheckFailed, Target

CPU = torch.device("cpu")
_Loop = specsample.get_backend("torch-loop").__class__


class _Patched(_Loop):
    """torch-loop's token rule with its per-position steps replaced (``_steps``)."""

    def __init__(self) -> None:
        super().__init__()
        self.capabilities = dataclasses.replace(self.capabilities, tree_rules=("token",))

    def _steps(self, rejection, target_only):
        raise NotImplementedError

    def _verify_tree(self, inputs):
        saved = _tree_loop._rejection, _tree_loop._target_only
        _tree_loop._rejection, _tree_loop._target_only = self._steps(*saved)
        try:
            return super()._verify_tree(inputs)
        finally:
            _tree_loop._rejection, _tree_loop._target_only = saved


class _FirstChildOnly(_Patched):
    """Tries only the first child of each position, then draws from its residual: lossless, but
    it accepts less than the rule."""

    name = "mutant-first-child-only"

    def _steps(self, rejection, target_only):
        def rej(ids, kids, p_row, q_row, coins, sampling):
            return rejection(ids, kids[:1], p_row, q_row, coins, sampling)

        def only(ids, kids, q_row, coin):
            return target_only(ids, kids[:1], q_row, coin)

        return rej, only


class _StaleRows(_Patched):
    """Tests every sibling against the position's original rows (no residual update after a
    rejection): it accepts more than the rule and is not lossless."""

    name = "mutant-stale-rows"

    def _steps(self, rejection, target_only):
        def rej(ids, kids, p_row, q_row, coins, sampling):
            first = rejection(ids, kids[:1], p_row, q_row, coins, sampling)
            for c in kids[1:]:
                if isinstance(first, tuple) and first[0] == "accept":
                    break
                x = ids[c]
                if coins[c] * float(p_row[x]) < float(q_row[x]):
                    return ("accept", c)
            return first

        return rej, target_only


def _target(backend) -> Target:
    return Target(backend.name, backend, "fast", CPU)


def _enumerated_root_rejection(without: bool) -> float:
    """P(every root child rejected) averaged over the drafted root tuples, by enumeration of
    the model's per-tree laws (the grandchildren do not change P(L = 0))."""
    p, q = _rows()
    sampling = "without_replacement" if without else "with_replacement"
    total = 0.0
    for t in itertools.product(range(V), repeat=3):
        if without and len(set(t)) < 3:
            continue
        w, left = 1.0, p[0].tolist()
        for x in t:
            w *= left[x] / sum(left)
            if without:
                left[x] = 0.0
        ids = list(t) + [0, 1, 2, 3, 4, 5]  # distinct grandchildren under every child
        mean, var = length_moments(ids, p, q, sampling, "token")
        law0 = _law0(ids, p, q, sampling)
        assert 0.0 <= law0 <= 1.0 and var >= 0.0 and 0.0 <= mean <= 2.0
        total += w * law0
    return total


def _law0(ids, p, q, sampling) -> float:
    from specsample.conformance.check_tree_length import _token_law

    children = [[0, 1, 2], [3, 4], [5, 6], [7, 8]] + [[]] * 6
    return _token_law(0, children, ids, p.tolist(), q.tolist(), sampling)[0]


def test_the_law_matches_the_closed_form_with_replacement():
    """Children i.i.d. from p: each try is rejected with probability sum(max(0, p - q')) = the
    total variation between p and the current q', whatever the drafted tokens."""
    p, q = _rows()
    cur, want = q[0].clone(), 1.0
    for _ in range(3):
        reject = float(torch.clamp(p[0] - cur, min=0).sum())
        want *= reject
        r = torch.clamp(cur - p[0], min=0)
        cur = r / r.sum()
    assert _enumerated_root_rejection(without=False) == pytest.approx(want, abs=1e-12)


def test_the_law_matches_the_closed_form_target_only():
    """Target-only: a child is accepted with its target probability, so
    E[L] = sum_j q0(c_j) * (1 + sum_k q_j(g_jk))."""
    p, q = _rows()
    ids = [2, 0, 5, 1, 3, 4, 0, 2, 5]
    want = sum(
        float(q[0, ids[j]]) * (1 + float(q[j + 1, ids[3 + 2 * j]] + q[j + 1, ids[4 + 2 * j]]))
        for j in range(3)
    )
    mean, _ = length_moments(ids, p, q, "target_only", "token")
    assert mean == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("sampling", ["target_only", "with_replacement", "without_replacement"])
def test_draws_follow_each_process(sampling):
    ids = draw_trees(sampling, 500, torch.Generator().manual_seed(1))
    assert ids.shape == (500, len(PARENTS)) and 0 <= int(ids.min()) and int(ids.max()) < V
    if sampling != "with_replacement":  # distinct siblings
        for kids in ([0, 1, 2], [3, 4], [5, 6], [7, 8]):
            s = ids[:, kids].sort(dim=1).values
            assert bool((s[:, 1:] != s[:, :-1]).all())


def test_a_correct_backend_passes():
    tree_acceptance_length(_target(specsample.get_backend("torch-vectorized")))


def test_a_lossless_sampler_that_accepts_less_fails_it():
    """The first-child-only sampler passes the lossless sampling check: only this one sees it."""
    mutant = _FirstChildOnly()
    tree_lossless_stats(_target(mutant))
    with pytest.raises(CheckFailed, match=r"mean accepted length \[random/with_replacement") as e:
        tree_acceptance_length(_target(mutant))
    assert "target_only" in str(e.value) and "without_replacement" in str(e.value)


def test_a_sampler_that_accepts_too_much_fails_it():
    with pytest.raises(CheckFailed, match=r"mean accepted length \[random/with_replacement"):
        tree_acceptance_length(_target(_StaleRows()))
