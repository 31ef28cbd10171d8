"""GPU checks and timings of the ``triton`` backend, in one process (one device call).

The project's benchmark runner lives in ``specsample.reports``; this script is the backend's own
development tool: exactness against the float64 reference on many shapes, randomness and
CUDA-graph checks, kernel launches per call (torch.profiler), and the standard grid timed with
``triton.testing.do_bench(return_mode="median")`` (L2 flushed between calls), next to the bytes
each cell must read and the measured copy bandwidth.

    python scripts/triton_bench.py [--skip-check] [--skip-bench] [--json OUT.json] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import specsample  # noqa: E402
from specsample.backends import triton_backend as tb  # noqa: E402
from specsample.workloads import make_workload  # noqa: E402
from test_triton import check, random_case  # noqa: E402

DEV = torch.device("cuda")
BIG = False  # --big: also the B*K*V > 2**31 case (about 4 minutes, mostly the CPU reference)
RESULTS: dict = {"checks": [], "bench": [], "tuning": []}


def log(*a) -> None:
    print(*a, flush=True)


def env_info() -> dict:
    import triton

    p = torch.cuda.get_device_properties(DEV)
    info = {
        "gpu": p.name,
        "sms": p.multi_processor_count,
        "l2_mb": getattr(p, "L2_cache_size", 0) / 2**20,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
    }
    log("env:", json.dumps(info))
    return info


def copy_bandwidth() -> float:
    from triton.testing import do_bench

    x = torch.rand(2**28, device=DEV)  # 1 GiB
    y = torch.empty_like(x)
    t = do_bench(lambda: y.copy_(x), return_mode="median")
    bw = 2 * x.numel() * 4 / (t * 1e-3) / 1e12
    log(f"copy bandwidth: {bw:.2f} TB/s (read + write, 1 GiB, median {t * 1e3:.0f} us)")
    return bw


# ----------------------------------------------------------------------------- correctness


def run_check(name, fn) -> None:
    t0 = time.time()
    try:
        extra = fn()
        ok = True
        msg = "" if extra is None else str(extra)
    except Exception as exc:  # noqa: BLE001
        ok = False
        msg = f"{type(exc).__name__}: {exc}"[:600]
        traceback.print_exc()
    RESULTS["checks"].append({"name": name, "ok": ok, "msg": msg})
    log(f"{'PASS' if ok else 'FAIL'} {name} ({time.time() - t0:.1f}s) {msg}")


def correctness(quick: bool) -> None:
    be = specsample.get_backend("triton")
    shapes = [
        (5, 16, 131071),
        (3, 0, 50000),
        (4, 32, 1000),
        (33, 3, 7),
        (2, 2, 1),
        (1, 1, 262144),
        (1, 8, 128256),
        (64, 8, 128256),
    ]
    if not quick:
        shapes = [(256, 8, 128256)] + shapes
    for B, K, V in shapes:
        for dtype in (
            (torch.float32, torch.bfloat16)
            if quick
            else (torch.float32, torch.float16, torch.bfloat16)
        ):
            if dtype != torch.float32 and (V > 140000 or B >= 64):
                continue
            for with_p in (True, False):

                def f(B=B, K=K, V=V, dtype=dtype, with_p=with_p):
                    ids, p, q = random_case(
                        B,
                        K,
                        V,
                        dtype=dtype,
                        device=DEV,
                        seed=B + K + V,
                        with_p=with_p,
                        ids_dtype=torch.int32 if V % 2 else torch.int64,
                    )
                    nb = check(be, ids, p, q)
                    nb += check(be, ids, p, q, mode="greedy")
                    return f"boundary diffs: {nb}"

                run_check(
                    f"exact B={B} K={K} V={V} {str(dtype)[6:]} p={'yes' if with_p else 'None'}", f
                )

    # Every launch shape of the kernel on one case: single program, split rows, big tiles.
    for cfg in (
        tb.LaunchConfig(1024, 4, 1),
        tb.LaunchConfig(1024, 4, 126),
        tb.LaunchConfig(4096, 8, 7),
        tb.LaunchConfig(2048, 8, 3),
        tb.LaunchConfig(2048, 8, 1, True),
        tb.LaunchConfig(1024, 4, 9, True),
        tb.LaunchConfig(8192, 16, 4, True),
        tb.LaunchConfig(512, 4, 251),
    ):

        def f(cfg=cfg):
            tb.force_config(cfg)
            try:
                nb = 0
                for seed in range(3):
                    ids, p, q = random_case(16, 8, 128256, device=DEV, seed=seed)
                    nb += check(be, ids, p, q) + check(be, ids, p, q, mode="greedy")
                    nb += check(be, ids, None, q)
                return f"boundary diffs: {nb}"
            finally:
                tb.force_config(None)

        run_check(f"forced config {cfg}", f)

    def greedy_ties():
        g = torch.Generator().manual_seed(0)
        for cfg in (None, tb.LaunchConfig(1024, 4, 50)):
            tb.force_config(cfg)
            try:
                q = torch.randint(0, 3, (16, 9, 50000), generator=g).float()
                q = (q / q.sum(-1, keepdim=True)).to(DEV)
                ids = q[:, :8].argmax(-1)
                ids[::3, 4] = 7
                assert check(be, ids, None, q, mode="greedy") == 0
            finally:
                tb.force_config(None)

    run_check("greedy ties (smallest index)", greedy_ties)

    def greedy_all_rows():
        # One-tile chunks (all K+1 rows loaded at once) against the row-by-row loop.
        nb = 0
        for cfg in (
            tb.LaunchConfig(1024, 8, 126),
            tb.LaunchConfig(1024, 8, 40),
            tb.LaunchConfig(512, 4, 251),
        ):
            tb.force_config(cfg)
            try:
                for seed in range(2):
                    ids, p, q = random_case(4, 8, 128256, device=DEV, seed=seed)
                    ids[1] = q[1, :8].argmax(-1)
                    ids[2, :5] = q[2, :5].argmax(-1)
                    nb += check(be, ids, p, q, mode="greedy")
            finally:
                tb.force_config(None)
        return nb

    run_check("greedy, all rows at once vs row loop", greedy_all_rows)

    def zero_residual():
        g = torch.Generator().manual_seed(1)
        B, K, V = 8, 3, 40000
        q = torch.softmax(torch.randn(B, K + 1, V, generator=g), -1)
        p = q[:, :K].clone()
        ids = torch.randint(0, V, (B, K), generator=g)
        for b in range(B):
            q[b, 1, ids[b, 1]] = 0
            p[b, 1, ids[b, 1]] = 0
        u = torch.rand(B, K + 1, generator=g)
        u[:, 0] = 0.0
        return check(be, ids.to(DEV), p.to(DEV), q.to(DEV), uniforms=u.to(DEV))

    run_check("residual sums to zero -> q", zero_residual)

    def out_of_range():
        ids, p, q = random_case(6, 4, 5000, device=DEV, seed=9)
        ids[0, 0] = 5000
        ids[1, 2] = -3
        ids[2, 1] = 10**9
        for pp, mode in ((p, "random"), (None, "random"), (p, "greedy")):
            o = be.verify(ids, pp, q, mode=mode, check_finite=False)
            tok, num = o.token_ids.cpu(), o.num_emitted.cpu()
            assert num[0] == 1 and num[1] <= 3 and num[2] <= 2, num
            for b in range(6):
                n = int(num[b])
                assert 0 <= tok[b, n - 1] < 5000 and (tok[b, n:] == -1).all()

    run_check("out-of-range draft ids (check_finite=False)", out_of_range)

    def big_offsets():
        # B*K*V > 2**31 elements: row 15 of p starts past 2**31.
        B, K, V = 1, 16, 135_000_000
        torch.manual_seed(0)
        p = torch.rand(B, K, V, device=DEV, dtype=torch.float16) * 1e-3
        q = torch.rand(B, K + 1, V, device=DEV, dtype=torch.float16) * 1e-3
        ids = torch.randint(V - 1000, V, (B, K), device=DEV)
        for k in range(K):
            q[0, k, ids[0, k]] = 1.0
            p[0, k, ids[0, k]] = 0.5
        q[0, K - 1, ids[0, K - 1]] = 0.0  # rejected at the last draft: reads p row 15
        assert B * K * V > 2**31
        u = torch.rand(B, K + 1, device=DEV) * 0.999
        nb = check(be, ids, p, q, uniforms=u, check_finite=False)
        assert int(be.verify(ids, p, q, uniforms=u).num_emitted[0]) == K
        ids2 = q[:, :K].argmax(-1)
        nb += check(be, ids2, None, q, mode="greedy", check_finite=False)
        del p, q
        torch.cuda.empty_cache()
        return f"boundary diffs: {nb}"

    if BIG:
        run_check("64-bit offsets (B*K*V > 2**31, fp16)", big_offsets)


def randomness() -> None:
    be = specsample.get_backend("triton")

    def reproducible():
        ids, p, q = random_case(64, 8, 32000, device=DEV, seed=3)
        g = torch.Generator(device=DEV).manual_seed(123)
        a = be.verify(ids, p, q, generator=g)
        b = be.verify(ids, p, q, generator=g)
        g.manual_seed(123)
        c = be.verify(ids, p, q, generator=g)
        assert torch.equal(a.token_ids, c.token_ids) and torch.equal(a.num_emitted, c.num_emitted)
        assert not torch.equal(a.token_ids, b.token_ids)
        torch.manual_seed(5)
        d = be.verify(ids, p, q)
        torch.manual_seed(5)
        e = be.verify(ids, p, q)
        assert torch.equal(d.token_ids, e.token_ids)

    run_check("same generator state -> same output; advancing -> different", reproducible)

    def lossless(split: bool):
        # Drafts drawn from p: the first emitted token must follow q (the losslessness theorem),
        # and draft k=0 is accepted with probability sum(min(p, q)).
        V, K, N = 24, 2, 400_000
        g = torch.Generator().manual_seed(11)
        q1 = torch.softmax(torch.randn(V, generator=g) * 1.5, 0)
        p1 = torch.softmax(torch.randn(V, generator=g) * 1.5, 0)
        q = q1.expand(N, K + 1, V).contiguous().to(DEV)
        p = p1.expand(N, K, V).contiguous().to(DEV)
        ids = torch.multinomial(p1, N * K, replacement=True, generator=g).view(N, K).to(DEV)
        tb.force_config(tb.LaunchConfig(32, 4, 1) if not split else tb.LaunchConfig(32, 4, 1))
        try:
            out = be.verify(ids, p, q, generator=torch.Generator(device=DEV).manual_seed(2))
        finally:
            tb.force_config(None)
        first = out.token_ids[:, 0].cpu()
        counts = torch.bincount(first, minlength=V).double()
        expected = q1.double() * N
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        acc = float((out.num_emitted > 1).double().mean())
        want = float(torch.minimum(p1, q1).sum())
        # df = 23: P(chi2 > 80) ~ 1e-8; acceptance: 6 standard errors.
        assert chi2 < 80, f"chi2 {chi2:.1f}"
        assert abs(acc - want) < 6 * math.sqrt(want * (1 - want) / N), (acc, want)
        return f"chi2={chi2:.1f} (df=23) acceptance {acc:.4f} vs {want:.4f}"

    run_check("losslessness: first token ~ q, acceptance = sum min(p,q)", lambda: lossless(False))

    def lossless_split():
        # Same through the split path (many programs per request) on a long row.
        V, N = 4096, 20000
        g = torch.Generator().manual_seed(12)
        q1 = torch.softmax(torch.randn(V, generator=g) * 2, 0)
        p1 = torch.softmax(torch.randn(V, generator=g) * 2, 0)
        ids = torch.multinomial(p1, N, replacement=True, generator=g).view(N, 1).to(DEV)
        q = q1.expand(N, 2, V).contiguous().to(DEV)
        p = p1.expand(N, 1, V).contiguous().to(DEV)
        tb.force_config(tb.LaunchConfig(256, 4, 16))
        try:
            out = be.verify(ids, p, q, generator=torch.Generator(device=DEV).manual_seed(3))
        finally:
            tb.force_config(None)
        # Bucket tokens by q-quantiles (20 buckets of equal q mass) for a chi-square test.
        first = out.token_ids[:, 0].cpu()
        order = torch.argsort(q1)
        bucket_of = torch.empty(V, dtype=torch.long)
        cdf = torch.cumsum(q1[order].double(), 0)
        bucket_of[order] = torch.clamp((cdf * 20).long(), max=19)
        counts = torch.bincount(bucket_of[first], minlength=20).double()
        expected = torch.bincount(bucket_of, weights=q1.double(), minlength=20) * N
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 75, f"chi2 {chi2:.1f}"  # df = 19: P(chi2 > 75) ~ 1e-8
        return f"chi2={chi2:.1f} (df=19)"

    run_check("losslessness through the split path", lossless_split)


def graphs() -> None:
    be = specsample.get_backend("triton")

    def capture(B, K, V, uniforms: bool, cfg=None):
        ids, p, q = random_case(B, K, V, device=DEV, seed=4, acceptance=4.0)
        u = torch.rand(B, K + 1, device=DEV) if uniforms else None
        tb.force_config(cfg)
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    eager = be.verify(ids, p, q, uniforms=u, check_finite=False)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = be.verify(ids, p, q, uniforms=u, check_finite=False)
            outs = []
            for _ in range(3):
                graph.replay()
                outs.append((out.token_ids.clone(), out.num_emitted.clone()))
            torch.cuda.synchronize()
        finally:
            tb.force_config(None)
        for tok, num in outs:
            for b in range(B):
                n = int(num[b])
                assert torch.equal(tok[b, : n - 1].cpu(), ids[b, : n - 1].cpu().long())
                assert 0 <= int(tok[b, n - 1]) < V and (tok[b, n:] == -1).all()
        if uniforms:
            for tok, num in outs:
                assert torch.equal(tok, eager.token_ids) and torch.equal(num, eager.num_emitted)
            return "replays == eager (uniforms)"
        distinct = len({tuple(t.flatten().tolist()) for t, _ in outs})
        assert distinct == 3, f"replays gave {distinct} distinct outputs of 3"
        return "3 replays, 3 different draws"

    run_check("graph replay fresh randomness (B=64, split)", lambda: capture(64, 8, 32000, False))
    run_check("graph replay fresh randomness (B=1, V=128256)", lambda: capture(1, 8, 128256, False))
    run_check(
        "graph replay fresh randomness (B=256, C=1)",
        lambda: capture(256, 4, 32000, False, tb.LaunchConfig(2048, 8, 1)),
    )
    run_check("graph replay with uniforms == eager", lambda: capture(64, 8, 32000, True))


def launches() -> None:
    be = specsample.get_backend("triton")

    def count(mode, B, K, V, with_p=True):
        w = make_workload(B, K, V, device=DEV, acceptance="low", with_draft_probs=with_p)
        for _ in range(3):
            be.verify(
                w.draft_token_ids, w.draft_probs, w.target_probs, mode=mode, check_finite=False
            )
        torch.cuda.synchronize()
        from torch.profiler import ProfilerActivity, profile

        n_calls = 10
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(n_calls):
                be.verify(
                    w.draft_token_ids, w.draft_probs, w.target_probs, mode=mode, check_finite=False
                )
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        names = sorted({e.name for e in kernels})
        per_call = len(kernels) / n_calls
        assert per_call == 1, f"{per_call} device ops per call: {names}"
        return f"{per_call:g} launch per call ({names[0][:40]})"

    for mode, B, K, V, wp in (
        ("random", 1, 8, 128256, True),
        ("random", 256, 8, 128256, True),
        ("random", 64, 4, 32000, False),
        ("greedy", 8, 8, 32000, True),
    ):
        run_check(
            f"launches per call {mode} B={B} K={K} V={V}",
            lambda mode=mode, B=B, K=K, V=V, wp=wp: count(mode, B, K, V, wp),
        )


# ----------------------------------------------------------------------------- host side


def host_overhead() -> None:
    """Host (CPU) time of one call, no synchronization: the part of a call's latency that the
    GPU cannot hide at small batch sizes."""
    from specsample.validation import validate_inputs

    be = specsample.get_backend("triton")
    w = make_workload(1, 8, 128256, device=DEV, acceptance="low")
    ids, p, q = w.draft_token_ids, w.draft_probs, w.target_probs

    def cpu_us(f, n=400) -> float:
        for _ in range(20):
            f()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            f()
        dt = time.perf_counter() - t
        torch.cuda.synchronize()
        return dt / n * 1e6

    out = {}
    out["verify (cached launch)"] = cpu_us(lambda: be.verify(ids, p, q, check_finite=False))
    tb._state.fast_launch = False
    out["verify (triton launch path)"] = cpu_us(lambda: be.verify(ids, p, q, check_finite=False))
    tb._state.fast_launch = True
    out["validate_inputs only"] = cpu_us(lambda: validate_inputs(ids, p, q, check_finite=False))
    out["torch.empty x2"] = cpu_us(
        lambda: (
            torch.empty((1, 9), dtype=torch.int64, device=DEV),
            torch.empty((1,), dtype=torch.int64, device=DEV),
        )
    )
    tv = specsample.get_backend("torch-vectorized")
    import triton

    @triton.jit
    def _empty_kernel(x):
        pass

    out["empty triton kernel launch"] = cpu_us(lambda: _empty_kernel[(1,)](ids))
    out["torch.cuda.current_stream()"] = cpu_us(lambda: torch.cuda.current_stream())
    out["torch-vectorized verify (reference point)"] = cpu_us(
        lambda: tv.verify(ids, p, q, check_finite=False), n=100
    )
    RESULTS["host_us"] = out
    for k, v in out.items():
        log(f"host time per call: {k}: {v:.1f} us")


def experiments() -> None:
    """Forced configurations on the cells that decide the targets (not the tuner's short runs)."""
    from triton.testing import do_bench

    be = specsample.get_backend("triton")
    cells = [(64, 8, 128256, "low"), (256, 8, 128256, "low"), (1, 8, 128256, "low")]
    shapes = ((2048, 8), (4096, 8), (4096, 16), (8192, 16), (8192, 32), (16384, 32))
    res = []
    for B, K, V, acc in cells:
        w = make_workload(B, K, V, device=DEV, acceptance=acc, seed=B * K)
        ids, p, q = w.draft_token_ids, w.draft_probs, w.target_probs
        chunk_set = (16, 32, 63, 126) if B == 1 else (1, 2, 3, 4, 5, 6, 8, 10, 16, 33)
        rows = []
        for block, warps in shapes:
            for chunks in chunk_set:
                for pre in (False, True):
                    tb.force_config(tb.LaunchConfig(block, warps, chunks, pre))
                    call = functools.partial(be.verify, ids, p, q, check_finite=False)
                    try:
                        call()
                        ms = do_bench(call, warmup=5, rep=25, return_mode="median")
                        kus, _ = kernel_times_us(call, n=15)
                    except Exception as exc:  # noqa: BLE001
                        log(f"  config {block},{warps},{chunks},{pre} failed: {exc!s:.200}")
                        continue
                    finally:
                        tb.force_config(None)
                    rows.append((kus, ms * 1e3, block, warps, chunks, pre))
        rows.sort()
        log(f"experiments B={B} K={K} V={V} {acc}: best kernel times (us, profiler; do_bench us)")
        for r in rows[:8]:
            log(
                f"   kernel {r[0]:7.1f}  do_bench {r[1]:7.1f}  block={r[2]} warps={r[3]} "
                f"chunks={r[4]} prefetch={int(r[5])}"
            )
        res.append({"cell": [B, K, V, acc], "rows": rows})
        del w
    RESULTS["experiments"] = res


def ncu_target() -> None:
    """A few calls of the B=64, K=8, V=128256 cell for Nsight Compute (launched by ncu)."""
    be = specsample.get_backend("triton")
    w = make_workload(64, 8, 128256, device=DEV, acceptance="low", seed=512)
    cfg = os.environ.get("NCU_CONFIG", "4096,8,5,0").split(",")
    tb.force_config(tb.LaunchConfig(int(cfg[0]), int(cfg[1]), int(cfg[2]), bool(int(cfg[3]))))
    for _ in range(6):
        be.verify(w.draft_token_ids, w.draft_probs, w.target_probs, check_finite=False)
    torch.cuda.synchronize()


# ----------------------------------------------------------------------------- benchmark


def kernel_times_us(fn, n=30) -> tuple[float, float]:
    """Median device time of the triton kernel and of all device work per call, by torch.profiler,
    with L2 flushed before each call (the flush itself excluded)."""
    from torch.profiler import ProfilerActivity, profile

    cache = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device=DEV)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            cache.zero_()
            fn()
        torch.cuda.synchronize()
    ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    ev = [e for e in ev if "verify_kernel" in e.name]
    try:
        ks = sorted(e.time_range.elapsed_us() for e in ev)
    except AttributeError:
        ks = sorted(getattr(e, "device_time", float("nan")) for e in ev)
    return (ks[len(ks) // 2] if ks else float("nan")), len(ev) / n


def bench(quick: bool) -> None:
    from triton.testing import do_bench

    be = specsample.get_backend("triton")
    Bs = (1, 8, 64, 256)
    Ks = (4, 8)
    Vs = (32000, 128256)
    if quick:
        Bs, Ks, Vs = (1, 64, 256), (8,), (128256,)
    rows = []
    for mode in ("random", "greedy"):
        for acc in ("high", "low"):
            for V in Vs:
                for K in Ks:
                    for B in Bs:
                        w = make_workload(B, K, V, device=DEV, acceptance=acc, seed=B * K)
                        ids, p, q = w.draft_token_ids, w.draft_probs, w.target_probs
                        if mode == "greedy":
                            # high: every draft is the target's argmax (all K+1 rows read);
                            # low: drafts from the noisy draft model (mostly rejected at once).
                            if acc == "high":
                                ids = q[:, :K].argmax(-1)

                        def call(ids=ids, p=p, q=q, mode=mode):
                            return be.verify(ids, p, q, mode=mode, check_finite=False)

                        t_tune = time.time()
                        out = call()  # first call: compile + tune (not timed)
                        torch.cuda.synchronize()
                        t_tune = time.time() - t_tune
                        ms = do_bench(call, warmup=10, rep=50, return_mode="median")
                        kern_us, per_call = kernel_times_us(call)
                        num = out.num_emitted
                        if mode == "random":
                            rej = (num < K + 1).sum().item()
                            need = (B + rej) * V * q.element_size()
                            floor_std = 2 * B * V * q.element_size()
                            accept_rate = float((num - 1).float().mean() / max(K, 1))
                        else:
                            need = int(num.sum().item()) * V * q.element_size()
                            floor_std = need
                            accept_rate = float((num - 1).float().mean() / max(K, 1))
                        cfg = tb.tuned_configs().get(
                            (
                                q.device,
                                q.dtype,
                                mode == "greedy",
                                mode == "random",
                                False,
                                K,
                                V,
                                tb._batch_bucket(B),
                            )
                        )
                        row = {
                            "mode": mode,
                            "acc": acc,
                            "B": B,
                            "K": K,
                            "V": V,
                            "median_us": ms * 1e3,
                            "kernel_us": kern_us,
                            "launches": per_call,
                            "bytes_needed": need,
                            "bytes_std_floor": floor_std,
                            "gbps_needed": need / (ms * 1e-3) / 1e9,
                            "accept_rate": accept_rate,
                            "config": None
                            if cfg is None
                            else [cfg.block, cfg.num_warps, cfg.chunks, int(cfg.prefetch)],
                            "first_call_s": t_tune,
                        }
                        rows.append(row)
                        RESULTS["bench"].append(row)
                        log(
                            f"{mode:6s} {acc:4s} B={B:3d} K={K} V={V:6d}  median {ms * 1e3:8.1f} us"
                            f"  kernel {kern_us:8.1f} us  launches {per_call:g}  "
                            f"need {need / 1e6:7.1f} MB -> {row['gbps_needed']:6.0f} GB/s  "
                            f"acc {accept_rate:.2f} cfg {row['config']} (first call {t_tune:.1f}s)"
                        )
                        del w, out
    RESULTS["tuning"] = [
        {"key": [str(x) for x in k], "config": [c.block, c.num_warps, c.chunks, c.prefetch]}
        for k, c in tb.tuned_configs().items()
    ]
    RESULTS["tune_log"] = [
        {"key": [str(x) for x in k], "config": str(c), "ms": t} for k, c, t in tb._tune_log
    ]


def summary_table() -> None:
    if not RESULTS["bench"]:
        return
    log(
        "\n| mode | acc | B | K | V | median us (do_bench) | kernel us (profiler) | launches | "
        "bytes needed MB | GB/s | config |"
    )
    log("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in RESULTS["bench"]:
        log(
            f"| {r['mode']} | {r['acc']} | {r['B']} | {r['K']} | {r['V']} | {r['median_us']:.1f} | "
            f"{r['kernel_us']:.1f} | {r['launches']:g} | {r['bytes_needed'] / 1e6:.1f} | "
            f"{r['gbps_needed']:.0f} | {r['config']} |"
        )
    fails = [c for c in RESULTS["checks"] if not c["ok"]]
    log(f"\nchecks: {len(RESULTS['checks']) - len(fails)} passed, {len(fails)} failed")
    for c in fails:
        log("  FAILED:", c["name"], c["msg"][:300])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quick-check", action="store_true", help="fewer dtypes in the checks")
    ap.add_argument("--json", default=None)
    ap.add_argument("--big", action="store_true", help="also the B*K*V > 2**31 check")
    ap.add_argument("--experiments", action="store_true", help="forced-config sweep")
    ap.add_argument("--ncu-target", action="store_true", help="only a few B=64 calls (for ncu)")
    args = ap.parse_args()
    global BIG
    BIG = args.big
    if args.ncu_target:
        ncu_target()
        return 0

    def save() -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(RESULTS, f, indent=1, default=str)

    RESULTS["env"] = env_info()
    RESULTS["copy_tbps"] = copy_bandwidth()
    host_overhead()
    save()
    if not args.skip_bench:
        t0 = time.time()
        bench(args.quick)
        log(f"benchmark took {time.time() - t0:.0f}s")
        summary_table()
        save()
    if args.experiments:
        experiments()
        save()
    if not args.skip_check:
        # Checks use the heuristic configuration: tuning every new shape would cost compilations.
        os.environ["SPECSAMPLE_TRITON_AUTOTUNE"] = "0"
        t0 = time.time()
        for section in (
            launches,
            graphs,
            randomness,
            lambda: correctness(args.quick or args.quick_check),
        ):
            section()
            save()
        log(f"checks took {time.time() - t0:.0f}s")
    summary_table()
    save()
    return 1 if any(not c["ok"] for c in RESULTS["checks"]) else 0


if __name__ == "__main__":
    sys.exit(main())
