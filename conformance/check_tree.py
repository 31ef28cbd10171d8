"""tree.*: ``Backend.verify_tree`` against the float64 tree reference (docs/contract-trees.md).

Every check runs each claimed tree rule (greedy, target-only, with and without replacement) and
reports not-claimed for a backend whose ``Capabilities.tree_modes`` is empty. The exact law check
enumerates the coins' decision cells in float64; the sampling check's false-alarm rate is
``ALPHA`` (Bonferroni over its sub-tests), like the stats.* checks.
"""

from __future__ import annotations

import itertools

import torch
from specsample import Status, reference_verify
from specsample.trees import chain

from . import statistics as st
from .check_common import first_claimed_dtype, uniforms, workload
from .check_stats import ALPHA
from .checks import CheckFailed, NotClaimed, Target, check
from .tree_common import (
    RULE_REFERENCES,
    TreeCase,
    call_args,
    check_tree_output,
    claimed_rules,
    compare_tree,
    label_of,
)

#: the chain rule each tree rule reduces to on a chain (docs/rules.md)
CHAIN_RULES = {"token": "token", "traversal": "block"}


def _chain_verify(target: Target, rule: str, ids, probs, q, mode: str, kw: dict):
    """``verify()`` with the chain rule of tree ``rule``: the backend's own when it claims that
    rule (then the tokens must be equal), else the float64 reference's."""
    chain_rule = CHAIN_RULES[rule]
    if chain_rule == "token":
        return target.verify(ids, probs, q, mode=mode, **kw)
    if chain_rule in target.capabilities.rules:
        return target.verify(ids, probs, q, mode=mode, rule=chain_rule, **kw)
    return reference_verify(ids, probs, q, mode=mode, rule=chain_rule, **kw)


@check("tree.chain")
def tree_chain(target: Target) -> str:
    """verify_tree on the chain [-1, 0, ..., K-2] equals verify() token for token (same uniforms,
    and the same generator seed), for every claimed rule."""
    rules = claimed_rules(target)
    dtype = first_claimed_dtype(target)
    dev = target.device
    count = 0
    for i, (B, K, V) in enumerate([(64, 0, 20), (64, 1, 50), (96, 4, 50), (48, 7, 300)]):
        w = workload(target, B, K, V, acceptance="high", seed=700 + i, with_draft_probs=True)
        ids, p, q = w.draft_token_ids, w.draft_probs.to(dtype), w.target_probs.to(dtype)
        u = uniforms(B, K, 710 + i, dev)
        parents = chain(K, device=dev).expand(B, K).contiguous()
        wants = {}  # verify() has no draft_sampling: one call serves both draft-probs rules
        for mode, sampling, rule in rules:
            if mode not in target.capabilities.modes:
                continue  # trees in this mode but not chains: nothing to compare with
            probs, ds = call_args(sampling, p)
            label = f"chain K={K}, V={V}, {label_of(mode, sampling, rule)}"
            for how in ("uniforms", "generator"):
                kw = {"uniforms": u} if how == "uniforms" else {}
                if how == "generator":
                    if mode == "greedy":
                        continue
                    kw_tree = {"generator": torch.Generator(dev).manual_seed(5 + i)}
                    kw = {"generator": torch.Generator(dev).manual_seed(5 + i)}
                else:
                    kw_tree = kw
                key = (mode, probs is None, rule, how)
                if key not in wants:
                    wants[key] = _chain_verify(target, rule, ids, probs, q, mode, kw)
                want = wants[key]
                got = target.backend.verify_tree(
                    ids, parents, probs, q, mode=mode, draft_sampling=ds, rule=rule, **kw_tree
                )
                for name in ("token_ids", "num_emitted", "status"):
                    a, b = getattr(got, name).cpu(), getattr(want, name).cpu()
                    if a.shape != b.shape or not torch.equal(a, b):
                        diff = torch.nonzero((a != b).reshape(B, -1).any(1)).flatten()[:1].tolist()
                        raise CheckFailed(
                            f"{name} [{label}, {how}]: verify_tree differs from verify() "
                            f"(request {diff}: {a[diff].tolist()} vs {b[diff].tolist()})"
                        )
                n = (want.num_emitted.cpu() - 1).clamp(min=0)
                expect = torch.where(torch.arange(K) < n.unsqueeze(1), torch.arange(K), -1)
                if not torch.equal(got.accepted_nodes.cpu(), expect):
                    raise CheckFailed(f"accepted_nodes [{label}]: a chain accepts nodes 0..n-2")
                count += B
    return f"{count} chain requests x (uniforms, generator), {len(rules)} rules"


