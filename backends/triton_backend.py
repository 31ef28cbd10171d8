"""``triton``: one fused Triton kernel per call; runs on CUDA, or on the CPU under the interpreter.

This module imports neither torch nor triton at import time: ``import specsample`` and
``specsample list`` stay cheap. The kernel lives in :mod:`specsample.backends._triton_kernels`,
imported on first use. See ``docs/backends/triton.md``.

Launch configuration: ``BLOCK`` (tokens per tile), ``num_warps`` and ``C`` (programs per request).
On a GPU the first call of each shape class (device, dtype, mode, K, V, batch bucket) times a few
candidates with the real inputs (``triton.testing.do_bench``) and caches the winner for the process;
later calls do no tuning work. ``SPECSAMPLE_TRITON_AUTOTUNE=0`` turns that off (a fixed heuristic is
used). Under the interpreter one fixed configuration is used.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass
from typing import Any

from specsample.contract import Backend, Capabilities, VerifyInputs, VerifyOutput
from specsample.contract_tree import TREE_SAMPLING

INSTALL_HINT = "triton not installed (pip install specsample[triton])"
NO_CUDA_HINT = (
    "no CUDA device (set TRITON_INTERPRET=1 before triton is imported to run the Triton "
    "interpreter on the CPU)"
)

_GPU_CAPS = Capabilities(
    devices=("cuda",),
    needs_gpu=True,
    fused=True,
    launches_per_call=1,
    cuda_graphs=True,
    host_sync_free=True,
    status_flags=True,
    tree_modes=("random", "greedy"),
    tree_sampling=TREE_SAMPLING,
    # Not "traversal": compiled on an H100, the traversal kernel accepts less than the reference
    # (tree.exact, tree.acceptance-length fail) while the interpreter runs it exactly; the claim
    # waits for the cause (docs/dev/triton-kernel.md).
    tree_rules=("token",),
    rules=("token", "block"),
    serving=True,
)
_INTERPRETER_CAPS = Capabilities(
    devices=("cpu", "cuda"),
    needs_gpu=False,
    fused=True,
    launches_per_call=1,
    cuda_graphs=False,
    host_sync_free=False,
    status_flags=True,
    tree_modes=("random", "greedy"),
    tree_sampling=TREE_SAMPLING,
    tree_rules=("token", "traversal"),
    rules=("token", "block"),
    serving=True,
)


def interpreter_mode() -> bool:
    """True when the kernel runs (or, not yet imported, will run) under triton's CPU interpreter.

    Triton fixes the mode when the kernel is decorated, i.e. when ``_triton_kernels`` is imported:
    after that its own record is the answer, before it ``TRITON_INTERPRET`` is.
    """
    import sys

    kernels = sys.modules.get(__name__.rsplit(".", 1)[0] + "._triton_kernels")
    if kernels is not None:
        return bool(kernels.INTERPRET)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


class _ModeCapabilities:
    """Class-level descriptor: the capabilities depend on interpreter mode, read at access time."""

    def __get__(self, obj: object, owner: type | None = None) -> Capabilities:
        return _INTERPRETER_CAPS if interpreter_mode() else _GPU_CAPS


@dataclass(frozen=True)
class LaunchConfig:
    """``block`` tokens per tile, ``num_warps``, and ``chunks`` programs per request (before
    rounding to whole tiles: the launched count is ``ceil(tiles / ceil(tiles / chunks))``)."""

    block: int
    num_warps: int
    chunks: int
    prefetch: bool = False


# Greedy: one-tile chunks load all K+1 rows at once when the [K+1, BLOCK] block stays this small.
_ALL_ROWS_MAX_ELEMS = 16384


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _batch_bucket(b: int) -> int:
    return _next_pow2(b)


def heuristic_config(
    batch: int, num_draft: int, vocab: int, greedy: bool, n_sm: int
) -> LaunchConfig:
    """A configuration without timing anything: what tuning chose on an H100 for the standard grid
    (docs/dev/triton-kernel.md). Used by the interpreter, under graph capture of an untuned shape,
    and with ``SPECSAMPLE_TRITON_AUTOTUNE=0``."""
    if greedy and batch <= 8:
        # One-tile chunks: every row of the chunk is loaded at once (ALL_ROWS).
        block, warps = min(1024, max(32, _next_pow2(vocab))), 8
    elif vocab >= 16384:
        block, warps = 4096, 8
    else:
        block, warps = min(1024, max(32, _next_pow2(vocab))), 4
    tiles = -(-vocab // block)
    # Enough programs to keep every SM busy with a couple of programs each; one request's row is
    # spread over several SMs when the batch alone cannot fill the GPU.
    chunks = max(1, min(tiles, -(-2 * n_sm // max(batch, 1))))
    if greedy and batch <= 8:
        chunks = tiles
    prefetch = not greedy and tiles // chunks >= 8
    return LaunchConfig(block=block, num_warps=warps, chunks=chunks, prefetch=prefetch)


def _candidates(batch: int, vocab: int, greedy: bool, n_sm: int) -> list[LaunchConfig]:
    out: list[LaunchConfig] = []
    for block, warps in ((1024, 4), (2048, 8), (4096, 8), (4096, 16), (8192, 16)):
        block = min(block, max(32, _next_pow2(vocab)))
        tiles = -(-vocab // block)
        base = max(1, -(-2 * n_sm // max(batch, 1)))
        for chunks in sorted({1, max(1, base // 2), base, base * 2, base * 4}):
            for prefetch in (False,) if greedy else (False, True):
                cfg = LaunchConfig(block, warps, max(1, min(tiles, chunks)), prefetch)
                if cfg not in out:
                    out.append(cfg)
    return out


# Explicit override (tests): a LaunchConfig used for every call while set.
_forced_config: LaunchConfig | None = None


def force_config(cfg: LaunchConfig | None) -> None:
    """Use ``cfg`` for every call (None: back to tuning/heuristics). For tests and experiments."""
    global _forced_config
    _forced_config = cfg


class _State:
    """Per-process caches: chosen configs, workspaces, dummy tensors."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.configs: dict[tuple, LaunchConfig] = {}
        self.workspaces: dict[tuple, Any] = {}
        self.dummies: dict[Any, Any] = {}
        self.n_sm: dict[Any, int] = {}
        self.plans: dict[tuple, _Plan] = {}
        self.compiled: dict[tuple, Any] = {}
        self.fast_launch = os.environ.get("SPECSAMPLE_TRITON_FAST_LAUNCH", "1").strip() not in (
            "0",
            "false",
            "no",
        )
        self.runner_takes_stream = True


