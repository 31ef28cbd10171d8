"""block.*: ``verify(..., rule="block")`` (docs/rules.md), for backends that claim the rule.

- ``block.exact``: coupled with explicit uniforms, tokens equal the float64 reference's
  (``reference_verify(..., rule="block")``) on random shapes and every claimed dtype; a decision
  may differ only at a proven threshold near-tie, the last token only at a proven CDF near-tie
  (``block_common``).
- ``block.lossless-exact``: the exact output law on small chains (V 2-8, K 1-4), every coin cell
  probed (``block_exact``), equals the target's law up to float rounding.
- ``block.dominance``: the exact expected number of accepted drafts of block >= token's on the
  same instances, equal at K = 1 and for p = q, and the paper's binary example gives 10/9 and 11/9.
- ``block.chi-square``: the backend's own randomness (a seeded generator) reproduces the exact law.
- ``block.repeated-calls``: small batches called many times with one generator, as a decoding loop
  calls them: each request's emitted count follows the exact law of its fixed draft.
- ``block.edge`` and ``block.status``: edge cases, and bad values flagged as docs/rules.md says.
- ``block.unclaimed`` (every backend): a backend that does not claim the rule refuses it with a
  ValueError naming itself and the rule.
"""

from __future__ import annotations

import itertools
import math

import torch
from specsample.reference import reference_verify
from specsample.reference_block import block_thresholds, final_row
from specsample.status import describe

from . import statistics as st
from .block_common import compare_block_to_reference
from .block_exact import ROUNDING, dyadic_rows, exact_outcomes, losslessness_gap
from .check_common import (
    DTYPES,
    assert_unmodified,
    check_output,
    snapshot,
    uniforms,
    where,
    workload,
)
from .checks import CheckFailed, Target, check

ALPHA = 1e-4  # false-alarm rate of block.chi-square (as the stats.* checks)
CHI_SAMPLES = {"fast": 20_000, "full": 200_000}
# block.repeated-calls: calls per shape, and (B, K, V) shapes; at the full level B = 1 with a full
# vocabulary takes the fused kernels' many-blocks-per-request path
REPEAT_CALLS = {"fast": 500, "full": 4_000}
REPEAT_SHAPES = {"fast": ((1, 4, 64), (3, 4, 61)), "full": ((1, 8, 128256), (3, 8, 4099))}


def _require(target: Target) -> None:
    target.require_rule("block")
    target.require_mode("random")


@check("block.exact")
def exact(target: Target) -> str:
    """With uniforms, rule="block" tokens equal the float64 block reference's (random shapes,
    draft_probs given and None, every claimed dtype at the full level; near-ties proven)."""
    _require(target)
    shapes = [(64, 4, 50, "high"), (48, 3, 1000, "medium"), (32, 6, 7, 1.0), (40, 1, 300, "low")]
    if target.full:
        shapes += [(128, 8, 32000, "medium"), (256, 5, 151, 3.0)]
    near = total = 0
    # Every claimed dtype at the full level; the first one at the fast level (as exact.random).
    dtypes = target.capabilities.dtypes if target.full else target.capabilities.dtypes[:1]
    for dtype_name in dtypes:
        for i, (B, K, V, acc) in enumerate(shapes):
            target.require_size(V, K)
            for with_p in (True, False):
                w = workload(
                    target,
                    B,
                    K,
                    V,
                    acceptance=acc,
                    seed=300 + i,
                    dtype=DTYPES[dtype_name],
                    with_draft_probs=True,
                )
                u = uniforms(B, K, 400 + i, target.device)
                label = f"block, B={B}, K={K}, V={V}, {dtype_name}, draft_probs {'given' if with_p else 'None'}"
                near += compare_block_to_reference(
                    target,
                    w.draft_token_ids,
                    w.draft_probs if with_p else None,
                    w.target_probs,
                    u,
                    label=label,
                )
                total += B
    return f"{total} requests; {near} proven near-tie differences"