@check("tree.exact")
def tree_exact(target: Target) -> str:
    """With uniforms, random trees (balanced, EAGLE-2 shaped, stars, chains, random; padded with
    num_nodes) give the reference's status, path and tokens, every claimed rule."""
    rules = claimed_rules(target)
    from .tree_common import random_case

    cases = [
        random_case(["balanced", "eagle2", "star", "chain", "random"], 80, 16, 12, 800),
        random_case(["random", "eagle2"], 40, 20, 300, 801),
    ]
    if target.full:
        cases.append(random_case(["eagle2", "random", "balanced"], 512, 64, 32000, 802))
    near = 0
    for case in cases:
        for mode, sampling, rule in rules:
            near += compare_tree(target, case, mode, sampling, rule)
        compare_tree(target, case, rules[0][0], rules[0][1], rules[0][2], max_depth=64)
    total = sum(c.ids.shape[0] for c in cases)
    return f"{total} trees x {len(rules)} rules; {near} proven near-tie differences"


def _boundary_case() -> tuple[TreeCase, list[tuple[int, list[int]]]]:
    """Dyadic rows (every sum exact) with coins on the field's known trouble spots, and the
    accepted nodes the target-only rule must give (checked by hand, not only against the reference).

    Tree per request: nodes 0, 1, 2 are children of the root (tokens 0, 1, 2); node 3 is a child
    of node 1 (token 3). V = 8.
    """
    V = 8
    rows, expect = [], []
    flat = [0.125] * V

    def add(root, u, nodes, n=4, leaf_row=flat):
        rows.append((root, u, n, leaf_row))
        expect.append((len(rows) - 1, nodes))

    zero_first = [0.0, 0.5, 0.25, 0.0, 0.25, 0.0, 0.0, 0.0]
    add(
        zero_first, [0.0, 0.0, 0.0, 0.0, 0.5], [1, 3]
    )  # coin 0: the zero-probability child is skipped
    add(zero_first, [1.0 - 2.0**-24] + [0.0] * 3 + [1.0 - 2.0**-24], [])  # past every bucket
    add(zero_first, [0.5, 0.0, 0.0, 0.0, 0.0], [2])  # interior boundary: 0.5 opens node 2's bucket
    add(zero_first, [0.75, 0.0, 0.0, 0.0, 0.0], [])  # the end of the last bucket: none accepted
    one_hot = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    add(one_hot, [0.0, 0.0, 0.0, 0.0, 0.3], [2])  # the root's row one-hot on node 2's token
    add(one_hot, [1.0 - 2.0**-24, 0.0, 0.0, 0.0, 1.0 - 2.0**-24], [2])
    add(flat, [0.2, 0.0, 0.0, 0.0, 0.9], [1, 3], leaf_row=[0.0] * 7 + [1.0])  # a leaf at max_depth
    add(flat, [0.9, 0.9, 0.9, 0.9, 0.0], [], n=0)  # num_nodes = 0: one token from the root's row
    add([0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0], [0.0] * 4 + [1.0 - 2.0**-24], [])  # all rejected
    B = len(rows)
    ids = torch.tensor([[0, 1, 2, 3]] * B)
    parents = torch.tensor([[-1, -1, -1, 1]] * B)
    q = torch.tensor([[r[0], flat, [0.0, 0.0, 0.0, 1.0, 0, 0, 0, 0], flat, r[3]] for r in rows])
    p = torch.tensor([[[0.25, 0.25, 0.25, 0.25, 0, 0, 0, 0], flat, flat, flat]] * B)
    u = torch.tensor([r[1] for r in rows], dtype=torch.float32)
    counts = torch.tensor([r[2] for r in rows])
    case = TreeCase(ids, parents, counts, p, q, u, "boundary cases")
    return case, expect


