"""Exact output distributions of a backend on small chains, by probing every coin cell.

Setting (as in docs/rules.md, "What the tests prove"): fixed rows, ``q[j]`` the target's row at
position ``j`` whatever came before, ``p[j]`` the drafter's. A draft sequence ``x`` has probability
``prod_j p[j][x_j]`` (or is fixed, for ``draft_probs=None``). Given ``x``, a rule's decisions depend
on the coins ``u[0..K-1]`` only through the events ``{u[k] < h[k]}``, where ``h`` are the
reference's float64 thresholds (block: ``h_k`` of docs/rules.md; token: ``min(1, q/p)``). So
``[0, 1)^K`` splits into ``2^K`` boxes of known probability ``prod_k h_k or (1 - h_k)``, and the
last coin's interval splits at the cumulative boundaries of the row the reference draws from.
The backend is called once per cell, at the cell's midpoint (explicit float32 uniforms), and the
output distribution is the probability-weighted sum of what it emits. Cells narrower than
:data:`MIN_WIDTH` cannot be probed reliably with a float32 coin; their mass is skipped and added to
the tolerance (and reported).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from specsample.reference import residual
from specsample.reference_block import block_thresholds, final_row

from .checks import CheckFailed, Target

#: cells narrower than this are not probed (a float32 midpoint is then still at least 2^-22 from
#: either end, far beyond any backend's threshold rounding)
MIN_WIDTH = 2.0**-20
#: float64 rounding of the computed probabilities: each is a product of at most K + 2 factors
#: (relative error about 1e-15 each) summed over at most 10^4 cells, so |error| < 1e-11
ROUNDING = 1e-9


def dyadic_rows(gen: torch.Generator, count: int, vocab: int, zeros: bool) -> list[list[float]]:
    """``count`` random rows of ``vocab`` multiples of 1/64 summing to exactly 1 (exact in every
    claimed dtype, so the target's distribution is exactly the rows); with ``zeros`` some entries
    are 0."""
    rows = []
    for _ in range(count):
        w = torch.rand(vocab, generator=gen, dtype=torch.float64) ** 2
        if zeros and vocab > 2:
            w[int(torch.randint(vocab, (1,), generator=gen))] = 0.0
        counts = torch.floor(w / w.sum() * 64).to(torch.int64)
        counts[int(torch.argmax(w))] += 64 - int(counts.sum())
        rows.append([c / 64 for c in counts.tolist()])
    return rows


def token_thresholds(ids, p_rows, q_rows) -> list[float]:
    """The token rule's accept probabilities ``min(1, q_k(x_k) / p_k(x_k))`` (``u p < q``)."""
    out = []
    for k, x in enumerate(ids):
        p = 1.0 if p_rows is None else p_rows[k][x]
        q = q_rows[k][x]
        out.append(min(1.0, q / p) if p > 0 else (1.0 if q > 0 else 0.0))
    return out


def _reference_tau(rule: str, passed: tuple[bool, ...]) -> int:
    if rule == "block":
        return max((k + 1 for k, ok in enumerate(passed) if ok), default=0)
    return next((k for k, ok in enumerate(passed) if not ok), len(passed))


def _reference_row(rule: str, tau: int, ids, p_rows, q_rows) -> list[float]:
    if rule == "block":
        return final_row(tau, ids, p_rows, q_rows)
    if tau == len(ids):
        return list(q_rows[tau])
    p = None if p_rows is None else torch.tensor(p_rows[tau], dtype=torch.float64)
    return residual(p, torch.tensor(q_rows[tau], dtype=torch.float64), ids[tau]).tolist()


@dataclass
class Outcomes:
    """The exact distribution of what a backend emits on one instance."""

    emitted: dict[tuple[int, ...], float] = field(default_factory=lambda: defaultdict(float))
    expected_accepted: float = 0.0
    skipped: float = 0.0  # mass of cells too narrow to probe
    probes: int = 0


def exact_outcomes(
    target: Target,
    rule: str,
    p_rows: list[list[float]] | None,
    q_rows: list[list[float]],
    dtype: torch.dtype,
    fixed_ids: list[int] | None = None,
) -> Outcomes:
    """Probe the backend on every cell of one instance (one batched call).

    Args:
        rule: ``"token"`` or ``"block"``: the rule the backend is called with and whose reference
            thresholds define the cells.
        p_rows: ``[K][V]`` draft rows (drafts enumerated with probability ``prod p``), or None
            (``draft_probs=None``; then ``fixed_ids`` is the one draft sequence).
        q_rows: ``[K+1][V]`` target rows.
        dtype: the probability dtype of the call.
    """
    K, V = len(q_rows) - 1, len(q_rows[0])
    if p_rows is None:
        drafts = [(tuple(fixed_ids or []), 1.0)]
    else:
        drafts = []
        for xs in itertools.product(range(V), repeat=K):
            prob = math.prod(p_rows[k][x] for k, x in enumerate(xs))
            if prob > 0:
                drafts.append((xs, prob))
    out = Outcomes()
    ids_l, u_l, w_l, h_l, pass_l = [], [], [], [], []
    for xs, p_x in drafts:
        h = (block_thresholds if rule == "block" else token_thresholds)(list(xs), p_rows, q_rows)
        for passed in itertools.product((True, False), repeat=K):
            widths = [h[k] if ok else 1.0 - h[k] for k, ok in enumerate(passed)]
            cell = p_x * math.prod(widths)
            if cell == 0.0:
                continue
            if min(widths, default=1.0) < MIN_WIDTH:
                out.skipped += cell
                continue
            coins = [h[k] / 2 if ok else (1.0 + h[k]) / 2 for k, ok in enumerate(passed)]
            tau = _reference_tau(rule, passed)
            r = _reference_row(rule, tau, list(xs), p_rows, q_rows)
            total = sum(r)
            lo = 0.0
            for rj in r:
                hi = lo + rj
                if rj > 0:
                    if rj / total < MIN_WIDTH:
                        out.skipped += cell * rj / total
                    else:
                        ids_l.append(list(xs))
                        h_l.append(list(h))
                        pass_l.append(list(passed))
                        u_l.append(coins + [(lo + hi) / 2 / total])
                        w_l.append(cell * rj / total)
                lo = hi
    if not ids_l:
        return out
    n = len(ids_l)
    dev = target.device
    ids = torch.tensor(ids_l, dtype=torch.int64).reshape(n, K).to(dev)
    u = torch.tensor(u_l, dtype=torch.float64).to(torch.float32)
    # The float32 coins must stay inside their cells (MIN_WIDTH guarantees it; checked anyway).
    h_t = torch.tensor(h_l, dtype=torch.float64).reshape(n, K)
    pass_t = torch.tensor(pass_l, dtype=torch.bool).reshape(n, K)
    if bool(((u[:, :K].to(torch.float64) < h_t) != pass_t).any()):
        raise AssertionError("a float32 coin left its cell: MIN_WIDTH is too small")
    q = torch.tensor(q_rows, dtype=torch.float64).to(dtype).expand(n, -1, -1).contiguous()
    p = None
    if p_rows is not None:
        p = torch.tensor(p_rows, dtype=torch.float64).to(dtype).expand(n, -1, -1).contiguous()
    p = None if p is None else p.to(dev)
    res = target.verify(ids, p, q.to(dev), uniforms=u.to(dev), rule=rule)
    tok, num = res.token_ids.cpu(), res.num_emitted.cpu()
    if bool((res.status.cpu() != 0).any()):
        raise CheckFailed(f"exact probes: the backend flagged valid inputs (rule={rule!r})")
    for j in range(n):
        m = int(num[j])
        out.emitted[tuple(tok[j, :m].tolist())] += w_l[j]
        out.expected_accepted += w_l[j] * (m - 1)
    out.probes = n
    return out


def losslessness_gap(outcomes: Outcomes, q_rows: list[list[float]]) -> tuple[float, str]:
    """Largest difference between the emitted law, completed to ``K+1`` tokens with target
    draws, and the target's law ``prod_j q[j](s_j)``; returns ``(gap, description)``.

    Checks the first token's law, then the full completed sequence, and describes the first
    property that breaks the most.
    """
    K1, V = len(q_rows), len(q_rows[0])
    first = [0.0] * V
    for e, prob in outcomes.emitted.items():
        first[e[0]] += prob
    gap1, at1 = max((abs(first[v] - q_rows[0][v]), v) for v in range(V))
    worst, where_s, got_s, want_s = 0.0, (), 0.0, 0.0
    for s in itertools.product(range(V), repeat=K1):
        want = math.prod(q_rows[j][s[j]] for j in range(K1))
        got = 0.0
        for n in range(1, K1 + 1):
            prob = outcomes.emitted.get(s[:n], 0.0)
            if prob:
                got += prob * math.prod(q_rows[j][s[j]] for j in range(n, K1))
        if abs(got - want) > worst:
            worst, where_s, got_s, want_s = abs(got - want), s, got, want
    if gap1 >= worst / 2 and gap1 > 0:
        return gap1, (
            f"the first emitted token's law differs from target row 0 at token {at1}: "
            f"P={first[at1]:.12g}, q_0={q_rows[0][at1]:.12g}"
        )
    return worst, (
        f"the emitted sequence (completed with target draws) has P({list(where_s)})="
        f"{got_s:.12g}, the target's law gives {want_s:.12g}"
    )