def _instances(target: Target):
    """(label, p_rows | None, q_rows, fixed drafts) of the exact checks."""
    gen = torch.Generator().manual_seed(2024)
    sizes = [(2, 1), (2, 4), (3, 2), (3, 3), (4, 2), (5, 2), (8, 1), (3, 4), (8, 2)]
    out = []
    for i, (V, K) in enumerate(sizes):
        target.require_size(V, K)
        q = dyadic_rows(gen, K + 1, V, zeros=i % 2 == 1)
        p = dyadic_rows(gen, K, V, zeros=i % 3 == 2)
        out.append((f"V={V}, K={K}", p, q, None))
    for V, K in [(3, 2), (2, 3), (4, 2)]:
        q = dyadic_rows(gen, K + 1, V, zeros=True)
        for xs in itertools.product(range(V), repeat=K):
            out.append((f"V={V}, K={K}, draft_probs=None, drafts {list(xs)}", None, q, list(xs)))
    return out


@check("block.lossless-exact")
def lossless_exact(target: Target) -> str:
    """The exact output law of rule="block" (every coin cell probed, V 2-8, K 1-4, drafts drawn
    from p or fixed with draft_probs=None) equals the target's law up to float rounding."""
    _require(target)
    dtype = DTYPES[target.capabilities.dtypes[0]]
    probes, skipped, worst = 0, 0.0, 0.0
    for label, p, q, xs in _instances(target):
        out = exact_outcomes(target, "block", p, q, dtype, fixed_ids=xs)
        gap, what = losslessness_gap(out, q)
        tol = ROUNDING + out.skipped
        if gap > tol:
            raise CheckFailed(
                f"not lossless (exact losslessness) [{label}]: {what}; difference {gap:.3g} "
                f"> tolerance {tol:.3g} (float rounding {ROUNDING:g} + unprobed mass "
                f"{out.skipped:.3g})"
            )
        probes += out.probes
        skipped = max(skipped, out.skipped)
        worst = max(worst, gap)
    return (
        f"{len(_instances(target))} instances, {probes} probes; largest difference {worst:.3g}, "
        f"largest unprobed mass {skipped:.3g}"
    )


def _paper_example() -> tuple[list[list[float]], list[list[float]]]:
    return [[2 / 3, 1 / 3]] * 2, [[1 / 3, 2 / 3]] * 3


@check("block.dominance")
def dominance(target: Target) -> str:
    """Exact expected accepted drafts: block >= token on every instance, equal at K = 1, for
    p = q and for a fixed draft (draft_probs=None), and the paper's binary example (K = 2) gives
    token 10/9 and block 11/9."""
    _require(target)
    dtype = DTYPES[target.capabilities.dtypes[0]]
    gains = []
    for label, p, q, xs in _instances(target):
        K = len(q) - 1
        if p is None:  # a fixed draft: token-wise is already optimal, prod_j q_j(x_j)
            blk = exact_outcomes(target, "block", p, q, dtype, fixed_ids=xs).expected_accepted
            tok = exact_outcomes(target, "token", p, q, dtype, fixed_ids=xs).expected_accepted
            if abs(blk - tok) > ROUNDING:
                raise CheckFailed(
                    f"dominance [{label}]: for a fixed draft the rules accept equally many on "
                    f"average, but block accepts {blk:.12g} and token-wise {tok:.12g}"
                )
            continue
        blk = exact_outcomes(target, "block", p, q, dtype).expected_accepted
        tok = exact_outcomes(target, "token", p, q, dtype).expected_accepted
        if blk < tok - ROUNDING:
            raise CheckFailed(
                f"dominance [{label}]: block accepts {blk:.12g} drafts on average, fewer than "
                f"token-wise {tok:.12g}"
            )
        if K == 1 and abs(blk - tok) > ROUNDING:
            raise CheckFailed(
                f"dominance [{label}]: with K = 1 the rules coincide, but block accepts {blk:.12g} "
                f"and token-wise {tok:.12g} drafts on average"
            )
        gains.append(blk - tok)
        same = exact_outcomes(target, "block", q[:K], q, dtype).expected_accepted
        if abs(same - K) > ROUNDING:
            raise CheckFailed(f"dominance [{label}, p = q]: expected {K} accepted, got {same:.12g}")
    p, q = _paper_example()
    # float32 rows of 1/3 and 2/3 are off by 3e-8: E[tau] moves by less than 1e-6
    blk = exact_outcomes(target, "block", p, q, torch.float32).expected_accepted
    tok = exact_outcomes(target, "token", p, q, torch.float32).expected_accepted
    if abs(blk - 11 / 9) > 1e-6 or abs(tok - 10 / 9) > 1e-6:
        raise CheckFailed(
            f"dominance [the paper's binary example]: expected accepted drafts token {tok:.9f} "
            f"(must be 10/9 = {10 / 9:.9f}) and block {blk:.9f} (must be 11/9 = {11 / 9:.9f})"
        )
    return (
        f"{len(gains)} instances with draft_probs (and the draft_probs=None ones equal), largest gain {max(gains):.4f} drafts per step; paper's example "
        f"token {tok:.6f}, block {blk:.6f}"
    )


