"""Block verification's float64 reference: exact losslessness, dominance, and coupled checks.

Setting of the exact checks: fixed rows. The target's distribution at position ``j`` is the row
``q[j]`` whatever the earlier tokens are, and the drafter's is ``p[j]`` (position-dependent,
prefix-independent), so a draft sequence ``x`` has probability ``prod_j p[j][x_j]`` and the
target's own sequence ``(Y_0, ..., Y_K)`` has independent coordinates, ``P(Y = s) = prod_j
q[j][s_j]``. One verification step emits ``n = tau + 1`` tokens; the steps after it start at
position ``n`` and, being lossless themselves, continue with the target's distribution. So a step
is lossless iff its emitted tokens, completed to length ``K+1`` by independent draws from the
target rows ``q[n..K]``, are distributed exactly as ``Y``. The checks compare, in this order, the
first emitted token with ``q[0]``, the first two tokens with ``q[0](a) q[1](b)`` (K >= 1), and the
whole completed sequence with ``prod_j q[j][s_j]``.

The coins are integrated exactly: a rule's decision depends on ``u[0..K-1]`` only through the
independent events ``{u[k] < h[k]}`` (probability ``h[k]``), and the last token is drawn from the
normalized final row. Every probability is a finite sum of products computed in float64 from rows
of at most 4 entries; the rounding error is below 1e-14, so the checks use 1e-12.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest
import specsample
import torch
from scipy import stats
from specsample.reference import residual
from specsample.reference_block import (
    accepted_length,
    block_residual,
    block_thresholds,
    block_weights,
    draft_rows,
    final_row,
    reference_verify_block,
    residual_mass,
)

TOL = 1e-12


# ----------------------------------------------------------------------------------------------
# Rules as exact models: (ids, p_rows | None, q_rows) -> [(P(tau = t), final row)] for t = 0..K
# ----------------------------------------------------------------------------------------------


def last_pass_law(h):
    """``P(tau = t)`` when ``tau = max{k + 1 : u[k] < h[k]}`` (0 if none)."""
    K = len(h)
    one = h[0] * 0 + 1 if h else 1.0  # Fraction in, Fraction out
    law = []
    for t in range(K + 1):
        prob = one if t == 0 else h[t - 1]
        for k in range(t, K):
            prob *= 1 - h[k]
        law.append(prob)
    return law


def first_failure_law(a):
    """``P(tau = t)`` when drafts are accepted while ``u[k] < a[k]`` and the first failure stops."""
    K = len(a)
    one = a[0] * 0 + 1 if a else 1.0  # Fraction in, Fraction out
    law = []
    for t in range(K + 1):
        prob = one
        for k in range(t):
            prob *= a[k]
        law.append(prob * (1 - a[t]) if t < K else prob)
    return law


def block_model(ids, p_rows, q_rows):
    law = last_pass_law(block_thresholds(ids, p_rows, q_rows))
    return [(law[t], final_row(t, ids, p_rows, q_rows)) for t in range(len(ids) + 1)]


def token_ratios(ids, p_rows, q_rows):
    """The token-wise acceptance probabilities ``min(1, q[k][x_k] / p[k][x_k])``."""
    out = []
    for k, x in enumerate(ids):
        p = 1.0 if p_rows is None else p_rows[k][x]
        q = q_rows[k][x]
        out.append(min(1.0, q / p) if p > 0 else (1.0 if q > 0 else 0.0))
    return out


def token_model(ids, p_rows, q_rows):
    """specsample.reference_verify's rule: stop at the first rejection, residual max(0, q - p)."""
    law = first_failure_law(token_ratios(ids, p_rows, q_rows))
    K = len(ids)
    out = []
    for t in range(K + 1):
        if t == K:
            row = list(q_rows[K])
        else:
            p_row = None if p_rows is None else torch.tensor(p_rows[t], dtype=torch.float64)
            row = residual(p_row, torch.tensor(q_rows[t], dtype=torch.float64), ids[t]).tolist()
        out.append((law[t], row))
    return out