@check("tree.boundaries")
def tree_boundaries(target: Target) -> str:
    """Coin 0 with a zero-probability child, coin 1-2^-24, interior CDF boundaries, a leaf at
    max_depth, all children rejected, num_nodes = 0, a one-hot root row: exactly the reference."""
    rules = claimed_rules(target)
    case, expect = _boundary_case()
    for mode, sampling, rule in rules:
        compare_tree(target, case, mode, sampling, rule, max_depth=2, tolerance=False)
    if ("random", "target_only", "token") in rules:
        c = case.to(target.device, first_claimed_dtype(target))
        out = target.backend.verify_tree(
            c.ids, c.parents, None, c.q, num_nodes=c.num_nodes, uniforms=c.u, max_depth=2
        )
        for b, nodes in expect:
            got = [x for x in out.accepted_nodes[b].tolist() if x >= 0]
            if got != nodes or int(out.status[b]) != 0:
                raise CheckFailed(
                    f"target-only boundary case {b}: accepted nodes {got} (status "
                    f"{int(out.status[b])}), expected {nodes}"
                )
    return f"{case.ids.shape[0]} crafted requests x {len(rules)} rules, exact (no tolerance)"


@check("tree.repeated-siblings")
def tree_repeated_siblings(target: Target) -> str:
    """Repeated sibling tokens are flagged REPEATED_SIBLING (and raise with validate="full") under
    the target-only and without-replacement rules, and verified normally by the others."""
    rules = claimed_rules(target)
    dev, dtype = target.device, first_claimed_dtype(target)
    ids = torch.tensor([[3, 3, 1], [2, 1, 2], [0, 1, 2]], device=dev)
    parents = torch.tensor([[-1, -1, 0], [-1, 0, -1], [-1, -1, -1]], device=dev)
    q = torch.full((3, 4, 5), 0.2, dtype=dtype, device=dev)
    p = torch.full((3, 3, 5), 0.2, dtype=dtype, device=dev)
    u = torch.full((3, 4), 0.5, device=dev)
    if not target.capabilities.status_flags:
        raise NotClaimed(
            "status_flags not claimed: a repeated sibling raises before the backend runs "
            "(tree.bad-input and validate='full' cover it)"
        )
    for mode, sampling, rule in rules:
        probs, ds = call_args(sampling, p)
        kw = dict(mode=mode, draft_sampling=ds, rule=rule, uniforms=u if mode == "random" else None)
        out = target.backend.verify_tree(ids, parents, probs, q, **kw)
        distinct = sampling in ("target_only", "without_replacement")
        want = [int(Status.REPEATED_SIBLING)] * 2 + [0] if distinct else [0, 0, 0]
        if out.status.cpu().tolist() != want:
            raise CheckFailed(
                f"status [{label_of(mode, sampling, rule)}]: got {out.status.tolist()}, expected "
                f"{want} (requests 0 and 1 repeat a sibling token)"
            )
        ref = RULE_REFERENCES[rule](
            ids, parents, probs, q, **{k: v for k, v in kw.items() if k != "rule"}
        )
        check_tree_output(out, ref, f"repeated siblings, {label_of(mode, sampling, rule)}")
        if distinct:
            try:
                target.backend.verify_tree(ids, parents, probs, q, validate="full", **kw)
            except ValueError as e:
                if "request 0, node 1 repeats token 3" not in str(e):
                    raise CheckFailed(
                        f"validate='full' raised {e!r}; expected it to name "
                        "request 0, node 1 and token 3"
                    ) from e
            else:
                raise CheckFailed(f"validate='full' accepted repeated siblings under {sampling}")
    return f"{len(rules)} rules"


def _rrs_model(p: list[float], q: list[float], drafted: list[int], without: bool):
    """The recursive rejection sampling model in float64: ``(thresholds per child, last r)``.

    Child j is accepted iff its coin is below ``thresholds[j]``; ``r`` is the distribution of the
    last token when every child is rejected.
    """
    qc, pc, tried, th = list(q), list(p), [], []
    r_ = list(q)
    for j, x in enumerate(drafted):
        if j > 0:
            tq = sum(r_)
            qc = [v / tq for v in r_]
            if without:
                pw = [0.0 if k in tried else v for k, v in enumerate(p)]
                tp = sum(pw)
                pc = [v / tp for v in pw] if tp > 0 else pw
        th.append(min(1.0, qc[x] / pc[x]) if pc[x] > 0 else 1.0)
        r_ = [max(0.0, a - b) for a, b in zip(qc, pc, strict=True)]
        if sum(r_) == 0.0:
            r_ = list(qc)
        tried.append(x)
    return th, r_