def _exact_law(p, q) -> dict[tuple[int, ...], float]:
    """The block reference's exact law of the emitted tokens (drafts drawn from p), float64."""
    K, V = len(p), len(q[0])
    law: dict[tuple[int, ...], float] = {}
    for xs in itertools.product(range(V), repeat=K):
        px = math.prod(p[k][x] for k, x in enumerate(xs))
        if px == 0:
            continue
        h = block_thresholds(list(xs), p, q)
        for t in range(K + 1):
            pt = px * (1.0 if t == 0 else h[t - 1]) * math.prod(1 - h[k] for k in range(t, K))
            if pt == 0:
                continue
            r = final_row(t, list(xs), p, q)
            total = sum(r)
            for j, rj in enumerate(r):
                if rj > 0:
                    key = tuple(xs[:t]) + (j,)
                    law[key] = law.get(key, 0.0) + pt * rj / total
    return law


@check("block.chi-square")
def chi_square(target: Target) -> str:
    """The backend's own randomness (seeded generator, drafts drawn from p) gives the exact law
    of the emitted tokens: Pearson chi-square at false-alarm rate 1e-4."""
    _require(target)
    gen = torch.Generator().manual_seed(77)
    V, K = 3, 3
    q = dyadic_rows(gen, K + 1, V, zeros=False)
    p = dyadic_rows(gen, K, V, zeros=False)
    n = CHI_SAMPLES[target.level]
    law = _exact_law(p, q)
    keys = sorted(law)
    dtype = DTYPES[target.capabilities.dtypes[0]]
    p_t = torch.tensor(p, dtype=torch.float64)
    ids = torch.stack(
        [torch.multinomial(p_t[k], n, replacement=True, generator=gen) for k in range(K)], dim=1
    )
    dev = target.device
    pp = p_t.to(dtype).expand(n, -1, -1).contiguous().to(dev)
    qq = torch.tensor(q, dtype=torch.float64).to(dtype).expand(n, -1, -1).contiguous().to(dev)
    g = torch.Generator(device=dev).manual_seed(78)
    out = target.verify(ids.to(dev), pp, qq, generator=g, rule="block")
    check_output(out, ids, V, dev, "block chi-square")
    tok, num = out.token_ids.cpu(), out.num_emitted.cpu()
    counts = {k: 0 for k in keys}
    for j in range(n):
        key = tuple(tok[j, : int(num[j])].tolist())
        if key not in counts:
            raise CheckFailed(
                f"block chi-square: the backend emitted {list(key)}, which has probability 0"
            )
        counts[key] += 1
    res = st.chisquare_gof([counts[k] for k in keys], [law[k] for k in keys])
    if res.pvalue < ALPHA:
        raise CheckFailed(
            f"block chi-square: the emitted tokens do not follow the exact block law "
            f"({res.describe()} < false-alarm rate {ALPHA:g}; {n} samples, {len(keys)} outcomes)"
        )
    return f"{n} samples, {len(keys)} outcomes: {res.describe()}"


def emitted_law(h: list[float]) -> list[float]:
    """``P(num_emitted = t + 1)`` for ``t = 0..K`` of one request whose coins meet thresholds
    ``h`` (``tau = max{k + 1 : u[k] < h[k]}``, independent uniform coins). Thresholds are
    clipped to [0, 1] first: float64 rounding can leave ``Z / (Z + 1 - w)`` a few ulps above 1,
    which would make ``1 - h`` and the law negative."""
    h = [min(1.0, max(0.0, float(x))) for x in h]
    K = len(h)
    return [
        (1.0 if t == 0 else h[t - 1]) * math.prod(1.0 - h[k] for k in range(t, K))
        for t in range(K + 1)
    ]