def mutant_ordinary_residual(ids, p_rows, q_rows):
    """Block thresholds, but the unweighted residual ``max(0, q - p)`` after a rejection."""
    law = last_pass_law(block_thresholds(ids, p_rows, q_rows))
    p_full = draft_rows(ids, p_rows, q_rows)
    K = len(ids)
    rows = [block_residual(1.0, p_full[t], q_rows[t]) for t in range(K)] + [list(q_rows[K])]
    return list(zip(law, rows, strict=True))


def mutant_token_weights(ids, p_rows, q_rows):
    """Block verification with the token-wise ratio ``min(1, q/p)`` of each position in place of
    the prefix weight ``w`` (the running product), in the thresholds and the residual."""
    K = len(ids)
    w = [1.0] + token_ratios(ids, p_rows, q_rows)
    p_full = draft_rows(ids, p_rows, q_rows)
    h = []
    for k in range(K):
        if k == K - 1:
            h.append(w[K])
            continue
        z = residual_mass(w[k + 1], p_full[k + 1], q_rows[k + 1])
        denom = z + 1 - w[k + 1]
        h.append(z / denom if denom > 0 else 1.0)
    law = last_pass_law(h)
    rows = [block_residual(w[t], p_full[t], q_rows[t]) for t in range(K)] + [list(q_rows[K])]
    return list(zip(law, rows, strict=True))


def mutant_stop_at_first_failure(ids, p_rows, q_rows):
    """Block thresholds and residuals, but ``tau`` = the number of coins before the first failure."""
    law = first_failure_law(block_thresholds(ids, p_rows, q_rows))
    return [(law[t], final_row(t, ids, p_rows, q_rows)) for t in range(len(ids) + 1)]


def mutant_no_residual_mass(ids, p_rows, q_rows):
    """Block verification with thresholds ``h[k] = w[k+1]`` (no credit for the residual mass)."""
    law = last_pass_law(block_weights(ids, p_rows, q_rows)[1:])
    return [(law[t], final_row(t, ids, p_rows, q_rows)) for t in range(len(ids) + 1)]


MUTANTS = {
    "ordinary residual max(0, q - p)": mutant_ordinary_residual,
    "token-wise ratios instead of prefix weights": mutant_token_weights,
    "stop at the first failure": mutant_stop_at_first_failure,
    "thresholds without the residual mass": mutant_no_residual_mass,
}


# ----------------------------------------------------------------------------------------------
# The exact harness
# ----------------------------------------------------------------------------------------------


def draft_sequences(p_rows, V, K, ids):
    """``(x, P(x))`` over every draft sequence (fixed rows), or the one deterministic draft."""
    if p_rows is None:
        yield tuple(ids), 1.0
        return
    for x in itertools.product(range(V), repeat=K):
        prob = 1.0
        for k, token in enumerate(x):
            prob *= p_rows[k][token]
        if prob > 0:
            yield x, prob


def emitted_distribution(model, p_rows, q_rows, ids=None):
    """The exact distribution of the emitted tokens: ``{tuple(tokens): probability}``."""
    K, V = len(q_rows) - 1, len(q_rows[0])
    dist: dict[tuple[int, ...], float] = {}
    for x, px in draft_sequences(p_rows, V, K, ids):
        for t, (pt, row) in enumerate(model(list(x), p_rows, q_rows)):
            if pt == 0:
                continue
            total = sum(row)
            for y in range(V):
                if row[y] > 0:
                    key = x[:t] + (y,)
                    dist[key] = dist.get(key, 0.0) + px * pt * row[y] / total
    return dist


def completed_distribution(emitted, q_rows):
    """Each emitted sequence completed to length K+1 by independent draws from the target rows."""
    K, V = len(q_rows) - 1, len(q_rows[0])
    dist: dict[tuple[int, ...], float] = {}
    for seq, prob in emitted.items():
        for tail in itertools.product(range(V), repeat=K + 1 - len(seq)):
            pr = prob
            for j, token in enumerate(tail, start=len(seq)):
                pr *= q_rows[j][token]
            dist[seq + tail] = dist.get(seq + tail, 0.0) + pr
    return dist


