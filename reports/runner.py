"""The benchmark sweep: backends x batch x K x vocab x dtype x mode x acceptance regime.

One workload is drawn per (B, K, V, dtype, accept, mode) and every backend is timed on it; the
results document (schema ``specsample.bench/1``) is written after each workload, so a crash or a
Ctrl-C keeps the cells done so far.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .schema import BENCH_SCHEMA, write_json
from .stats import summarize
from .timing import Timer, TimingPolicy, capture_graph, copy_bandwidth, launch_floor

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
ID_BYTES = 8  # workloads use int64 ids
SLOW_BACKENDS = ("torch-loop",)  # baselines expected to hit the per-cell budget


@dataclass
class BenchConfig:
    """What to sweep and how to time it.

    Attributes:
        backends: backend names, or None for every registered backend (unavailable ones are listed
            in the results with their reason and get no cells).
        batch, k, vocab, dtype, mode, accept: the grid; ``accept`` holds regime names
            (``high``/``medium``/``low``), ``rate=ALPHA`` or mean acceptance lengths.
        rule: verification rules (``"token"``, ``"block"``). Every cell records its rule; cells of
            a rule other than ``"token"`` go to the results' ``rule_cells`` (so every other view
            keeps one cell per backend and workload) and report their tokens-per-call gain over
            the token cell of the same backend and workload (docs/benchmarks.md, "Rules").
        device: ``"cuda"``, ``"cpu"`` or ``"auto"`` (cuda when available).
        policy: the timing policy (warm-up, samples, budget, L2 handling).
        cuda_graph: also time CUDA-graph replay for backends that claim graph support.
        launches: count kernel launches and host syncs per call (GPU only).
        seed: seed of the workloads and of the verify generator.
        keep_samples: store the raw samples in the results.
        preset: name of the preset the grid came from (recorded only).
        threads: ``torch.set_num_threads`` for the sweep (CPU backends); None keeps torch's default.
            On a busy machine one thread avoids OpenMP stalls that swamp the CPU timings.
        max_errors: after this many consecutive errors a backend's remaining cells are not run
            (recorded as errors that say so): a backend that fails to compile would otherwise
            retry, slowly, in every cell. 0 disables.
        kernel_only: for fused backends, also time the backend's launch path alone
            (``Backend._verify`` on inputs validated once, outside the timed loop) next to the
            default call, so the report shows what the default call's checks cost.
    """

    backends: list[str] | None = None
    batch: Sequence[int] = (1, 8)
    k: Sequence[int] = (4,)
    vocab: Sequence[int] = (32000,)
    dtype: Sequence[str] = ("float32",)
    mode: Sequence[str] = ("random", "greedy")
    accept: Sequence[str] = ("high", "low")
    rule: Sequence[str] = ("token",)
    device: str = "auto"
    policy: TimingPolicy = field(default_factory=TimingPolicy)
    cuda_graph: bool = False
    launches: bool = True
    seed: int = 0
    keep_samples: bool = True
    preset: str | None = None
    threads: int | None = None
    max_errors: int = 3
    kernel_only: bool = True

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no CUDA device")
        return self.device

    def to_dict(self) -> dict[str, Any]:
        return {
            "backends": self.backends,
            "grid": {
                "batch": list(self.batch),
                "k": list(self.k),
                "vocab": list(self.vocab),
                "dtype": list(self.dtype),
                "mode": list(self.mode),
                "accept": [str(a) for a in self.accept],
                "rule": list(self.rule),
            },
            "device": self.device,
            "policy": self.policy.to_dict(),
            "cuda_graph": self.cuda_graph,
            "launches": self.launches,
            "seed": self.seed,
            "keep_samples": self.keep_samples,
            "preset": self.preset,
            "threads": self.threads,
            "max_errors": self.max_errors,
        }


def must_read_bytes(
    mode: str,
    batch: int,
    k: int,
    vocab: int,
    dtype: str,
    mean_length: float,
    reject_fraction: float,
    rule: str = "token",
) -> float:
    """Bytes a verify call must read at least (docs/benchmarks.md, "The floor").

    random: per request the K draft ids, the K draft and K target probabilities at those ids, one
    full target row (the rejected row's q, or the bonus row), and one full draft row when some draft
    is rejected (``reject_fraction`` of the requests).
    greedy: per request the K draft ids and each target row up to the first mismatch, i.e.
    ``mean_length`` (= accepted + 1) full rows.
    random, ``rule="block"``: the K ids, the full q and p rows of every drafted position (the
    residual masses need them), and the bonus row when every draft is accepted.
    """
    es = DTYPE_BYTES[dtype]
    if mode == "random" and rule == "block":
        per = k * ID_BYTES + 2 * k * vocab * es + (1.0 - reject_fraction) * vocab * es
    elif mode == "random":
        per = k * ID_BYTES + 2 * k * es + vocab * es + reject_fraction * vocab * es
    elif mode == "greedy":
        per = k * ID_BYTES + mean_length * vocab * es
    else:
        raise ValueError(f"mode must be 'random' or 'greedy', got {mode!r}")
    return batch * per


def _skip_reason(info: Any, device: str, mode: str, dtype: str, k: int, vocab: int) -> str | None:
    caps = info.capabilities
    if caps is None:
        return "no capabilities declared"
    if device not in caps.devices:
        return f"does not run on {device} (devices: {', '.join(caps.devices)})"
    if mode not in caps.modes:
        return f"mode {mode!r} not claimed"
    if dtype not in caps.dtypes:
        return f"dtype {dtype} not claimed"
    if caps.max_vocab is not None and vocab > caps.max_vocab:
        return f"V={vocab} above max_vocab={caps.max_vocab}"
    if caps.max_k is not None and k > caps.max_k:
        return f"K={k} above max_k={caps.max_k}"
    return None


def _backend_table(names: list[str] | None) -> dict[str, Any]:
    from specsample.registry import list_backends

    infos = {i.name: i for i in list_backends()}
    if names is None:
        return infos
    unknown = [n for n in names if n not in infos]
    if unknown:
        raise ValueError(
            f"unknown backend(s) {', '.join(unknown)}; registered: {', '.join(infos) or 'none'}"
        )
    return {n: infos[n] for n in names}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class _Sweep:
    def __init__(self, config: BenchConfig, command: Sequence[str] | None, out_path: Any) -> None:
        import torch

        from .environment import collect_environment

        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.torch = torch
        self.config = config
        self.device = config.resolved_device()
        self.out_path = Path(out_path) if out_path else None
        self.consecutive_errors: dict[str, list[str]] = {}
        self.announced: set[str] = set()  # backends whose first-use note was shown
        self.infos = _backend_table(config.backends)
        self.doc: dict[str, Any] = {
            "schema": BENCH_SCHEMA,
            "created": _now(),
            "command": list(command) if command is not None else list(sys.argv),
            "config": config.to_dict(),
            "environment": collect_environment(torch.device(self.device).type),
            "device": {},
            "backends": {
                name: {
                    "available": info.available,
                    "reason": info.reason,
                    "capabilities": info.capabilities.to_dict() if info.capabilities else None,
                    "plugin": info.plugin,
                    "peer": _peer_of(name),
                }
                for name, info in self.infos.items()
            },
            "cells": [],
            "rule_cells": [],
            "interrupted": False,
            "complete": False,
            "elapsed_s": None,
        }

    def save(self) -> None:
        if self.out_path is not None:
            write_json(self.doc, self.out_path)

    def measure_device(self) -> None:
        torch = self.torch
        dev = torch.device(self.device)
        from .timing import last_level_cache_bytes

        info: dict[str, Any] = {"type": dev.type, "name": None}
        if dev.type == "cuda":
            info["name"] = torch.cuda.get_device_name(dev)
        else:
            import platform

            info["name"] = platform.processor() or platform.machine()
        info["l2_bytes"] = last_level_cache_bytes(dev)
        bw = copy_bandwidth(dev)
        info["copy_bandwidth_Bps"] = bw["bandwidth_Bps"]
        info["copy"] = bw
        floor = launch_floor(dev, self.config.policy)
        info["launch_floor_s"] = floor["median"]
        info["launch_floor"] = floor
        self.doc["device"] = info

    def workloads(self) -> list[tuple]:
        c = self.config
        return list(itertools.product(c.mode, c.dtype, c.accept, c.vocab, c.k, c.batch))

    def run(self, progress: bool = True) -> dict[str, Any]:
        from tqdm.auto import tqdm

        t_start = time.perf_counter()
        available = [n for n, i in self.infos.items() if i.available]
        self.measure_device()
        groups = self.workloads()
        total = len(groups) * len(available)
        bar = tqdm(
            total=total,
            disable=not progress,
            unit="cell",
            desc="specsample bench",
            dynamic_ncols=True,
            file=sys.stderr,
        )
        try:
            for mode, dtype, accept, vocab, k, batch in groups:
                self.run_group(mode, dtype, accept, vocab, k, batch, available, bar)
                self.save()
            self.doc["complete"] = True
        except KeyboardInterrupt:
            self.doc["interrupted"] = True
            bar.write("interrupted: keeping the cells done so far")
        finally:
            bar.close()
            self.doc["elapsed_s"] = time.perf_counter() - t_start
            self.save()
        return self.doc

    def run_group(self, mode, dtype, accept, vocab, k, batch, available, bar) -> None:
        from specsample.workloads import acceptance_length_for, expected_acceptance, make_workload

        torch = self.torch
        base = {
            "mode": mode,
            "dtype": dtype,
            "batch": batch,
            "k": k,
            "vocab": vocab,
            "accept": str(accept),
        }
        todo = []
        for name in available:
            reason = _skip_reason(
                self.infos[name], torch.device(self.device).type, mode, dtype, k, vocab
            )
            if reason is not None:
                for rule in self.config.rule:
                    self._cells(rule).append(
                        {
                            "backend": name,
                            **base,
                            "rule": rule,
                            "status": "skipped",
                            "reason": reason,
                        }
                    )
                bar.update(1)
            else:
                todo.append(name)
        if not todo:
            return
        try:
            length = acceptance_length_for(accept, k)
            wl = make_workload(
                batch,
                k,
                vocab,
                dtype=getattr(torch, dtype),
                device=self.device,
                seed=self.config.seed,
                acceptance_length=length,
                greedy_drafter=mode == "greedy",
            )
            expected = expected_acceptance(wl, mode).to_dict()
        except (ValueError, RuntimeError) as exc:  # bad regime for this K, or out of memory
            for name in todo:
                for rule in self.config.rule:
                    self._cells(rule).append(
                        {
                            "backend": name,
                            **base,
                            "rule": rule,
                            "status": "error",
                            "reason": f"workload: {type(exc).__name__}: {exc}",
                        }
                    )
                bar.update(1)
            return
        workload_info = {
            "noise": wl.noise,
            "requested_length": length,
            "expected": expected,
            "seed": self.config.seed,
            "input_bytes": wl.nbytes(),
        }
        copies = self._copies(wl)
        for name in todo:
            if name not in self.announced:  # a backend's first cell may build or compile first
                self.announced.add(name)
                from specsample.conformance.progress import first_use_note

                note = first_use_note(name)
                if note and not getattr(bar, "disable", True):
                    bar.write(f"{name}: {note}")
            bar.set_postfix_str(f"{name} {mode} B={batch} K={k} V={vocab} {accept}", refresh=False)
            by_rule: dict[str, dict[str, Any]] = {}
            for rule in self.config.rule:
                cell = {"backend": name, **base, "rule": rule, "workload": workload_info}
                self._run_one(cell, name, mode, rule, copies, expected)
                by_rule[rule] = cell
            record_rule_gain(by_rule)
            bar.update(1)
        del copies, wl

    def _cells(self, rule: str) -> list[dict[str, Any]]:
        """Where a cell of ``rule`` goes: ``cells`` for the grid's main rule (``"token"`` when
        present), ``rule_cells`` for the others."""
        rules = list(self.config.rule)
        main = "token" if "token" in rules else rules[0]
        return self.doc["cells"] if rule == main else self.doc["rule_cells"]

    def _run_one(self, cell, name, mode, rule, copies, expected) -> None:
        """Time one (backend, rule) cell of the current workload and store it."""
        torch = self.torch
        errors = self.consecutive_errors.setdefault((name, rule), [])
        limit = self.config.max_errors
        if limit and len(errors) >= limit:
            cell.update(
                status="error",
                reason=f"not run: the backend failed in its last "
                f"{len(errors)} cells (last: {errors[-1]})",
            )
            self._cells(rule).append(cell)
            return
        caps = self.infos[name].capabilities
        if rule not in getattr(caps, "rules", ("token",)):
            cell.update(status="skipped", reason=f"rule {rule!r} not claimed")
            self._cells(rule).append(cell)
            return
        t_cell = time.perf_counter()
        try:
            cell.update(self.run_cell(name, mode, copies, expected, rule))
            errors.clear()
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            cell.update(status="error", reason=message)
            errors.append(message.splitlines()[0][:300] if message else "")
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
        cell["wall_s"] = time.perf_counter() - t_cell  # the cell's cost to the sweep
        self._cells(rule).append(cell)

    def _copies(self, wl: Any) -> list[Any]:
        """The workload, or enough copies of it to exceed the cache when rotating."""
        policy = self.config.policy
        if policy.l2 != "rotate":
            return [wl]
        from .timing import last_level_cache_bytes

        llc = last_level_cache_bytes(self.torch.device(self.device))
        n = min(64, max(1, math.ceil(2 * llc / max(1, wl.nbytes())) + 1))
        n = max(1, min(n, int(2 * 2**30 // max(1, wl.nbytes()))))  # at most 2 GiB of copies
        copies = [wl]
        for _ in range(n - 1):
            copies.append(
                type(wl)(
                    wl.draft_token_ids.clone(),
                    None if wl.draft_probs is None else wl.draft_probs.clone(),
                    wl.target_probs.clone(),
                    wl.noise,
                    wl.requested_acceptance_length,
                )
            )
        return copies

    def run_cell(
        self, name: str, mode: str, copies: list[Any], expected: dict, rule: str = "token"
    ) -> dict[str, Any]:
        import specsample

        from .launches import count_launches

        torch = self.torch
        cfg = self.config
        backend = specsample.get_backend(name)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(cfg.seed + 1)

        def call(i: int) -> Any:  # the documented default call: what a user gets
            w = copies[i]
            kw = {} if rule == "token" else {"rule": rule}
            return backend.verify(
                w.draft_token_ids, w.draft_probs, w.target_probs, mode=mode, generator=gen, **kw
            )

        timed_call = "default"
        if rule == "token" and (self.doc["backends"].get(name) or {}).get("peer"):
            # A peer is timed as itself: specsample's input checks (an eager value pass and a host
            # sync for a backend without in-kernel status flags) are not the wrapped library's cost.
            prepared, _ = self._kernel_only_call(backend, mode, copies)
            if prepared is not None:
                call, timed_call = prepared, "pre-validated"  # type: ignore[assignment]

        emitted: list[Any] = []

        def keep(out: Any) -> None:
            emitted.append(out.num_emitted.to(torch.float64))

        policy = cfg.policy
        if name not in SLOW_BACKENDS and policy.budget_s is not None:
            # The budget is meant for slow baselines; give the others room to reach min_samples.
            policy = TimingPolicy(**{**policy.to_dict(), "budget_s": max(policy.budget_s, 30.0)})
        timer = Timer(self.device, policy)
        kernel_only: dict[str, Any] | None = None
        kernel_call = None
        if cfg.kernel_only and backend.capabilities.fused:
            kernel_call, kernel_only = self._kernel_only_call(backend, mode, copies, rule)
        if kernel_call is None:
            m = timer.measure(call, n_inputs=len(copies), on_warmup_output=keep)
        else:
            # One loop alternating the two calls: their ratio is then free of the machine's drift.
            m, mk = timer.measure_interleaved(
                [call, kernel_call], n_inputs=len(copies), on_warmup_output=keep
            )
            kernel_only = self._kernel_only_result(mk, m)
        timing = m.to_dict(keep_samples=cfg.keep_samples)

        B, K, V = copies[0].shape
        ne = torch.cat(emitted) if emitted else torch.empty(0)
        measured_length = float(ne.mean()) if ne.numel() else math.nan
        measured_reject = float((ne < K + 1).double().mean()) if ne.numel() else math.nan
        acceptance = {
            "requested_length": copies[0].requested_acceptance_length,
            "expected_length": expected["mean_length"],
            "expected_reject_fraction": expected["reject_fraction"],
            "measured_length": measured_length,
            "measured_reject_fraction": measured_reject,
            "measured_calls": len(emitted),
        }

        dtype = str(copies[0].target_probs.dtype).replace("torch.", "")
        nbytes = must_read_bytes(mode, B, K, V, dtype, measured_length, measured_reject, rule)
        dev = self.doc["device"]
        median = timing["median"]
        bw = dev["copy_bandwidth_Bps"]
        floor_launch = dev["launch_floor_s"]
        floor_bytes = nbytes / bw
        floor = max(floor_launch, floor_bytes)
        result: dict[str, Any] = {
            "status": "ok",
            "reason": "",
            "timed_call": timed_call,
            "capped": m.capped,
            "timing": timing,
            "acceptance": acceptance,
            "bytes": {"must_read": nbytes, "input_bytes": copies[0].nbytes()},
            "bandwidth": {
                "achieved_Bps": nbytes / median if median > 0 else math.nan,
                "fraction_of_copy": (nbytes / median) / bw if median > 0 else math.nan,
            },
            "floor": {
                "launch_s": floor_launch,
                "bytes_s": floor_bytes,
                "floor_s": floor,
                "bound": "launch" if floor_launch >= floor_bytes else "bytes",
                "ratio": median / floor if floor > 0 else math.nan,
            },
            "launches": None,
            "graph": None,
        }
        if cfg.launches and self.device.startswith("cuda"):
            calls = 3 if (m.est_call_s or 0) < 0.05 else 1
            try:
                result["launches"] = count_launches(lambda: call(0), self.device, calls=calls)
            except Exception as exc:
                result["launches"] = {"error": f"{type(exc).__name__}: {exc}"}
        if cfg.cuda_graph and self.device.startswith("cuda"):
            result["graph"] = self._graph_timing(backend, mode, copies[0], policy)
        if kernel_only is not None:
            result["kernel_only"] = kernel_only
        return result

    def _kernel_only_call(
        self, backend: Any, mode: str, copies: list[Any], rule: str = "token"
    ) -> tuple[Callable[[int], Any] | None, dict[str, Any] | None]:
        """``backend._verify`` on inputs validated once (with ``rule``: the kernel-only call of a
        block-rule cell must time the block kernel), outside the timed loop.

        Returns ``(call, None)``, or ``(None, error record)`` when the inputs cannot be prepared.
        """
        from specsample.validation import validate_inputs

        gen = self.torch.Generator(device=self.device)
        gen.manual_seed(self.config.seed + 2)
        try:
            prepared = [
                validate_inputs(
                    w.draft_token_ids,
                    w.draft_probs,
                    w.target_probs,
                    mode=mode,
                    generator=gen,
                    capabilities=backend.capabilities,
                    backend_name=backend.name,
                    rule=rule,
                )
                for w in copies
            ]
        except Exception as exc:
            return None, {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
        return (lambda i: backend._verify(prepared[i])), None

    def _kernel_only_result(self, m: Any, default: Any) -> dict[str, Any]:
        """The kernel-only record of a cell, with its ratio to the default call timed beside it."""
        out = m.to_dict(keep_samples=False)
        out["status"] = "ok"
        out["method"] = (
            "Backend._verify on pre-validated inputs (no host-side checks), timed in one loop "
            "alternating with the default call"
        )
        median = out.get("median", math.nan)
        default_s = summarize(default.samples)["median"] if default.samples else math.nan
        out["default_over_kernel"] = default_s / median if median and median > 0 else math.nan
        return out

    def _graph_timing(self, backend: Any, mode: str, wl: Any, policy: TimingPolicy) -> dict:
        caps = backend.capabilities
        if not caps.cuda_graphs:
            return {"status": "skipped", "reason": "backend does not claim CUDA-graph support"}

        def call(i: int) -> Any:
            # The default generator: torch registers it with the graph, so replays draw anew.
            return backend.verify(wl.draft_token_ids, wl.draft_probs, wl.target_probs, mode=mode)

        try:
            graph = capture_graph(call, self.device)
        except Exception as exc:
            return {"status": "error", "reason": f"capture failed: {type(exc).__name__}: {exc}"}
        p = TimingPolicy(**{**policy.to_dict(), "l2": "flush" if policy.l2 != "none" else "none"})
        m = Timer(self.device, p).measure(lambda i: graph.replay())
        out = m.to_dict(keep_samples=self.config.keep_samples)
        out["status"] = "ok"
        out["method"] = "cuda-events around CUDAGraph.replay()"
        return out


def run_bench(
    config: BenchConfig,
    *,
    out_path: str | Path | None = None,
    command: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the sweep; return the results document (and write it to ``out_path`` as it goes).

    A KeyboardInterrupt (or SIGTERM) stops the sweep, marks the document ``"interrupted": true``
    and still writes it; it is not re-raised (check the flag).
    """
    import signal
    import threading

    sweep = _Sweep(config, command, out_path)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # A SIGTERM (a CI timeout, `timeout`, a scheduler) ends the sweep like Ctrl-C does: the
        # cells done so far are kept and the file is written.
        def _terminate(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return sweep.run(progress=progress)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def record_rule_gain(by_rule: dict[str, dict[str, Any]]) -> None:
    """Add ``acceptance.gain_over_token`` to the ok cells of rules other than ``"token"``: the
    measured mean emitted tokens per call minus the token cell's (same backend and workload),
    and ``relative_gain_over_token`` (that difference over the token cell's length)."""
    token = by_rule.get("token")
    if token is None or token.get("status") != "ok":
        return
    base = token["acceptance"]["measured_length"]
    for rule, cell in by_rule.items():
        if rule == "token" or cell.get("status") != "ok":
            continue
        length = cell["acceptance"]["measured_length"]
        cell["acceptance"]["gain_over_token"] = length - base
        cell["acceptance"]["relative_gain_over_token"] = (length - base) / base if base else None


def _peer_of(name: str) -> str:
    """The external library a backend wraps (:attr:`specsample.Backend.peer`), ``""`` if none."""
    from specsample.registry import backend_class

    try:
        return str(getattr(backend_class(name), "peer", "") or "")
    except Exception:  # an unknown or broken backend: it wraps nothing the report can name
        return ""