_state = _State()

# ((B, K, V, greedy, has_p), config, median ms) of every candidate timed so far (notes, reports).
_tune_log: list[tuple[tuple, LaunchConfig, float]] = []


def _tuning_enabled() -> bool:
    return os.environ.get("SPECSAMPLE_TRITON_AUTOTUNE", "1").strip() not in ("0", "false", "no")


class _Workspace:
    """Scratch memory of the split (C > 1) path. ``counters`` must be zero between calls: the
    last program of each request resets its counter."""

    def __init__(self, torch: Any, device: Any, nf: int, ni: int, nc: int) -> None:
        self.f = torch.empty(max(nf, 1), dtype=torch.float64, device=device)
        self.i = torch.empty(max(ni, 1), dtype=torch.int32, device=device)
        self.counters = torch.zeros(max(nc, 1), dtype=torch.int32, device=device)

    def fits(self, nf: int, ni: int, nc: int) -> bool:
        return self.f.numel() >= nf and self.i.numel() >= ni and self.counters.numel() >= nc


@dataclass
class _Plan:
    """Everything a launch needs besides the tensors: grid, constexprs, workspace sizes."""

    block: int
    num_warps: int
    chunks: int
    prefetch: bool
    all_rows: bool
    tiles_per_chunk: int
    k_p2: int
    nt_p2: int
    c_p2: int
    fslot: int
    islot: int