def check_lossless(model, p_rows, q_rows, ids=None):
    """Raise AssertionError naming the violated property; return the emitted distribution."""
    K, V = len(q_rows) - 1, len(q_rows[0])
    emitted = emitted_distribution(model, p_rows, q_rows, ids)
    mass = sum(emitted.values())
    assert abs(mass - 1) < TOL, f"not a distribution: the emitted sequences have mass {mass!r}"
    full = completed_distribution(emitted, q_rows)
    first = [sum(pr for s, pr in full.items() if s[0] == a) for a in range(V)]
    diff = max(abs(first[a] - q_rows[0][a]) for a in range(V))
    assert diff < TOL, (
        f"not lossless: the first emitted token's distribution {first} differs from the target's "
        f"row 0 {list(q_rows[0])} by {diff:.3g}"
    )
    if K >= 1:
        for a, b in itertools.product(range(V), repeat=2):
            got = sum(pr for s, pr in full.items() if s[:2] == (a, b))
            want = q_rows[0][a] * q_rows[1][b]
            assert abs(got - want) < TOL, (
                f"not lossless: P(first two tokens = {(a, b)}) = {got!r}, the target gives "
                f"q0({a}) q1({b}) = {want!r}"
            )
    for s in itertools.product(range(V), repeat=K + 1):
        want = 1.0
        for j, token in enumerate(s):
            want *= q_rows[j][token]
        got = full.get(s, 0.0)
        assert abs(got - want) < TOL, (
            f"not lossless: the emitted tokens completed by the target give P({s}) = {got!r}, "
            f"the target's sequence distribution gives {want!r}"
        )
    return emitted


def expected_accepted(model, p_rows, q_rows, ids=None):
    """The exact expected number of accepted drafts ``E[tau]``."""
    K, V = len(q_rows) - 1, len(q_rows[0])
    total = 0.0
    for x, px in draft_sequences(p_rows, V, K, ids):
        total += px * sum(t * pt for t, (pt, _) in enumerate(model(list(x), p_rows, q_rows)))
    return total


def random_rows(rng, n, V, zeros=True):
    """``n`` random float64 rows summing to one; with ``zeros`` some entries are exactly 0."""
    rows = []
    for _ in range(n):
        row = [rng.random() ** 2 for _ in range(V)]
        if zeros and rng.random() < 0.3:
            row[rng.randrange(V)] = 0.0
        s = sum(row)
        rows.append([v / s for v in row])
    return rows


INSTANCES = [(V, K, seed) for V in (2, 3, 4) for K in (1, 2, 3) for seed in range(3)]


# ----------------------------------------------------------------------------------------------
# Exact losslessness
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("V,K,seed", INSTANCES)
def test_block_is_lossless_exactly(V, K, seed):
    rng = random.Random(1000 * V + 10 * K + seed)
    p, q = random_rows(rng, K, V), random_rows(rng, K + 1, V)
    check_lossless(block_model, p, q)


@pytest.mark.parametrize("V,K,seed", INSTANCES)
def test_token_wise_rule_passes_the_same_harness(V, K, seed):
    rng = random.Random(1000 * V + 10 * K + seed)
    p, q = random_rows(rng, K, V), random_rows(rng, K + 1, V)
    check_lossless(token_model, p, q)


@pytest.mark.parametrize("V,K,seed", INSTANCES)
def test_block_is_lossless_for_a_deterministic_drafter(V, K, seed):
    """``draft_probs=None``: the drafts are fixed tokens (``p = one-hot``), any of them."""
    rng = random.Random(7 + 1000 * V + 10 * K + seed)
    q = random_rows(rng, K + 1, V)
    for ids in itertools.product(range(V), repeat=K):
        check_lossless(block_model, None, q, ids=list(ids))
        check_lossless(token_model, None, q, ids=list(ids))


def test_deterministic_drafter_residual_mass_closed_form():
    """With ``p = one-hot(x)`` and rows summing to one, ``Z = w (1 - q(x))``."""
    rng = random.Random(3)
    for _ in range(200):
        V = rng.randint(2, 6)
        q = random_rows(rng, 1, V)[0]
        x, w = rng.randrange(V), rng.random()
        onehot = [1.0 if j == x else 0.0 for j in range(V)]
        assert abs(residual_mass(w, onehot, q) - w * (1 - q[x])) < 1e-15


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_each_mutant_fails_the_exact_check(name):
    """Every mutant breaks losslessness on some small instance, and the message says so."""
    model = MUTANTS[name]
    failures = []
    for V, K, seed in INSTANCES:
        rng = random.Random(1000 * V + 10 * K + seed)
        p, q = random_rows(rng, K, V), random_rows(rng, K + 1, V)
        try:
            check_lossless(model, p, q)
        except AssertionError as e:
            failures.append(str(e))
    assert failures, f"mutant '{name}' passed every exact losslessness check"
    assert all(m.startswith("not lossless") for m in failures), failures


