# ruff: noqa: B023
"""Temporary benchmark + correctness driver of the cuda-cpp and cupy backends (GPU machine).

The project's real runner lives in ``specsample.reports``; this script exists to develop the kernel:
it checks exactness against the float64 reference (explicit uniforms, and the in-kernel Philox
stream recomputed in Python), every launch-configuration variant, CUDA graphs and torch.compile,
counts launches, measures the copy bandwidth, times the standard grid (median, L2 flushed, via
``triton.testing.do_bench(return_mode="median")``) and the host overhead per call.

    python scripts/kernel_bench.py --out results.json [--skip-check] [--skip-bench] [--quick]

Ends with short tables (the device tool returns the tail of the output).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback

import specsample
import torch
from specsample.backends import _cuda_build, cuda_cpp, cupy_backend
from specsample.workloads import make_workload

DEV = "cuda"
RESULTS: dict = {"checks": [], "bench": [], "variants": [], "host": [], "errors": []}
FAILS: list[str] = []


def log(*a):
    print(*a, flush=True)


def section(name):
    log(f"\n=== {name} ===")


def record_error(where: str, exc: BaseException) -> None:
    msg = f"{where}: {type(exc).__name__}: {exc}"
    log("ERROR", msg)
    traceback.print_exc()
    RESULTS["errors"].append(msg)
    FAILS.append(msg)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def ref(w, mode, uniforms):
    out = specsample.reference_verify(
        w.draft_token_ids,
        w.draft_probs,
        w.target_probs,
        mode=mode,
        uniforms=uniforms,
        check_finite=False,
    )
    return out.token_ids.cpu(), out.num_emitted.cpu()


def compare(name, got, want, detail=""):
    t_ok = torch.equal(got[0].cpu(), want[0])
    n_ok = torch.equal(got[1].cpu(), want[1])
    ok = t_ok and n_ok
    nbad = int((got[0].cpu() != want[0]).any(dim=1).sum()) if not ok else 0
    RESULTS["checks"].append({"name": name, "ok": ok, "bad_rows": nbad, "detail": detail})
    if not ok:
        FAILS.append(f"{name} {detail}: {nbad} rows differ")
        log(f"FAIL {name} {detail}: {nbad} rows differ")
        bad = (got[0].cpu() != want[0]).any(dim=1).nonzero().flatten()[:3].tolist()
        for b in bad:
            log("   row", b, "got", got[0][b].tolist(), "want", want[0][b].tolist())
    return ok


def cpp(w, mode, **kw):
    return cuda_cpp.verify_op(w.draft_token_ids, w.draft_probs, w.target_probs, mode=mode, **kw)


def cpy(w, mode, **kw):
    return cupy_backend.verify_torch(
        w.draft_token_ids, w.draft_probs, w.target_probs, mode=mode, **kw
    )


IMPLS = {"cuda-cpp": cpp, "cupy": cpy}


# ------------------------------------------------------------------------------------------------
# correctness
# ------------------------------------------------------------------------------------------------
def check_shapes(quick: bool):
    section("exactness vs float64 reference")
    cases = [
        # B, K, V, dtype, acceptance, with_p
        (1, 4, 128256, torch.float32, "high", True),
        (1, 8, 128256, torch.float32, "low", True),
        (3, 0, 1000, torch.float32, "high", True),
        (4, 1, 32000, torch.float32, "low", True),
        (5, 16, 997, torch.float32, "high", True),  # V prime: unaligned rows
        (2, 16, 32003, torch.float16, "low", True),
        (64, 8, 32000, torch.float32, "low", True),
        (64, 8, 4099, torch.bfloat16, "high", True),
        (8, 4, 128256, torch.float16, "high", False),
        (8, 4, 128256, torch.bfloat16, "low", False),
        (7, 32, 1001, torch.float32, "low", True),
        (3, 128, 257, torch.float32, "high", True),
        (16, 3, 2, torch.float32, "low", True),
        (16, 3, 1, torch.float32, "high", True),
        (4, 5, 262144, torch.float32, "low", True),
        (300, 4, 5003, torch.float32, "low", True),
    ]
    if quick:
        cases = cases[:6]
    for i, (B, K, V, dt, acc, with_p) in enumerate(cases):
        w = make_workload(
            B, K, V, dtype=dt, device=DEV, acceptance=acc, with_draft_probs=with_p, seed=100 + i
        )
        ids32 = i % 2 == 1
        if ids32:
            w.draft_token_ids = w.draft_token_ids.to(torch.int32)
        detail = f"B={B} K={K} V={V} {str(dt)[6:]} {acc} p={'yes' if with_p else 'None'} ids={'i32' if ids32 else 'i64'}"
        u = torch.rand((B, K + 1), generator=torch.Generator(device=DEV).manual_seed(i), device=DEV)
        for mode in ("random", "greedy"):
            want = ref(w, mode, u if mode == "random" else None)
            for name, fn in IMPLS.items():
                try:
                    got = fn(w, mode, uniforms=u if mode == "random" else None)
                    torch.cuda.synchronize()
                    compare(f"{name}/{mode}/uniforms", got, want, detail)
                except Exception as exc:
                    record_error(f"{name}/{mode} {detail}", exc)
        # in-kernel Philox: recompute the stream in Python, then the reference with it
        for name, fn in IMPLS.items():
            try:
                g = torch.Generator(device=DEV).manual_seed(1234 + i)
                g.set_offset(8 * i)
                seed, off = g.initial_seed(), g.get_offset()
                got = fn(w, "random", generator=g)
                torch.cuda.synchronize()
                adv = g.get_offset() - off
                if adv != _cuda_build.philox_increment(K):
                    FAILS.append(
                        f"{name} generator advanced by {adv}, expected {_cuda_build.philox_increment(K)}"
                    )
                want = ref(w, "random", _cuda_build.philox_uniforms(seed, off, B, K).to(DEV))
                compare(f"{name}/random/philox", got, want, detail)
            except Exception as exc:
                record_error(f"{name}/philox {detail}", exc)
        # same generator state -> identical tokens in both backends
        try:
            outs = []
            for fn in IMPLS.values():
                g = torch.Generator(device=DEV).manual_seed(77 + i)
                outs.append(fn(w, "random", generator=g))
            torch.cuda.synchronize()
            compare(
                "cuda-cpp==cupy/generator", outs[1], (outs[0][0].cpu(), outs[0][1].cpu()), detail
            )
        except Exception as exc:
            record_error(f"cpp-vs-cupy {detail}", exc)


def check_variants(quick: bool):
    section("every launch configuration")
    shapes = [
        (2, 8, 128256, torch.float32),
        (5, 16, 997, torch.float16),
        (33, 4, 32000, torch.bfloat16),
    ]
    clusters = [1, 2, 4, 8, 16]
    threads = [128, 256, 512]
    for si, (B, K, V, dt) in enumerate(shapes):
        w = make_workload(
            B, K, V, dtype=dt, device=DEV, acceptance=["low", "high", 1.5][si], seed=7 + si
        )
        u = torch.rand((B, K + 1), device=DEV)
        want_r = ref(w, "random", u)
        want_g = ref(w, "greedy", None)
        for name, fn in IMPLS.items():
            for cl in clusters:
                for nt in threads:
                    for rows in (1, 3, 16):
                        detail = f"B={B} K={K} V={V} {str(dt)[6:]} cl={cl} nt={nt} rows={rows}"
                        try:
                            if rows == 1:
                                compare(
                                    f"{name}/random/variant",
                                    fn(w, "random", uniforms=u, cluster=cl, threads=nt),
                                    want_r,
                                    detail,
                                )
                            compare(
                                f"{name}/greedy/variant",
                                fn(w, "greedy", cluster=cl, threads=nt, rows_per_step=rows),
                                want_g,
                                detail,
                            )
                        except Exception as exc:
                            record_error(f"{name} {detail}", exc)
            torch.cuda.synchronize()


def check_edges():
    section("edge cases")
    B, K, V = 6, 5, 3001
    # fallback: residual all zero (q = p / 2 everywhere) -> sample from q
    w = make_workload(B, K, V, device=DEV, seed=5)
    w.target_probs[:, :K] = w.draft_probs / 2
    u = torch.rand((B, K + 1), device=DEV)
    want = ref(w, "random", u)
    for name, fn in IMPLS.items():
        compare(f"{name}/zero-residual-fallback", fn(w, "random", uniforms=u), want)
    # out-of-range draft ids: a rejection, never an out-of-bounds read
    w = make_workload(B, K, V, device=DEV, seed=6)
    w.draft_token_ids[:, 2] = torch.tensor([-5, V, V + 10**6, 2**40, -(2**40), 3], device=DEV)
    for name, fn in IMPLS.items():
        for mode in ("random", "greedy"):
            tok, num = fn(w, mode, uniforms=u)
            torch.cuda.synchronize()
            ok = bool((num[:5] <= 3).all()) and bool((tok >= -1).all()) and bool((tok < V).all())
            RESULTS["checks"].append({"name": f"{name}/{mode}/out-of-range-ids", "ok": ok})
            if not ok:
                FAILS.append(f"{name}/{mode}/out-of-range-ids")
    # p == q: everything accepted
    w = make_workload(B, K, V, device=DEV, acceptance=0.0, seed=8)
    for name, fn in IMPLS.items():
        tok, num = fn(w, "random", generator=torch.Generator(device=DEV).manual_seed(1))
        ok = bool((num == K + 1).all())
        RESULTS["checks"].append({"name": f"{name}/p==q-all-accept", "ok": ok})
        if not ok:
            FAILS.append(f"{name}/p==q")
    # ties in greedy -> smallest index
    q = torch.zeros((3, 3, 50), device=DEV)
    q[:, :, 7] = 0.5
    q[:, :, 3] = 0.5
    ids = torch.tensor([[3, 7], [3, 3], [7, 3]], device=DEV)
    for name in IMPLS:
        out = specsample.get_backend(name).verify(ids, None, q, mode="greedy")
        want = specsample.reference_verify(ids, None, q, mode="greedy")
        compare(
            f"{name}/greedy-ties",
            (out.token_ids, out.num_emitted),
            (want.token_ids.cpu(), want.num_emitted.cpu()),
        )


def check_big():
    section("B*K*V > 2**31 elements (64-bit offsets)")
    B, K, V = 2100, 8, 128256  # 2.4e9 target elements, fp16
    free = torch.cuda.mem_get_info()[0]
    need = (2 * K + 1) * B * V * 2 + (1 << 30)
    if free < need:
        log(f"skip: needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} free")
        return
    g = torch.Generator(device=DEV).manual_seed(3)
    q = torch.rand((B, K + 1, V), generator=g, device=DEV, dtype=torch.float16)
    p = torch.rand((B, K, V), generator=g, device=DEV, dtype=torch.float16)
    ids = torch.randint(0, V, (B, K), generator=g, device=DEV)
    u = torch.rand((B, K + 1), generator=g, device=DEV)
    rows = [0, 1, B // 2, B - 2, B - 1]
    for name in IMPLS:
        for mode in ("random", "greedy"):
            tok, num = (cuda_cpp.verify_op if name == "cuda-cpp" else cupy_backend.verify_torch)(
                ids, p, q, mode=mode, uniforms=u if mode == "random" else None
            )
            torch.cuda.synchronize()
            sel = torch.tensor(rows, device=DEV)
            want = specsample.reference_verify(
                ids[sel],
                p[sel],
                q[sel],
                mode=mode,
                uniforms=u[sel] if mode == "random" else None,
                check_finite=False,
            )
            compare(
                f"{name}/{mode}/2^31",
                (tok[sel], num[sel]),
                (want.token_ids.cpu(), want.num_emitted.cpu()),
                f"B={B} K={K} V={V} fp16",
            )
    del q, p
    torch.cuda.empty_cache()


def check_graphs_compile():
    section("CUDA graphs, torch.compile, launches")
    B, K, V = 4, 4, 32000
    w = make_workload(B, K, V, device=DEV, acceptance="low", seed=11)
    # capture with the default generator (registered with every graph); each replay draws fresh
    # numbers from the generator's advancing offset
    g = torch.cuda.default_generators[0]
    g.manual_seed(99)
    for name, fn in IMPLS.items():
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    fn(w, "random")
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                tok, num = fn(w, "random")
            seen = set()
            ok = True
            for r in range(4):
                off = g.get_offset()
                graph.replay()
                torch.cuda.synchronize()
                seen.add(tuple(tok.flatten().tolist()))
                if name == "cuda-cpp":
                    want = ref(
                        w,
                        "random",
                        _cuda_build.philox_uniforms(g.initial_seed(), off, B, K).to(DEV),
                    )
                    ok &= compare(f"{name}/graph-replay-{r}", (tok, num), want)
            fresh = len(seen) > 1
            RESULTS["checks"].append(
                {"name": f"{name}/graph-fresh-randomness", "ok": fresh, "distinct": len(seen)}
            )
            log(f"{name}: graph replays distinct outputs: {len(seen)} of 4")
            if not fresh:
                FAILS.append(f"{name}: graph replays repeat the same randomness")
            # greedy + uniforms under capture
            u = torch.rand((B, K + 1), device=DEV)
            graph2 = torch.cuda.CUDAGraph()
            with torch.cuda.stream(s):
                fn(w, "greedy")
            torch.cuda.synchronize()
            with torch.cuda.graph(graph2):
                tg = fn(w, "greedy")
                tu = fn(w, "random", uniforms=u)
            graph2.replay()
            torch.cuda.synchronize()
            compare(f"{name}/graph-greedy", tg, ref(w, "greedy", None))
            compare(f"{name}/graph-uniforms", tu, ref(w, "random", u))
        except Exception as exc:
            record_error(f"{name} graphs", exc)
    # a user generator registered with the graph
    try:
        gu = torch.Generator(device=DEV).manual_seed(5)
        graph3 = torch.cuda.CUDAGraph()
        if hasattr(graph3, "register_generator_state"):
            graph3.register_generator_state(gu)
            with torch.cuda.graph(graph3):
                tok, num = cpp(w, "random", generator=gu)
            outs = set()
            for _ in range(3):
                off = gu.get_offset()
                graph3.replay()
                torch.cuda.synchronize()
                outs.add(tuple(tok.flatten().tolist()))
                want = ref(
                    w, "random", _cuda_build.philox_uniforms(gu.initial_seed(), off, B, K).to(DEV)
                )
                compare("cuda-cpp/graph-user-generator", (tok, num), want)
            log(f"user generator under graph: {len(outs)} distinct of 3")
        else:
            log("CUDAGraph.register_generator_state not available")
    except Exception as exc:
        record_error("user generator graph", exc)
    # torch.compile around the custom op (fullgraph)
    try:
        op = cuda_cpp.load_op()

        def f(ids, p, q, u):
            tok, num = op(ids, p, q, u, None, False, 0, 0, 0)
            return tok, num + 0

        cf = torch.compile(f, fullgraph=True, dynamic=True)
        u = torch.rand((B, K + 1), device=DEV)
        got = cf(w.draft_token_ids, w.draft_probs, w.target_probs, u)
        compare("cuda-cpp/torch.compile", got, ref(w, "random", u))
        w2 = make_workload(9, K, V, device=DEV, seed=12)
        u2 = torch.rand((9, K + 1), device=DEV)
        compare(
            "cuda-cpp/torch.compile-newB",
            cf(w2.draft_token_ids, w2.draft_probs, w2.target_probs, u2),
            ref(w2, "random", u2),
        )

        def f2(ids, p, q):
            return op(ids, p, q, None, None, False, 0, 0, 0)

        cf2 = torch.compile(f2, fullgraph=True)
        tok, num = cf2(w.draft_token_ids, w.draft_probs, w.target_probs)
        ok = bool(((num >= 1) & (num <= K + 1)).all())
        RESULTS["checks"].append({"name": "cuda-cpp/torch.compile-generator-default", "ok": ok})
        ff = torch.compile(
            lambda a, b, c: op(a, b, c, None, None, False, 0, 0, 0), mode="reduce-overhead"
        )
        for _ in range(3):
            tok, num = ff(w.draft_token_ids, w.draft_probs, w.target_probs)
        torch.cuda.synchronize()
        RESULTS["checks"].append({"name": "cuda-cpp/compile-reduce-overhead", "ok": True})
    except Exception as exc:
        record_error("torch.compile", exc)
    # launches per call (torch.profiler)
    for name in IMPLS:
        try:
            backend = specsample.get_backend(name)
            for mode in ("random", "greedy"):
                backend.verify(
                    w.draft_token_ids, w.draft_probs, w.target_probs, mode=mode, check_finite=False
                )
                torch.cuda.synchronize()
                with torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CUDA]
                ) as prof:
                    backend.verify(
                        w.draft_token_ids,
                        w.draft_probs,
                        w.target_probs,
                        mode=mode,
                        check_finite=False,
                    )
                    torch.cuda.synchronize()
                kernels = [
                    e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                ]
                log(f"{name}/{mode}: {len(kernels)} device activities: {kernels}")
                RESULTS["checks"].append(
                    {"name": f"{name}/{mode}/launches", "ok": len(kernels) == 1, "kernels": kernels}
                )
                if len(kernels) != 1:
                    FAILS.append(f"{name}/{mode}: {len(kernels)} launches")
        except Exception as exc:
            record_error(f"{name} profiler", exc)


# ------------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------------
def copy_bandwidth() -> float:
    n = 1 << 28  # 1 GiB of float32
    a = torch.empty(n, device=DEV)
    b = torch.empty(n, device=DEV)
    a.uniform_()
    from triton.testing import do_bench

    ms = do_bench(lambda: b.copy_(a), warmup=50, rep=300, return_mode="median")
    return 2 * n * 4 / (ms * 1e-3) / 1e12


def must_read_bytes(w, num, mode, reads_all_rows=False):
    B, K, V = w.shape
    s = w.target_probs.element_size()
    num = num.cpu()
    total = 0
    for b in range(B):
        k = int(num[b]) - 1  # the row of the last token
        if mode == "random":
            rows = 1 if (k == K or w.draft_probs is None) else 2
        else:
            rows = k + 1
        total += rows * V * s
    return total


def bench_grid(quick: bool, bw: float):
    section("timing grid (median of do_bench, L2 flushed)")
    from triton.testing import do_bench

    Bs = [1, 8, 64, 256]
    Ks = [4, 8]
    Vs = [32000, 128256]
    if quick:
        Bs, Ks, Vs = [1, 64], [8], [128256]
    for V in Vs:
        for K in Ks:
            for B in Bs:
                for acc in ("high", "low"):
                    w = make_workload(B, K, V, device=DEV, acceptance=acc, seed=B * 7 + K)
                    for mode in ("random", "greedy"):
                        row = {"B": B, "K": K, "V": V, "acceptance": acc, "mode": mode}
                        for name in ("cuda-cpp", "cupy"):
                            backend = specsample.get_backend(name)

                            def call(backend=backend, mode=mode, w=w):
                                return backend.verify(
                                    w.draft_token_ids,
                                    w.draft_probs,
                                    w.target_probs,
                                    mode=mode,
                                    check_finite=False,
                                )

                            try:
                                num = call().num_emitted
                                ms = min(
                                    do_bench(call, warmup=10, rep=100, return_mode="median")
                                    for _ in range(2)
                                )
                                row[name] = ms * 1e3
                                if name == "cuda-cpp":
                                    nb = must_read_bytes(w, num, mode)
                                    row["accepted_mean"] = float((num.float() - 1).mean())
                                    row["must_read_MB"] = nb / 1e6
                                    row["floor_us"] = nb / (bw * 1e12) * 1e6
                            except Exception as exc:
                                record_error(f"bench {name} {row}", exc)
                        RESULTS["bench"].append(row)
                        log(json.dumps(row))
    torch.cuda.empty_cache()


def bench_baseline():
    section("measurement floor (do_bench median, L2 flushed)")
    from triton.testing import do_bench

    x = torch.zeros(1, device=DEV)
    us = do_bench(lambda: x.add_(1), warmup=10, rep=60, return_mode="median") * 1e3
    RESULTS["floor_tiny_kernel_us"] = us
    log(f"one tiny torch kernel: {us:.1f} us")
    for K in (0, 8):
        w = make_workload(1, K, 128256, device=DEV, acceptance="low", seed=1)
        for mode in ("random", "greedy"):
            us = (
                do_bench(
                    lambda w=w, mode=mode: cpp(w, mode), warmup=10, rep=60, return_mode="median"
                )
                * 1e3
            )
            log(f"cuda-cpp B=1 K={K} V=128256 {mode}: {us:.1f} us")
            RESULTS.setdefault("baseline", []).append({"K": K, "mode": mode, "us": us})


def bench_bytes_floor():
    section("practical floor: torch.sum over the must-read bytes (do_bench median, L2 flushed)")
    from triton.testing import do_bench

    for mb in (1.026, 65.67, 133.9, 262.67, 1183.0):
        x = torch.rand(int(mb * 1e6 / 4), device=DEV)
        us = do_bench(lambda x=x: x.sum(), warmup=10, rep=80, return_mode="median") * 1e3
        RESULTS.setdefault("sum_floor", []).append(
            {"MB": mb, "us": us, "TBps": mb * 1e6 / (us * 1e-6) / 1e12}
        )
        log(f"torch.sum over {mb:8.2f} MB: {us:8.1f} us ({mb * 1e6 / (us * 1e-6) / 1e12:.2f} TB/s)")
        del x
    torch.cuda.empty_cache()


def bench_ab():
    section("A/B of compile-time options (cupy modules, auto config)")
    from triton.testing import do_bench

    # the kernel's compile-time knobs (csrc/verify_kernel.cuh)
    variants = {
        "default": (),
        "cluster_barrier_exchange": ("-DSPECSAMPLE_ASYNC_EXCHANGE=0",),
        "wave4_128regs": ("-DSPECSAMPLE_WAVE_SMALL=4", "-DSPECSAMPLE_RANDOM_MIN_BLOCKS=1"),
    }
    mods = {}
    for name, opts in variants.items():
        try:
            t0 = time.time()
            mods[name] = cupy_backend._Module(0, opts)
            for key in mods[name].names:
                if key[0] == "float32":
                    mods[name].kernel(*key)
            log(f"module {name}: {time.time() - t0:.1f}s")
        except Exception as exc:
            record_error(f"A/B module {name}", exc)
    for name, mod in mods.items():  # correctness of each variant first
        for B, K, V, dt in [
            (1, 8, 128256, torch.float32),
            (5, 16, 997, torch.float16),
            (33, 4, 32000, torch.bfloat16),
        ]:
            for acc in ("low", "high"):
                w = make_workload(B, K, V, dtype=dt, device=DEV, acceptance=acc, seed=B + K)
                u = torch.rand((B, K + 1), device=DEV)
                for mode in ("random", "greedy"):
                    try:
                        compare(
                            f"A/B {name}/{mode}",
                            cpy(w, mode, uniforms=u, module=mod),
                            ref(w, mode, u),
                            f"B={B} K={K} V={V} {acc}",
                        )
                    except Exception as exc:
                        record_error(f"A/B check {name}", exc)
    for B in (1, 8, 64, 256):
        for acc in ("low",) if B in (8, 64) else ("high", "low"):
            w = make_workload(B, 8, 128256, device=DEV, acceptance=acc, seed=B + 3)
            for mode in ("random", "greedy"):
                row = {"B": B, "acceptance": acc, "mode": mode}
                for name, mod in mods.items():
                    try:

                        def call(w=w, mode=mode, mod=mod):
                            return cpy(w, mode, module=mod)

                        call()
                        row[name] = do_bench(call, warmup=5, rep=40, return_mode="median") * 1e3
                    except Exception as exc:
                        record_error(f"A/B {name} {row}", exc)
                RESULTS.setdefault("ab", []).append(row)
                log(
                    "A/B "
                    + " ".join(
                        f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in row.items()
                    )
                )


def greedy_all_accept(w):
    """Make every draft the target's argmax (greedy accepts all K: K+1 rows must be read)."""
    w.draft_token_ids = w.target_probs[:, :-1].argmax(dim=-1)
    return w