# A program reads at most this many tiles: the running sums of its tiles live in registers, so
# a huge vocabulary is spread over more programs instead of growing that vector.
_MAX_TILES_PER_PROGRAM = 256


def _plan(cfg: LaunchConfig, batch: int, num_draft: int, vocab: int, greedy: bool) -> _Plan:
    block = cfg.block
    tiles = -(-vocab // block)
    wanted = max(1, min(cfg.chunks, tiles), -(-tiles // _MAX_TILES_PER_PROGRAM))
    tpc = -(-tiles // wanted)
    chunks = -(-tiles // tpc)
    k_p2 = _next_pow2(num_draft + 1)
    # Vector sizes from the row's tile count, not from the chunking where the row is not huge: the
    # number of chunks stays a runtime value, so trying several costs no recompilation.
    nt_p2 = _next_pow2(min(tiles, _MAX_TILES_PER_PROGRAM))
    c_p2 = _next_pow2(tiles) if tiles <= _MAX_TILES_PER_PROGRAM else _next_pow2(chunks)
    fslot = k_p2 if greedy else tpc + 1
    islot = k_p2 + 1 if greedy else 1
    prefetch = cfg.prefetch and not greedy
    all_rows = greedy and tpc == 1 and k_p2 * block <= _ALL_ROWS_MAX_ELEMS
    return _Plan(
        block, cfg.num_warps, chunks, prefetch, all_rows, tpc, k_p2, nt_p2, c_p2, fslot, islot
    )


def _plan_workspace(plan: _Plan, batch: int) -> tuple[int, int, int]:
    """The token kernel's workspace ``(float64, int32, counters)`` elements for ``batch``."""
    if plan.chunks == 1:
        return 0, 0, 0
    return batch * plan.chunks * plan.fslot, batch * plan.chunks * plan.islot, batch


def philox_key(gen: Any, device: Any, numbers: int, dummy: Any) -> tuple[Any, bool, int, int]:
    """The Philox key and base counter of a call drawing ``numbers`` coins from ``gen``.

    Returns:
        ``(seed_tensor, seed_from_ptr, seed, offset)``. Under CUDA-graph capture Python ints would
        be baked into the graph, so the key is drawn on the device by an op the graph replays (the
        generator is registered with it) and read through ``seed_tensor``; a CUDA generator gives
        its own Philox seed and offset (advanced by ``numbers``); a CPU generator (the
        interpreter) has no Philox state to share, so a key is drawn from it.
    """
    import torch
    from specsample import rng

    if rng.is_capturing(device):
        key = torch.randint(0, 2**62, (1,), generator=gen, device=device, dtype=torch.int64)
        return key, True, 0, 0
    if gen.device.type == "cuda":
        seed, offset = rng.philox_seed_offset(gen, numbers)
        return dummy, False, seed, offset
    return dummy, False, int(torch.randint(0, 2**62, (1,), generator=gen).item()), 0


class TritonBackend(Backend):
    name = "triton"
    description = "One fused Triton kernel per call (CUDA; CPU with TRITON_INTERPRET=1)."
    capabilities = _ModeCapabilities()  # type: ignore[assignment]

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("triton") is None:
            return False, INSTALL_HINT
        if interpreter_mode():
            return True, ""
        import torch

        if not torch.cuda.is_available():
            return False, NO_CUDA_HINT
        return True, ""

    # ------------------------------------------------------------------ launch

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        import torch
        from specsample import rng

        from . import _triton_kernels as kern

        B, K, V = inputs.batch_size, inputs.num_draft, inputs.vocab_size
        device = inputs.device
        stream = 0
        if device.type == "cuda":
            current = torch.cuda.current_stream()
            if current.device != device:
                with torch.cuda.device(device):  # triton launches on the current device
                    return self._verify(inputs)
            stream = current.cuda_stream
        greedy = inputs.mode == "greedy"
        has_p = inputs.draft_probs is not None and not greedy
        has_u = inputs.uniforms is not None and not greedy
        capturing = rng.is_capturing(device)

        tok = torch.empty((B, K + 1), dtype=torch.int64, device=device)
        num = torch.empty((B,), dtype=torch.int64, device=device)
        status = torch.empty((B,), dtype=torch.int32, device=device)

        dummy = self._dummy(torch, device)
        ids = inputs.draft_token_ids if K > 0 else dummy
        p = inputs.draft_probs if has_p else inputs.target_probs
        u = inputs.uniforms if has_u else dummy

        seed_t, seed_from_ptr, seed, offset = dummy, False, 0, 0
        if not greedy and not has_u:
            seed_t, seed_from_ptr, seed, offset = philox_key(
                inputs.generator, device, B * (K + 1), dummy
            )

        if inputs.rule == "block" and not greedy and K > 0:
            # Block verification (random mode): its own kernel. In greedy mode the rules coincide
            # and the token kernel serves both.
            from . import _triton_block as blk

            plan_key = ("block", B, K, V, blk.INTERPRET)
            bplan = _state.plans.get(plan_key)
            if bplan is None:
                bplan = blk.block_split_config(B, K, V, self._n_sm(device), blk.INTERPRET)
                _state.plans[plan_key] = bplan
            bws = self._workspace(torch, device, *bplan.workspace(B), capturing, stream)
            blk.launch_block(
                ids,
                p,
                inputs.target_probs,
                u,
                seed_t,
                tok,
                num,
                status,
                bws,
                bplan,
                _split32(seed),
                _split32(offset),
                B,
                K,
                V,
                has_p,
                has_u,
                seed_from_ptr,
            )
            return VerifyOutput(tok, num, status)

        cfg = self._config(inputs, greedy, has_p, has_u, capturing)
        plan_key = (cfg, B, K, V, greedy)
        plan = _state.plans.get(plan_key)
        if plan is None:
            plan = _state.plans[plan_key] = _plan(cfg, B, K, V, greedy)
        ws = self._workspace(torch, device, *_plan_workspace(plan, B), capturing, stream)

        args = (
            ids,
            p,
            inputs.target_probs,
            u,
            seed_t,
            tok,
            num,
            status,
            ws.f,
            ws.i,
            ws.counters,
            *_split32(seed),
            *_split32(offset),
        )
        self._launch(kern, plan, args, B, V, K, greedy, has_p, has_u, seed_from_ptr, stream)
        return VerifyOutput(tok, num, status)

    def _verify_serving(self, inputs):
        """The serving entry point: the serving kernels of ``_triton_serving.py`` (two launches for
        target logits, one for probabilities)."""
        import torch

        from . import _triton_serving

        device = inputs.device
        if device.type == "cuda" and torch.cuda.current_device() != device.index:
            with torch.cuda.device(device):  # triton launches on the current device
                return self._verify_serving(inputs)
        return _triton_serving.launch_serving(inputs, self._dummy(torch, device), _split32)

    def _verify_tree(self, inputs):
        """Tree verification, greedy and every random rule: one launch of the tree kernel
        (``_triton_tree.py``): one program per request, or, under the target-only rule, several
        sharing the last row (through this stream's workspace)."""
        import torch
        from specsample import rng

        from . import _triton_tree

        device = inputs.device
        if device.type == "cuda" and torch.cuda.current_device() != device.index:
            with torch.cuda.device(device):  # triton launches on the current device
                return self._verify_tree(inputs)
        if inputs.rule == "traversal" and inputs.mode == "random":
            # Traversal verification: its own kernel (_triton_traversal.py). In greedy mode the
            # rule is the token rule's walk, which the tree kernel serves.
            from . import _triton_traversal

            return _triton_traversal.launch_traversal(inputs, self._dummy(torch, device), _split32)
        stream = torch.cuda.current_stream().cuda_stream if device.type == "cuda" else 0
        capturing = rng.is_capturing(device)

        def workspace(nf: int, nc: int):
            ws = self._workspace(torch, device, nf, 0, nc, capturing, stream)
            return ws.f, ws.counters

        return _triton_tree.launch_tree(
            inputs, self._dummy(torch, device), _split32, self._n_sm(device), workspace
        )

    @staticmethod
    def _launch(
        kern, plan: _Plan, args, B, V, K, greedy, has_p, has_u, seed_from_ptr, stream=0
    ) -> None:
        ints = (V, K, plan.chunks, plan.tiles_per_chunk, plan.fslot, plan.islot)
        consts = (
            plan.k_p2,
            plan.nt_p2,
            plan.c_p2,
            plan.block,
            greedy,
            has_p,
            has_u,
            seed_from_ptr,
            plan.prefetch,
            plan.all_rows,
        )
        grid = (B, plan.chunks, 1)
        key = None
        if _state.fast_launch and not kern.INTERPRET:
            # Triton's own launch path re-binds and re-specializes ~30 arguments on every call
            # (tens of microseconds of host time, which at small batch is the whole call). The
            # compiled kernel is cached here under the same specialization triton would compute
            # (dtypes, 16-byte alignment of pointers, divisibility of integers by 16) and
            # launched directly.
            # The outputs, workspace and dummies are fresh allocations of ours (aligned); only the
            # caller's tensors can be misaligned views.
            ids, p, q, u = args[:4]
            key = (
                consts,
                plan.num_warps,
                ids.dtype,
                q.dtype,
                tuple(t.data_ptr() % 16 == 0 for t in (ids, p, q, u)),
                tuple(map(_spec_int, ints)),
            )
            compiled = _state.compiled.get(key)
            if compiled is not None:
                try:
                    if _state.runner_takes_stream:
                        compiled[grid](*args, *ints, *consts, stream=stream)
                    else:
                        compiled[grid](*args, *ints, *consts)
                    return
                except TypeError:
                    # A triton whose launcher takes other arguments: first without ``stream=``,
                    # then not at all (the launch below goes through triton's own path).
                    if _state.runner_takes_stream:
                        _state.runner_takes_stream = False
                    else:
                        _state.fast_launch = False
        compiled = kern.verify_kernel[grid](
            *args,
            *ints,
            K_P2=plan.k_p2,
            NT_P2=plan.nt_p2,
            C_P2=plan.c_p2,
            BLOCK=plan.block,
            GREEDY=greedy,
            HAS_P=has_p,
            HAS_U=has_u,
            SEED_FROM_PTR=seed_from_ptr,
            PREFETCH=plan.prefetch,
            ALL_ROWS=plan.all_rows,
            num_warps=plan.num_warps,
        )
        if key is not None:
            if hasattr(compiled, "__getitem__"):
                _state.compiled[key] = compiled
            else:
                _state.fast_launch = False

    # ------------------------------------------------------------------ caches

    @staticmethod
    def _dummy(torch: Any, device: Any) -> Any:
        t = _state.dummies.get(device)
        if t is None:
            t = torch.zeros(1, dtype=torch.int64, device=device)
            _state.dummies[device] = t
        return t

    @staticmethod
    def _workspace(
        torch: Any, device: Any, nf: int, ni: int, nc: int, capturing: bool, stream: int
    ) -> _Workspace:
        """Scratch of at least ``nf`` float64, ``ni`` int32 and ``nc`` zeroed counters, shared by
        the calls on one (device, stream), or owned by the graph being captured."""
        if capturing:
            # Memory of the graph's own pool, zeroed by a node of the graph: never shared with
            # eager calls (which could otherwise see counters a capture never ran).
            return _Workspace(torch, device, nf, ni, nc)
        key = (device, stream)
        ws = _state.workspaces.get(key)
        if ws is None or not ws.fits(nf, ni, nc):
            old = ws
            ws = _Workspace(
                torch,
                device,
                max(nf, old.f.numel() if old else 0),
                max(ni, old.i.numel() if old else 0),
                max(nc, old.counters.numel() if old else 0),
            )
            _state.workspaces[key] = ws
        return ws

    def _n_sm(self, device: Any) -> int:
        n = _state.n_sm.get(device)
        if n is None:
            import torch

            if device.type == "cuda":
                n = torch.cuda.get_device_properties(device).multi_processor_count
            else:
                n = 4  # the interpreter: a few programs per request, so the split path runs
            _state.n_sm[device] = n
        return n

    def _config(self, inputs: VerifyInputs, greedy, has_p, has_u, capturing) -> LaunchConfig:
        if _forced_config is not None:
            return _forced_config
        B, K, V = inputs.batch_size, inputs.num_draft, inputs.vocab_size
        device = inputs.device
        n_sm = self._n_sm(device)
        if interpreter_mode() or device.type != "cuda":
            return heuristic_config(B, K, V, greedy, n_sm)
        key = (
            device,
            inputs.target_probs.dtype,
            greedy,
            has_p,
            has_u,
            K,
            V,
            _batch_bucket(B),
        )
        cfg = _state.configs.get(key)
        if cfg is not None:
            return cfg
        if capturing or not _tuning_enabled():
            return heuristic_config(B, K, V, greedy, n_sm)
        with _state.lock:
            cfg = _state.configs.get(key)
            if cfg is None:
                cfg = self._tune(inputs, greedy, has_p, has_u, n_sm)
                _state.configs[key] = cfg
        return cfg

    def _tune(self, inputs: VerifyInputs, greedy, has_p, has_u, n_sm) -> LaunchConfig:
        """Time each candidate on these inputs (fixed key: the user's generator is untouched)."""
        import torch
        from triton.testing import do_bench

        from . import _triton_kernels as kern

        B, K, V = inputs.batch_size, inputs.num_draft, inputs.vocab_size
        device = inputs.device
        dummy = self._dummy(torch, device)
        tok = torch.empty((B, K + 1), dtype=torch.int64, device=device)
        num = torch.empty((B,), dtype=torch.int64, device=device)
        status = torch.empty((B,), dtype=torch.int32, device=device)
        best, best_t = None, float("inf")
        for cfg in _candidates(B, V, greedy, n_sm):
            plan = _plan(cfg, B, K, V, greedy)
            stream = torch.cuda.current_stream(device).cuda_stream
            ws = self._workspace(torch, device, *_plan_workspace(plan, B), False, stream)
            args = (
                inputs.draft_token_ids if K > 0 else dummy,
                inputs.draft_probs if has_p else inputs.target_probs,
                inputs.target_probs,
                inputs.uniforms if has_u else dummy,
                dummy,
                tok,
                num,
                status,
                ws.f,
                ws.i,
                ws.counters,
                0,
                0,
                0,
                0,
            )

            def run(plan=plan, args=args, stream=stream) -> None:
                self._launch(kern, plan, args, B, V, K, greedy, has_p, has_u, False, stream)

            try:
                t = do_bench(run, warmup=1, rep=5, return_mode="median")
            except Exception:  # a candidate that does not compile or launch is skipped
                continue
            _tune_log.append(((B, K, V, greedy, has_p), cfg, t))
            if t < best_t:
                best, best_t = cfg, t
        return best if best is not None else heuristic_config(B, K, V, greedy, n_sm)


def _spec_int(v: int) -> tuple:
    """What triton specializes an integer argument on (width, ==1, divisible by 16)."""
    return -(2**31) <= v < 2**31, v == 1, v % 16 == 0


def _split32(v: int) -> tuple[int, int]:
    """A 64-bit value as two signed-int32 bit patterns (low, high): always the same kernel type."""
    v &= (1 << 64) - 1
    lo, hi = v & 0xFFFFFFFF, v >> 32
    return (lo - (1 << 32) if lo >= 1 << 31 else lo), (hi - (1 << 32) if hi >= 1 << 31 else hi)


def tuned_configs() -> dict[tuple, LaunchConfig]:
    """The configurations chosen so far in this process (for reports and notes)."""
    return dict(_state.configs)
