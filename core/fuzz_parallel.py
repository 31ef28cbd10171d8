"""A fuzz campaign spread over worker processes (``specsample fuzz --jobs N``).

The cases of one campaign are independent and deterministic in ``(seed, index)``, so the index
range is cut into chunks and each chunk runs :func:`specsample.fuzz.run_fuzz_many` in a worker
process; the merged results equal a single-process run over the same cases (only ``elapsed_s``
differs).
The float64 reference and the case generator run on the host, so on a GPU machine the host's cores,
not the device, bound a single process: N workers share one GPU and run about N times as many cases
per second until the cores run out.

Workers are started with the ``spawn`` method (CUDA cannot be used in a forked child), each with one
torch CPU thread, and look the backend up by name (``SPECSAMPLE_PLUGINS`` is inherited).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from .fuzz import FuzzResult, run_fuzz_many


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run_chunk(
    names: list[str],
    start: int,
    count: int,
    seed: int,
    device: str | None,
    deadline: float | None,
) -> list[FuzzResult]:
    budget = None if deadline is None else max(deadline - time.time(), 0.0)
    return run_fuzz_many(
        names, cases=count, start=start, seed=seed, time_budget=budget, device=device
    )


def chunk_size(cases: int, jobs: int) -> int:
    """Cases per chunk: about eight chunks per worker (so the last ones finish together), at least
    50 (a chunk's start-up cost is one backend lookup) and at most 5000 (the progress bar moves)."""
    return max(50, min(5000, -(-cases // (8 * jobs))))


def run_fuzz_parallel(
    backends: Sequence[str],
    *,
    jobs: int,
    cases: int = 1000,
    seed: int = 0,
    time_budget: float | None = None,
    device: str | None = None,
    max_divergences: int = 5,
    progress: Callable[[int], None] | None = None,
) -> list[FuzzResult]:
    """Fuzz the registered backends ``backends`` over cases ``0..cases-1`` of ``seed`` in ``jobs``
    worker processes, as one :func:`specsample.fuzz.run_fuzz_many` campaign.

    Args:
        backends: registered backend names (workers look them up; instances cannot be sent).
        jobs: worker processes (>= 1).
        cases, seed, time_budget, device, max_divergences: as in
            :func:`specsample.fuzz.run_fuzz_many`; the time budget is one deadline for the campaign.
        progress: called with the number of cases of each finished chunk.

    Returns:
        One merged :class:`specsample.fuzz.FuzzResult` per backend, divergences in case order.
    """
    names = list(backends)
    if not all(isinstance(n, str) for n in names):
        raise TypeError("backends must be registered names: worker processes look them up")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    start_time = time.perf_counter()
    deadline = None if time_budget is None else time.time() + time_budget
    size = chunk_size(cases, jobs)
    chunks = [(s, min(size, cases - s)) for s in range(0, cases, size)]
    merged = {n: FuzzResult(n, seed) for n in names}
    context = multiprocessing.get_context("spawn")
    # Workers inherit the environment; keep each to one OpenMP thread from its first import.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_init_worker
    ) as pool:
        pending: set[Future[list[FuzzResult]]] = set()
        next_chunk = 0
        while True:
            # Two chunks in flight per worker, so no worker waits for this process; none once the
            # campaign has stopped (the running ones finish, the rest never start).
            while names and next_chunk < len(chunks) and len(pending) < 2 * jobs:
                first, count = chunks[next_chunk]
                next_chunk += 1
                pending.add(pool.submit(_run_chunk, names, first, count, seed, device, deadline))
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                parts = fut.result()
                for part in parts:
                    total = merged[part.backend]
                    total.cases += part.cases
                    total.requests += part.requests
                    total.rounding_ties += part.rounding_ties
                    total.divergences.extend(part.divergences)
                    if part.stopped.startswith("time budget"):
                        part.stopped = f"time budget of {time_budget:g} s"
                    total.stopped = total.stopped or part.stopped
                    if len(total.divergences) >= max_divergences and not total.stopped:
                        total.stopped = f"{max_divergences} divergence(s)"
                if progress is not None:
                    progress(max(p.cases for p in parts))
            # A backend that stopped leaves the campaign; chunks already sent still run it.
            names = [n for n in names if not merged[n].stopped]
    elapsed = time.perf_counter() - start_time
    for result in merged.values():
        result.divergences.sort(key=lambda d: d.index)
        result.elapsed_s = elapsed
    return list(merged.values())