def bench_variants(bw: float):
    section("launch-configuration variants (cuda-cpp)")
    from triton.testing import do_bench

    configs = [(16, 512), (16, 256), (8, 512), (4, 512), (2, 512), (1, 512), (1, 256)]
    for B in (1, 8, 32, 64, 128, 256):
        for acc in ("high", "low", "greedy-all"):
            w = make_workload(
                B,
                8,
                128256,
                device=DEV,
                acceptance="high" if acc == "greedy-all" else acc,
                seed=B + 1,
            )
            modes = ("greedy",) if acc == "greedy-all" else ("random", "greedy")
            if acc == "greedy-all":
                greedy_all_accept(w)
            for mode in modes:
                for cl, nt in configs:
                    rows_opts = (1, 16) if mode == "greedy" and B <= 64 else (1,)
                    for rows in rows_opts:
                        try:

                            def call(w=w, mode=mode, cl=cl, nt=nt, rows=rows):
                                return cpp(w, mode, cluster=cl, threads=nt, rows_per_step=rows)

                            call()
                            ms = min(
                                do_bench(call, warmup=5, rep=30, return_mode="median")
                                for _ in range(2)
                            )
                            row = {
                                "B": B,
                                "K": 8,
                                "V": 128256,
                                "acceptance": acc,
                                "mode": mode,
                                "cluster": cl,
                                "threads": nt,
                                "rows": rows,
                                "us": ms * 1e3,
                            }
                            RESULTS["variants"].append(row)
                        except Exception as exc:
                            record_error(f"variant {B} {cl} {nt} {rows}", exc)
            for mode in modes:
                cand = [
                    r
                    for r in RESULTS["variants"]
                    if r["B"] == B and r["acceptance"] == acc and r["mode"] == mode
                ]
                if cand:
                    r = min(cand, key=lambda r: r["us"])
                    auto = _cuda_build.choose_config(B, 8, 128256, mode == "greedy", 132, True)
                    a = [x for x in cand if (x["cluster"], x["threads"], x["rows"]) == auto]
                    log(
                        f"best B={B} {acc} {mode}: cl={r['cluster']} nt={r['threads']} rows={r['rows']} "
                        f"{r['us']:.1f} us; auto {auto}: {a[0]['us'] if a else float('nan'):.1f} us"
                    )
    torch.cuda.empty_cache()