def _cells(r: list[float]) -> list[tuple[float, float]]:
    """(midpoint coin, width) of each positive bucket of the inverse CDF of ``r``."""
    total, acc, out = sum(r), 0.0, []
    for v in r:
        if v > 0:
            out.append(((acc + v / 2) / total, v / total))
        acc += v
    return out


@check("tree.lossless-exact")
def tree_lossless_exact(target: Target) -> str:
    """The exact law of the first emitted token equals the target's (V <= 8, up to three root
    children, drafts from each rule's process): every coin cell is evaluated once, its volume
    computed in float64; a threshold off by more than half a cell shows."""
    rules = claimed_rules(target, modes=("random",))
    dev, dtype = target.device, first_claimed_dtype(target)
    # dyadic rows (exact in every claimed dtype): root q and draft p
    q0 = [0.25, 0.125, 0.375, 0.0, 0.1875, 0.0625]
    p0 = [0.125, 0.25, 0.25, 0.125, 0.0625, 0.1875]
    V = len(q0)
    checked = 0
    for _mode, sampling, rule in rules:
        points: list[tuple[list[int], list[float], float]] = []  # (tokens, coins, weight)
        m_all = (1, 2, 3)
        for m in m_all:
            if sampling == "target_only":
                tuples = [(t, 1.0 / 3) for t in [(2, 0, 4)[:m], (3, 5, 1)[:m], (1, 2, 0)[:m]]]
            else:
                tuples = []
                for t in itertools.product(range(V), repeat=m):
                    if sampling == "without_replacement" and len(set(t)) < m:
                        continue
                    w, left = 1.0, list(p0)
                    for x in t:
                        w *= left[x] / sum(left)
                        if sampling == "without_replacement":
                            left[x] = 0.0
                    if w > 0:
                        tuples.append((t, w))
            for t, w in tuples:
                if sampling == "target_only":
                    acc, th_cells = 0.0, []
                    for x in t:
                        if q0[x] > 0:
                            th_cells.append((acc + q0[x] / 2, q0[x]))
                        acc += q0[x]
                    for coin, width in th_cells:
                        points.append((list(t), [coin] + [0.0] * (m - 1) + [0.5], w * width))
                    r = [0.0 if k in t else v for k, v in enumerate(q0)]
                    if sum(r) == 0:
                        r = list(q0)
                    if acc < 1.0:
                        for coin, width in _cells(r):
                            coins = [(acc + 1) / 2] + [0.0] * (m - 1) + [coin]
                            points.append((list(t), coins, w * (1 - acc) * width))
                    continue
                th, r = _rrs_model(p0, q0, list(t), sampling == "without_replacement")
                reach = 1.0
                for j in range(m):
                    if th[j] > 0 and reach > 0:  # accept child j after rejecting 0..j-1
                        coins = [(1 + th[i]) / 2 for i in range(j)] + [th[j] / 2]
                        points.append(
                            (list(t), coins + [0.0] * (m - j - 1) + [0.5], w * reach * th[j])
                        )
                    reach *= 1 - th[j]
                if reach > 0:
                    for coin, width in _cells(r):
                        coins = [(1 + th[i]) / 2 for i in range(m)] + [coin]
                        points.append((list(t), coins, w * reach * width))
        firsts = _evaluate(target, points, q0, p0, sampling, rule, dev, dtype)
        for m in m_all:
            law = [0.0] * V
            for (toks, _, w), x in zip(points, firsts, strict=True):
                if len(toks) == m:
                    law[x] += w
            err = max(abs(a - b) for a, b in zip(law, q0, strict=True))
            if err > 1e-9:
                raise CheckFailed(
                    f"law of the first token [{sampling}, rule={rule}, {m} root children]: the "
                    f"backend's cells give {[round(x, 6) for x in law]}, the target is {q0} "
                    f"(max error {err:.3g})"
                )
        checked += len(points)
    return f"{checked} coin cells over {len(rules)} random rules; law = target within 1e-9"