def _spread_workload(target: Target, B: int, K: int, V: int, calls: int):
    """The first workload (seeds from 300) whose every request has at least three emitted counts
    of expected frequency >= 20 over ``calls`` (a law on one outcome cannot fail the test), with
    each request's law."""
    dtype = DTYPES[target.capabilities.dtypes[0]]
    for seed in range(300, 400):
        w = workload(target, B, K, V, seed=seed, acceptance="high", dtype=dtype)
        ids = w.draft_token_ids.cpu().tolist()
        p = w.draft_probs.cpu().double()
        q = w.target_probs.cpu().double()
        laws = [
            emitted_law(block_thresholds(ids[b], p[b].tolist(), q[b].tolist())) for b in range(B)
        ]
        if all(sum(x * calls >= 20 for x in law) >= 3 for law in laws):
            return w, laws
    raise RuntimeError(f"block.repeated-calls: no spread workload for B={B}, K={K}, V={V}")


@check("block.repeated-calls")
def repeated_calls(target: Target) -> str:
    """Small batches called many times with one seeded generator: each request's number of
    emitted tokens follows the exact law of its fixed draft (Pearson chi-square, false-alarm
    rate 1e-4 over all requests). Catches coins that repeat or correlate from call to call and
    small-batch kernel paths that the one-call checks do not reach."""
    _require(target)
    calls = REPEAT_CALLS[target.level]
    shapes = REPEAT_SHAPES[target.level]
    alpha = ALPHA / sum(B for B, _, _ in shapes)  # Bonferroni over every request tested
    notes = []
    for B, K, V in shapes:
        w, laws = _spread_workload(target, B, K, V, calls)
        g = torch.Generator(device=target.device).manual_seed(7 + B)
        emitted = []
        for _ in range(calls):
            out = target.verify(
                w.draft_token_ids, w.draft_probs, w.target_probs, generator=g, rule="block"
            )
            emitted.append(out.num_emitted)
        ne = torch.stack(emitted).cpu().to(torch.int64)  # [calls, B]
        if int(ne.min()) < 1 or int(ne.max()) > K + 1:
            raise CheckFailed(
                f"block repeated calls (B={B}, K={K}, V={V}): num_emitted outside [1, K+1]: "
                f"{sorted(set(ne.flatten().tolist()))}"
            )
        worst = 1.0
        for b in range(B):
            counts = torch.bincount(ne[:, b] - 1, minlength=K + 1)
            res = st.chisquare_gof(counts, laws[b])
            worst = min(worst, res.pvalue)
            if res.pvalue < alpha:
                expected = [round(x * calls, 1) for x in laws[b]]
                raise CheckFailed(
                    f"block repeated calls (B={B}, K={K}, V={V}), request {b}: over {calls} "
                    f"calls with one generator the emitted counts t+1 = 1..{K + 1} were "
                    f"{counts.tolist()}, expected {expected} ({res.describe()} < false-alarm "
                    f"rate {alpha:g})"
                )
        notes.append(f"B={B} K={K} V={V}: {calls} calls, smallest p={worst:.3g}")
    return "; ".join(notes)