def mutant_none_as_target(ids, p_rows, q_rows):
    """``draft_probs=None`` read as ``p = q`` (every ratio 1): every draft is accepted."""
    return block_model(ids, q_rows[:-1], q_rows)


@pytest.mark.parametrize(
    "name", sorted(set(MUTANTS) - {"ordinary residual max(0, q - p)"}) + ["None read as p = q"]
)
def test_mutants_fail_for_a_deterministic_drafter(name):
    """With one-hot drafts the mutants fail too, except the ordinary residual: for ``p =
    one-hot(x)`` the weighted and the ordinary residual are both ``q`` without ``x``, up to scale."""
    model = MUTANTS.get(name, mutant_none_as_target)
    rng = random.Random(17)
    q = random_rows(rng, 3, 3, zeros=False)
    failures = 0
    for ids in itertools.product(range(3), repeat=2):
        try:
            check_lossless(model, None, q, ids=list(ids))
        except AssertionError as e:
            assert str(e).startswith("not lossless"), e
            failures += 1
    assert failures, f"mutant '{name}' passed every deterministic-drafter check"


def test_ordinary_residual_is_harmless_for_a_deterministic_drafter():
    rng = random.Random(19)
    q = random_rows(rng, 4, 4)
    for ids in itertools.product(range(4), repeat=3):
        check_lossless(mutant_ordinary_residual, None, q, ids=list(ids))


def test_a_mutant_fails_with_the_first_token_property():
    """The message names the property: here the first token's distribution already differs."""
    p = [[0.6, 0.4], [0.6, 0.4]]
    q = [[0.3, 0.7], [0.3, 0.7], [0.5, 0.5]]
    check_lossless(block_model, p, q)
    with pytest.raises(AssertionError, match="first emitted token's distribution"):
        check_lossless(mutant_stop_at_first_failure, p, q)


# ----------------------------------------------------------------------------------------------
# Dominance and the paper's example
# ----------------------------------------------------------------------------------------------


def test_block_accepts_at_least_as_many_as_token_wise():
    rng = random.Random(11)
    strictly = 0
    for _ in range(60):
        V, K = rng.randint(2, 4), rng.randint(1, 3)
        p, q = random_rows(rng, K, V), random_rows(rng, K + 1, V)
        block = expected_accepted(block_model, p, q)
        token = expected_accepted(token_model, p, q)
        assert block >= token - TOL, (V, K, block, token)
        if K == 1:  # one draft: the rules are the same
            assert abs(block - token) < TOL, (block, token)
        strictly += block > token + 1e-9
    assert strictly >= 20, f"block verification beat token-wise on only {strictly} instances"


def test_equal_rows_accept_everything():
    """``p = q``: both rules accept all K drafts with probability one."""
    rng = random.Random(5)
    rows = random_rows(rng, 4, 3)
    assert expected_accepted(block_model, rows[:3], rows) == pytest.approx(3, abs=TOL)
    assert expected_accepted(token_model, rows[:3], rows) == pytest.approx(3, abs=TOL)


def exact_expected_accepted(law_of, p, q, K):
    total = Fraction(0)
    for x in itertools.product(range(len(p)), repeat=K):
        px = Fraction(1)
        for token in x:
            px *= p[token]
        law = law_of(list(x), [p] * K, [q] * (K + 1))
        total += px * sum(t * pt for t, pt in enumerate(law))
    return total