def _evaluate(target, points, q0, p0, sampling, rule, dev, dtype) -> list[int]:
    """Run every point (a star of up to three children, padded with num_nodes) in one call and
    return the first emitted token of each."""
    B, N, V = len(points), 3, len(q0)
    ids = torch.zeros((B, N), dtype=torch.int64)
    u = torch.zeros((B, N + 1), dtype=torch.float32)
    counts = torch.zeros(B, dtype=torch.int64)
    for b, (toks, coins, _) in enumerate(points):
        m = len(toks)
        ids[b, :m] = torch.tensor(toks)
        counts[b] = m
        u[b, :m] = torch.tensor(coins[:m], dtype=torch.float64).to(torch.float32)
        u[b, N] = coins[m]
    parents = torch.full((B, N), -1, dtype=torch.int64)
    q = torch.tensor([[q0] + [[1.0 / V] * V] * N] * B).to(dtype)  # rows after a child: unread
    p = torch.tensor([[p0] * N] * B).to(dtype)
    probs, ds = call_args(sampling, p.to(dev))
    out = target.backend.verify_tree(
        ids.to(dev), parents.to(dev), probs, q.to(dev), draft_sampling=ds, rule=rule,
        num_nodes=counts.to(dev), uniforms=u.to(dev), max_depth=1,
    )  # fmt: skip
    if bool((out.status != 0).any()):
        raise CheckFailed(
            f"lossless cells [{sampling}]: a request was flagged {out.status.unique().tolist()}"
        )
    return out.token_ids[:, 0].cpu().tolist()


SAMPLES = {"fast": 4000, "full": 100_000}


@check("tree.lossless-stats")
def tree_lossless_stats(target: Target) -> str:
    """With the backend's own randomness, on two-level trees drafted by each rule's process, the
    first emitted token follows the root's target row and the second (after an accepted child)
    the child's row: chi-square tests at the suite's false-alarm rate. Under the traversal rule
    a child's acceptance depends on its subtree, so the second token is tested on every request,
    a one-token output completed by a draw from the child's row (the law lossless means)."""
    rules = claimed_rules(target, modes=("random",))
    dev, dtype = target.device, first_claimed_dtype(target)
    n = SAMPLES[target.level]
    V, m = 6, 3
    q0 = torch.tensor([0.3, 0.05, 0.2, 0.25, 0.15, 0.05])
    q1 = torch.tensor([0.1, 0.4, 0.1, 0.1, 0.2, 0.1])
    p0 = torch.tensor([0.2, 0.2, 0.1, 0.3, 0.1, 0.1])
    count = 2 * len(rules)
    alpha = ALPHA / count
    results = []
    for k, (_mode, sampling, rule) in enumerate(rules):
        g = torch.Generator().manual_seed(4100 + k)
        # nodes 0..2: root children; 3..5: one child under each of them
        if sampling == "target_only":
            top = torch.stack([torch.randperm(V, generator=g)[:m] for _ in range(n)])
            sub = torch.stack([torch.randperm(V, generator=g)[:1] for _ in range(n)])
            kids, grand = top, sub.expand(n, m)
        else:
            repl = sampling == "with_replacement"
            kids = torch.multinomial(p0.expand(n, V), m, replacement=repl, generator=g)
            grand = torch.multinomial(p0.expand(n * m, V), 1, generator=g).reshape(n, m)
        ids = torch.cat([kids, grand], dim=1)
        parents = torch.tensor([-1, -1, -1, 0, 1, 2]).expand(n, 6)
        q = torch.stack([q0] + [q1] * 6).expand(n, 7, V)
        p = p0.expand(n, 6, V)
        probs, ds = call_args(sampling, p.to(dtype).to(dev))
        out = target.backend.verify_tree(
            ids.to(dev), parents.to(dev).contiguous(), probs, q.to(dtype).to(dev).contiguous(),
            draft_sampling=ds, rule=rule, generator=torch.Generator(dev).manual_seed(4200 + k),
        )  # fmt: skip
        tok, num = out.token_ids.cpu(), out.num_emitted.cpu()
        if bool((out.status != 0).any()):
            raise CheckFailed(f"lossless sampling [{sampling}]: requests were flagged")
        first = torch.bincount(tok[:, 0], minlength=V)
        if rule == "token":
            second = torch.bincount(tok[num >= 2, 1], minlength=V)
        else:  # accepting a child depends on its subtree: complete one-token outputs instead
            sec = tok[:, 1].clone()
            short = num == 1
            if bool(short.any()):
                draws = torch.multinomial(q1, int(short.sum()), replacement=True, generator=g)
                sec[short] = draws
            second = torch.bincount(sec, minlength=V)
        for what, counts, probs_ in (("first token", first, q0), ("second token", second, q1)):
            r = st.chisquare_gof(counts, probs_.tolist())
            results.append((r.pvalue, f"{what} [{sampling}, rule={rule}]: {r.describe()}"))
    worst = min(results)
    if worst[0] < alpha:
        raise CheckFailed(
            "; ".join(msg for pv, msg in results if pv < alpha)
            + f" [p-value < {alpha:.2g} per sub-test, {count} sub-tests, false-alarm rate {ALPHA:g}]"
        )
    return f"{n} trees per rule; {count} sub-tests, smallest p-value {worst[0]:.3g} (alpha {alpha:.2g} each)"