@check("block.edge")
def edge(target: Target) -> str:
    """Edge cases under rule="block": B = 0, K = 0, K = 1 (equals token-wise), V = 1, p = q,
    disjoint supports, zero-probability drafts, int32 ids, non-contiguous inputs, greedy mode
    (equals token-wise greedy), inputs unmodified."""
    _require(target)
    dev = target.device
    dtype = DTYPES[target.capabilities.dtypes[0]]
    done = []
    # B = 0
    out = target.verify(
        torch.zeros((0, 3), dtype=torch.int64, device=dev),
        None,
        torch.zeros((0, 4, 5), dtype=dtype, device=dev),
        rule="block",
    )
    if tuple(out.token_ids.shape) != (0, 4) or tuple(out.num_emitted.shape) != (0,):
        raise CheckFailed(f"block B=0: output shapes {tuple(out.token_ids.shape)}")
    done.append("B=0")
    for K, V, label in ((0, 6, "K=0"), (1, 40, "K=1"), (3, 1, "V=1"), (5, 9, "K=5, V=9")):
        target.require_size(V, K)
        w = workload(target, 32, K, V, seed=500 + K, with_draft_probs=True)
        u = uniforms(32, K, 600 + K, dev)
        ids, p, q = w.draft_token_ids, w.draft_probs, w.target_probs
        before = snapshot(ids, p, q, u)
        compare_block_to_reference(target, ids, p, q, u, label=f"block {label}")
        assert_unmodified(
            before,
            [ids, p, q, u],
            ["draft_token_ids", "draft_probs", "target_probs", "uniforms"],
            label,
        )
        if K <= 1:
            a = target.verify(ids, p, q, uniforms=u, rule="block")
            b = target.verify(ids, p, q, uniforms=u)
            if not torch.equal(a.token_ids.cpu(), b.token_ids.cpu()):
                raise CheckFailed(
                    f"block {label}: with K <= 1 rule='block' must equal rule='token'"
                )
        if "greedy" in target.capabilities.modes:
            a = target.verify(ids, p, q, mode="greedy", rule="block")
            ref = reference_verify(ids, p, q, mode="greedy")
            if not torch.equal(a.token_ids.cpu(), ref.token_ids.cpu()):
                raise CheckFailed(f"block greedy {where(label)}: must equal token-wise greedy")
        done.append(label)
    # p = q (everything accepted), disjoint supports, zero-probability drafts, int32, strided
    B, K, V = 24, 4, 12
    w = workload(target, B, K, V, seed=700, with_draft_probs=True)
    ids, p, q = w.draft_token_ids, w.draft_probs, w.target_probs
    u = uniforms(B, K, 701, dev)
    same = q[:, :K].contiguous()
    out = target.verify(ids, same, q, uniforms=u, rule="block")
    if not bool((out.num_emitted.cpu() == K + 1).all()):
        raise CheckFailed("block p = q: every draft must be accepted")
    disjoint_p = torch.zeros_like(p)
    disjoint_p[..., : V // 2] = 2.0 / V
    disjoint_q = torch.zeros_like(q)
    disjoint_q[..., V // 2 :] = 2.0 / V
    ids_low = ids % (V // 2)
    compare_block_to_reference(target, ids_low, disjoint_p, disjoint_q, u, label="block disjoint")
    zero_p = p.clone()
    zero_p.scatter_(-1, ids.unsqueeze(-1).to(torch.int64), 0.0)
    compare_block_to_reference(target, ids, zero_p, q, u, label="block zero-probability drafts")
    compare_block_to_reference(target, ids.to(torch.int32), p, q, u, label="block int32 ids")
    wide_q = torch.zeros((B, K + 1, 2 * V), dtype=q.dtype, device=dev)
    wide_q[..., ::2] = q
    wide_p = torch.zeros((B, K, 2 * V), dtype=p.dtype, device=dev)
    wide_p[..., ::2] = p
    compare_block_to_reference(
        target, ids, wide_p[..., ::2], wide_q[..., ::2], u, label="block non-contiguous"
    )
    done += ["p = q", "disjoint supports", "zero-probability drafts", "int32", "non-contiguous"]
    return ", ".join(done)


def _block_cases():
    """check_status's planted values, plus the ones only block verification reads."""
    from .check_status import BAD, Case, K, _random_cases

    def off_draft(tensor: str, row: int, value: float):
        def edit(ids, p, q, u):
            t = q if tensor == "q" else p
            x = int(ids[BAD, row])
            t[BAD, row, (x + 1) % t.shape[-1]] = value

        return edit

    extra = [
        Case(f"{t} {name} off the drafted token, row {row}", "random", off_draft(t, row, v))
        for t in ("q", "p")
        for row in (0, K - 1)
        for name, v in (("NaN", float("nan")), ("-1", -1.0), ("+inf", float("inf")))
    ]
    return [c for c in _random_cases() if not c.label.startswith("greedy")] + extra


@check("block.status")
def status(target: Target) -> str:
    """Every planted bad value gives the block reference's status bits under rule="block"
    (rows 0..K-1 of q and p read in full, then the final row), flagged requests emit nothing,
    clean requests keep the reference's tokens."""
    _require(target)
    from .check_status import BAD, B, K, V

    flagged_cases = 0
    for i, case in enumerate(_block_cases()):
        w = workload(target, B, K, V, seed=900 + i, acceptance="high", with_draft_probs=True)
        ids = w.draft_token_ids.cpu().to(torch.int64).clone()
        p = w.draft_probs.cpu().float().clone() if case.draft else None
        q = w.target_probs.cpu().float().clone()
        u = torch.rand(B, K + 1, generator=torch.Generator().manual_seed(950 + i))
        case.edit(ids, p if p is not None else torch.empty(0), q, u)
        dev, dtype = target.device, w.target_probs.dtype
        ids, q, u = ids.to(dev), q.to(dev, dtype), u.to(dev)
        p = None if p is None else p.to(dev, dtype)
        label = f"block, {case.label}"
        ref = reference_verify(ids, p, q, uniforms=u, rule="block").status.cpu()
        if not target.capabilities.status_flags:
            if int(ref[BAD]) and case.eager_detectable:
                try:
                    target.verify(ids, p, q, uniforms=u, rule="block")
                except ValueError:
                    flagged_cases += 1
                    continue
                raise CheckFailed(f"eager check {where(label)}: no ValueError for a bad value")
            continue
        before = snapshot(ids, p, q, u)
        out = target.verify(ids, p, q, uniforms=u, rule="block")
        assert_unmodified(
            before,
            [ids, p, q, u],
            ["draft_token_ids", "draft_probs", "target_probs", "uniforms"],
            label,
        )
        got = out.status.cpu()
        if not torch.equal(got, ref):
            b = int(torch.nonzero(got != ref)[0])
            raise CheckFailed(
                f"block status bits {where(label, b)}: the backend reports {int(got[b])} "
                f"({describe(int(got[b]))}), the reference {int(ref[b])} ({describe(int(ref[b]))})"
            )
        tok, num = out.token_ids.cpu(), out.num_emitted.cpu()
        for b in torch.nonzero(ref).flatten().tolist():
            if int(num[b]) != 0 or bool((tok[b] != -1).any()):
                raise CheckFailed(
                    f"block flagged outputs {where(label, b)}: a flagged request must emit "
                    f"nothing, got num_emitted={int(num[b])}, token_ids={tok[b].tolist()}"
                )
        clean = torch.nonzero(ref == 0).flatten().to(dev)
        sub = type(out)(out.token_ids[clean], out.num_emitted[clean], out.status[clean])
        compare_block_to_reference(
            target,
            ids[clean],
            None if p is None else p[clean],
            q[clean],
            u[clean],
            label=f"{label}, clean requests",
            out=sub,
        )
        flagged_cases += int(ref[BAD] != 0)
    return f"{len(_block_cases())} planted cases, {flagged_cases} flagged as the reference does"


@check("block.unclaimed")
def unclaimed(target: Target) -> str:
    """A backend that does not claim rule="block" refuses it with a ValueError naming itself and
    the rule (never a silent token-wise answer); one that claims it accepts it."""
    rules = getattr(target.capabilities, "rules", ("token",))
    B, K, V = 2, 2, 5
    target.require_size(V, K)
    w = workload(target, B, K, V, seed=11, with_draft_probs=True)
    u = uniforms(B, K, 12, target.device)
    args = (w.draft_token_ids, w.draft_probs, w.target_probs)
    mode = "random" if "random" in target.capabilities.modes else "greedy"
    kw = {"uniforms": u} if mode == "random" else {"mode": "greedy"}
    if "block" in rules:
        target.verify(*args, rule="block", **kw)
        return f"claims {rules}; rule='block' accepted"
    try:
        target.verify(*args, rule="block", **kw)
    except ValueError as e:
        msg = str(e)
        if "block" not in msg or target.backend.name not in msg:
            raise CheckFailed(
                f"unclaimed rule: ValueError({msg!r}) must name the backend and the rule"
            ) from e
        return f"claims {rules}; rule='block' refused: {msg}"
    raise CheckFailed(
        f"unclaimed rule: the backend claims rules {rules} but verify(rule='block') returned "
        "normally; it must raise ValueError"
    )