def host_overhead():
    section("host overhead per call (us), issue-only, no sync")
    for B in (1, 256):
        w = make_workload(B, 8, 128256 if B == 1 else 32000, device=DEV, acceptance="low", seed=3)
        paths = {
            "cuda-cpp backend.verify": lambda: specsample.get_backend("cuda-cpp").verify(
                w.draft_token_ids, w.draft_probs, w.target_probs, check_finite=False
            ),
            "cuda-cpp raw op": lambda: cpp(w, "random"),
            "cupy backend.verify": lambda: specsample.get_backend("cupy").verify(
                w.draft_token_ids, w.draft_probs, w.target_probs, check_finite=False
            ),
            "cupy raw launch path": lambda: cpy(w, "random"),
        }
        try:
            import cupy

            cids = cupy.from_dlpack(w.draft_token_ids)
            cp_ = cupy.from_dlpack(w.draft_probs)
            cq = cupy.from_dlpack(w.target_probs)
            paths["cupy verify_cupy (cupy arrays)"] = lambda: cupy_backend.verify_cupy(
                cids, cp_, cq, seed=1, offset=0
            )
            paths["cupy via from_dlpack each call"] = lambda: cupy_backend.verify_cupy(
                cupy.from_dlpack(w.draft_token_ids),
                cupy.from_dlpack(w.draft_probs),
                cupy.from_dlpack(w.target_probs),
                seed=1,
            )
        except Exception as exc:
            record_error("cupy arrays", exc)
        for name, fn in paths.items():
            try:
                for _ in range(20):
                    fn()
                torch.cuda.synchronize()
                samples = []
                for _ in range(15):
                    n = 20
                    t0 = time.perf_counter()
                    for _ in range(n):
                        fn()
                    t1 = time.perf_counter()
                    samples.append((t1 - t0) / n * 1e6)
                    torch.cuda.synchronize()
                us = statistics.median(samples)
                RESULTS["host"].append({"B": B, "path": name, "host_us": us})
                log(f"B={B:4d} {name:34s} {us:7.1f} us/call (host)")
            except Exception as exc:
                record_error(f"host {name}", exc)
        # CUDA graph replay of one call: the launch path removed
        try:
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream()
            with torch.cuda.stream(s):
                cpp(w, "random")
            torch.cuda.synchronize()
            with torch.cuda.graph(g):
                cpp(w, "random")
            from triton.testing import do_bench

            ms = do_bench(lambda: g.replay(), warmup=10, rep=60, return_mode="median")
            ms2 = do_bench(lambda: cpp(w, "random"), warmup=10, rep=60, return_mode="median")
            RESULTS["host"].append(
                {"B": B, "path": "cuda-cpp graph replay (do_bench us)", "host_us": ms * 1e3}
            )
            log(
                f"B={B:4d} cuda-cpp do_bench: eager {ms2 * 1e3:.1f} us, graph replay {ms * 1e3:.1f} us"
            )
        except Exception as exc:
            record_error("graph replay timing", exc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="kernel_bench.json")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--skip-variants", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ab", action="store_true", help="A/B of compile-time options (cupy modules)")
    args = ap.parse_args()

    props = torch.cuda.get_device_properties(0)
    RESULTS["device"] = {
        "name": props.name,
        "sms": props.multi_processor_count,
        "cc": f"{props.major}.{props.minor}",
        "torch": torch.__version__,
    }
    log("device:", RESULTS["device"])
    t0 = time.time()
    try:
        path = cuda_cpp.CudaCppBackend.build(verbose=False)
        log(f"cuda-cpp built in {time.time() - t0:.1f}s: {path}")
    except Exception as exc:
        record_error("build cuda-cpp", exc)
        raise
    t0 = time.time()
    try:
        mod = cupy_backend._module(0)
        for key in mod.names:
            mod.kernel(*key)
        log(f"cupy module compiled in {time.time() - t0:.1f}s ({len(mod.names)} kernels)")
    except Exception as exc:
        record_error("build cupy", exc)

    if not args.skip_check:
        for fn in (check_shapes, check_variants):
            try:
                fn(args.quick)
            except Exception as exc:
                record_error(fn.__name__, exc)
        for fn in (check_edges, check_graphs_compile, check_big):
            try:
                fn()
            except Exception as exc:
                record_error(fn.__name__, exc)
        n_ok = sum(1 for c in RESULTS["checks"] if c.get("ok"))
        log(f"\nchecks: {n_ok}/{len(RESULTS['checks'])} passed; failures: {len(FAILS)}")
        for f in FAILS[:30]:
            log("  FAIL", f)

    if not args.skip_bench:
        bw = copy_bandwidth()
        RESULTS["copy_bw_TBps"] = bw
        log(f"device-to-device copy: {bw:.2f} TB/s (read + write)")
        try:
            host_overhead()
        except Exception as exc:
            record_error("host", exc)
        for fn in (bench_baseline, bench_bytes_floor) + ((bench_ab,) if args.ab else ()):
            try:
                fn()
            except Exception as exc:
                record_error(fn.__name__, exc)
        if not args.skip_variants:
            try:
                bench_variants(bw)
            except Exception as exc:
                record_error("variants", exc)
        try:
            bench_grid(args.quick, bw)
        except Exception as exc:
            record_error("grid", exc)

    with open(args.out, "w") as f:
        json.dump(RESULTS, f, indent=1)

    # short tables last
    if RESULTS["bench"]:
        log("\n| mode | B | K | V | acc | cuda-cpp us | cupy us | floor us | must MB | acc/req |")
        log("|---|---|---|---|---|---|---|---|---|---|")
        for r in RESULTS["bench"]:
            log(
                f"| {r['mode']} | {r['B']} | {r['K']} | {r['V']} | {r['acceptance']} | {r.get('cuda-cpp', math.nan):.1f} | "
                f"{r.get('cupy', math.nan):.1f} | {r.get('floor_us', math.nan):.1f} | {r.get('must_read_MB', math.nan):.1f} | "
                f"{r.get('accepted_mean', math.nan):.2f} |"
            )
    log(f"\nerrors: {len(RESULTS['errors'])}, failures: {len(FAILS)}")
    return 0 if not FAILS else 1


if __name__ == "__main__":
    sys.exit(main())