@check("tree.bad-input")
def tree_bad_input(target: Target) -> str:
    """Bad arguments raise on the host naming the argument; bad trees and values are flagged in
    status exactly as the reference flags them, and validate="full" raises naming request/node."""
    rules = claimed_rules(target)
    dev, dtype = target.device, first_claimed_dtype(target)
    be = target.backend
    ids = torch.tensor([[1, 2, 3]] * 8, device=dev)
    parents = torch.tensor([[-1, 0, 0]] * 8, device=dev)
    q = torch.full((8, 4, 5), 0.2, dtype=dtype, device=dev)
    p = torch.full((8, 3, 5), 0.2, dtype=dtype, device=dev)
    u = torch.full((8, 4), 0.5, device=dev)
    raising = [
        ("parents", dict(parents=parents[:, :2])),
        ("parents", dict(parents=parents.float())),
        ("num_nodes", dict(num_nodes=torch.ones(7, dtype=torch.int64, device=dev))),
        ("max_depth", dict(max_depth=-1)),
        ("rule", dict(rule="no-such-rule")),
    ]
    for arg, change in raising:
        kw = dict(parents=parents, uniforms=u)
        kw.update(change)
        try:
            be.verify_tree(ids, kw.pop("parents"), None, q, **kw)
        except (ValueError, TypeError) as e:
            if arg not in str(e):
                raise CheckFailed(f"bad {arg}: the error {e!r} does not name {arg}") from e
        else:
            raise CheckFailed(f"bad {arg} ({change}) was accepted")
    # per-request problems: 0 ok, 1 parent not earlier, 2 padding parent, 3 too deep,
    # 4 num_nodes > N, 5 a bad id, 6 NaN in a read entry, 7 NaN in a padding node's row only
    par = parents.clone()
    par[1, 1] = 2
    par[2] = torch.tensor([-1, 2, 0])
    par[3] = torch.tensor([-1, 0, 1])
    nodes = torch.tensor([3, 3, 2, 3, 4, 3, 3, 2], device=dev)
    bad_ids = ids.clone()
    bad_ids[5, 2] = 9
    bad_ids[7, 2] = -1  # padding: not read
    qq = q.clone()
    qq[6, 0, 1] = float("nan")
    qq[7, 3] = float("nan")  # padding node 2's row
    count = 0
    if not target.capabilities.status_flags:  # the per-request part needs status flags
        return f"{len(raising)} host errors; status_flags not claimed, no per-request flags"
    for mode, sampling, rule in rules:
        probs, ds = call_args(sampling, p)
        kw = dict(mode=mode, draft_sampling=ds, rule=rule, num_nodes=nodes, max_depth=2,
                  uniforms=u if mode == "random" else None)  # fmt: skip
        out = be.verify_tree(bad_ids, par, probs, qq, **kw)
        ref = RULE_REFERENCES[rule](
            bad_ids, par, probs, qq, **{k: v for k, v in kw.items() if k != "rule"}
        )
        check_tree_output(out, ref, f"bad trees and values, {label_of(mode, sampling, rule)}")
        want = [0, 64, 64, 64, 64, 1]
        if out.status.cpu().tolist()[:6] != want:
            raise CheckFailed(f"status [{label_of(mode, sampling, rule)}]: {out.status.tolist()}")
        try:
            be.verify_tree(bad_ids, par, probs, qq, validate="full", **kw)
        except ValueError as e:
            if "request 1, node 1" not in str(e):
                raise CheckFailed(
                    f"validate='full' raised {e!r}; expected request 1, node 1"
                ) from e
        else:
            raise CheckFailed("validate='full' accepted a node whose parent is not earlier")
        count += 1
    return f"{len(raising)} host errors; 8 flagged/unflagged requests x {count} rules"