def test_the_papers_binary_example_exactly():
    """Binary vocabulary, context-free models, two drafts: the draft favours token 0 with 2/3,
    the target favours token 1 with 2/3. Token-wise accepts 10/9 drafts per step, block 11/9."""
    p = [Fraction(2, 3), Fraction(1, 3)]
    q = [Fraction(1, 3), Fraction(2, 3)]

    def token_law(ids, p_rows, q_rows):
        return first_failure_law(
            [min(Fraction(1), q_rows[k][x] / p_rows[k][x]) for k, x in enumerate(ids)]
        )

    def block_law(ids, p_rows, q_rows):
        return last_pass_law(block_thresholds(ids, p_rows, q_rows))

    assert exact_expected_accepted(token_law, p, q, 2) == Fraction(10, 9)
    assert exact_expected_accepted(block_law, p, q, 2) == Fraction(11, 9)


# ----------------------------------------------------------------------------------------------
# The tensor function against the models
# ----------------------------------------------------------------------------------------------


def tensor_batch(seed, B, K, V, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(B, K, V, generator=g, dtype=torch.float64) ** 2
    q = torch.rand(B, K + 1, V, generator=g, dtype=torch.float64) ** 2
    p, q = (p / p.sum(-1, keepdim=True)).to(dtype), (q / q.sum(-1, keepdim=True)).to(dtype)
    ids = torch.multinomial(p.reshape(-1, V).float(), 1, generator=g).reshape(B, K)
    u = torch.rand(B, K + 1, generator=g)
    return ids, p, q, u


def test_decisions_follow_the_thresholds():
    """``num_emitted - 1 = max{k + 1 : u[k] < h[k]}`` and the last token is the inverse CDF of
    the final row: the function takes exactly the decisions the exact model integrates."""
    ids, p, q, u = tensor_batch(0, 300, 3, 5)
    out = reference_verify_block(ids, p, q, uniforms=u)
    for b in range(300):
        x = ids[b].tolist()
        pr, qr = p[b].double().tolist(), q[b].double().tolist()
        ub = u[b].double().tolist()
        tau = accepted_length(ub[:3], block_thresholds(x, pr, qr))
        assert int(out.num_emitted[b]) == tau + 1
        assert out.token_ids[b, :tau].tolist() == x[:tau]
        row = torch.tensor(final_row(tau, x, pr, qr), dtype=torch.float64)
        cdf = torch.cumsum(row, 0) / row.sum()
        y = int(out.token_ids[b, tau])
        assert row[y] > 0 and (y == 0 or cdf[y - 1] <= ub[3]) and ub[3] < cdf[y]
        assert (out.token_ids[b, tau + 1 :] == -1).all()
    assert (out.status == 0).all()


def test_one_draft_equals_token_wise_token_for_token():
    ids, p, q, u = tensor_batch(1, 500, 1, 6)
    block = reference_verify_block(ids, p, q, uniforms=u)
    token = specsample.reference_verify(ids, p, q, uniforms=u)
    assert torch.equal(block.token_ids, token.token_ids)
    assert torch.equal(block.num_emitted, token.num_emitted)


def test_none_equals_explicit_one_hot_rows():
    ids, _, q, u = tensor_batch(2, 200, 3, 5)
    onehot = torch.nn.functional.one_hot(ids, 5).to(q.dtype)
    a = reference_verify_block(ids, None, q, uniforms=u)
    b = reference_verify_block(ids, onehot, q, uniforms=u)
    assert torch.equal(a.token_ids, b.token_ids)


def test_greedy_is_token_wise_greedy():
    ids, p, q, _ = tensor_batch(3, 50, 3, 4)
    ids[::2] = q[::2, :3].argmax(-1)  # some requests match the target's argmax
    a = reference_verify_block(ids, p, q, mode="greedy")
    b = specsample.reference_verify(ids, p, q, mode="greedy")
    assert torch.equal(a.token_ids, b.token_ids)
    assert torch.equal(a.num_emitted, b.num_emitted)


def test_generator_draws_like_the_token_wise_reference():
    ids, p, q, _ = tensor_batch(4, 20, 2, 4)
    u = torch.rand(20, 3, generator=torch.Generator().manual_seed(9))
    a = reference_verify_block(ids, p, q, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.token_ids, reference_verify_block(ids, p, q, uniforms=u).token_ids)


def test_shapes_are_checked_and_empty_batches_work():
    ids, p, q, u = tensor_batch(5, 4, 2, 3)
    with pytest.raises(ValueError, match="target_probs"):
        reference_verify_block(ids, p, q[:, :2], uniforms=u)
    out = reference_verify_block(ids[:0], p[:0], q[:0], uniforms=u[:0])
    assert out.token_ids.shape == (0, 3)


@pytest.mark.parametrize("V,K,seed", [(3, 2, 0), (4, 3, 1)])
def test_monte_carlo_matches_the_exact_distribution(V, K, seed):
    """Drafts drawn from p and random coins through the tensor function; chi-square against the
    exact emitted distribution (fixed seed; p-value bound 1e-3)."""
    rng = random.Random(seed)
    p_rows, q_rows = random_rows(rng, K, V, zeros=False), random_rows(rng, K + 1, V, zeros=False)
    n = 20000
    g = torch.Generator().manual_seed(seed)
    p = torch.tensor(p_rows, dtype=torch.float64).float()
    q = torch.tensor(q_rows, dtype=torch.float64).float()
    ids = torch.stack(
        [torch.multinomial(p[k], n, replacement=True, generator=g) for k in range(K)], 1
    )
    out = reference_verify_block(
        ids, p.expand(n, K, V).contiguous(), q.expand(n, K + 1, V).contiguous(), generator=g
    )
    counts = Counter(
        tuple(row[:m])
        for row, m in zip(out.token_ids.tolist(), out.num_emitted.tolist(), strict=True)
    )
    p32 = p.double().tolist()
    q32 = q.double().tolist()
    exact = emitted_distribution(block_model, p32, q32)
    assert set(counts) <= set(exact)
    keys = sorted(exact)
    big = [k for k in keys if exact[k] * n >= 5]
    small = [k for k in keys if exact[k] * n < 5]
    observed = [counts[k] for k in big] + [sum(counts[k] for k in small)]
    expected = [exact[k] * n for k in big] + [sum(exact[k] for k in small) * n]
    if not small:
        observed, expected = observed[:-1], expected[:-1]
    result = stats.chisquare(observed, expected)
    assert result.pvalue > 1e-3, result


def test_the_rules_page_example_runs_and_matches_its_comments():
    page = Path(__file__).resolve().parents[1] / "docs" / "rules.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "reference_verify_block(ids" in b]  # the worked example
    namespace: dict = {}
    exec(compile(block, "docs/rules.md", "exec"), namespace)
    ids, p, q, u = (namespace[k] for k in ("ids", "p", "q", "u"))
    assert reference_verify_block(ids, p, q, uniforms=u).token_ids.tolist() == [[0, 0, 1]]
    assert specsample.reference_verify(ids, p, q, uniforms=u).token_ids.tolist() == [[1, -1, -1]]


def test_residual_mass_vector_path_equals_the_loop_bit_for_bit():
    """Long float rows are summed by torch; the result must be the loop's, bit for bit (the same
    float64 products and differences, added left to right), zeros and p = q rows included."""
    from specsample import reference_block as rb

    def loop(weight, p_row, q_row):
        zero = weight * 0
        return sum((max(zero, weight * q - p) for p, q in zip(p_row, q_row, strict=True)), zero)

    g = torch.Generator().manual_seed(7)
    for trial in range(300):
        V = (rb._VECTOR_MIN, 100, 1001, 32000)[trial % 4]
        q = torch.softmax(torch.randn(V, generator=g, dtype=torch.float64) * (1 + trial % 7), -1)
        p = q.clone() if trial % 3 == 0 else torch.softmax(torch.randn(V, generator=g), -1).double()
        if trial % 5 == 0:
            q[torch.rand(V, generator=g) < 0.5] = 0.0
        w = (1.0, 0.37, 1e-300, 0.0, float(torch.rand((), generator=g)))[trial % 5]
        p_row, q_row = p.float().double().tolist(), q.float().double().tolist()
        assert rb.residual_mass(w, p_row, q_row).hex() == loop(w, p_row, q_row).hex(), (trial, V, w)
    with pytest.raises(ValueError, match="p_row has 3 entries but q_row has 64"):
        rb.residual_mass(1.0, [0.0] * 3, [0.0] * 64)
