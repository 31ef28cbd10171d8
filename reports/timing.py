"""Timing one call, the project's standard way (docs/benchmarks.md, "Timing method").

GPU: CUDA events recorded on the current stream around each call; the L2 cache is flushed before
every call by writing a buffer twice its size (read from ``torch.cuda.get_device_properties``), or
the inputs are rotated among enough copies to exceed it; warm-up calls (which absorb any autotune,
JIT build or ``torch.compile``) are excluded. This is the method of ``triton.testing.do_bench``, but
we keep every sample and report the median and inter-quartile range (do_bench returns the mean
unless asked otherwise). CPU: ``time.perf_counter`` around each call, same statistics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .stats import summarize

L2_MODES = ("flush", "rotate", "none")


@dataclass
class TimingPolicy:
    """How long and how often to time one cell.

    Attributes:
        warmup_calls: warm-up calls before timing (at least one; the first may compile or tune).
        warmup_s: keep warming up (after the first call) until this much wall time has passed.
        target_s: wall time to spend on timed calls when the budget allows.
        min_samples, max_samples: bounds on the number of timed calls.
        budget_s: cap on one cell's wall time (warm-up after the first call + timing; the first
            call, which may compile, is not counted); None for no cap. A cell that hits it before
            ``min_samples`` is marked ``capped``.
        l2: ``"flush"`` (write, then read, a buffer of twice the last-level cache before each
            call), ``"rotate"`` (cycle through input copies whose total exceeds it) or ``"none"``.
        gpu_delay: on the GPU, keep the device ahead of the host while timing, so the events
            measure device time rather than host launch overhead: a spin kernel
            (``torch.cuda._sleep``) before each call's start event, sized ``delay_margin`` times
            the host's enqueue time of a whole timed iteration (flush, spin, events and the call;
            at most ``max_delay_s``), and one spin of ``lead_s`` before the first timed call.
        max_delay_s: cap on the spin before each call. It must exceed the spin a call needs
            (``delay_margin`` times the iteration's enqueue time): a capped spin lets the device
            drain its queue and wait for the host inside the timed region. Eager multi-kernel
            backends enqueue for milliseconds (torch-vectorized 1.6-3.2 ms a call on an H100
            host), so the cap is a guard against runaway spins, not a budget.
        delay_margin: the per-call spin over the host's whole-iteration enqueue time (> 1: the
            device gains that fraction of an iteration on the host at every call).
        lead_s: the spin before the first timed call (the device starts idle after warm-up); a
            host stall shorter than the device's lead does not reach the samples.
    """

    warmup_calls: int = 3
    warmup_s: float = 0.02
    target_s: float = 0.25
    min_samples: int = 10
    max_samples: int = 400
    budget_s: float | None = 10.0
    l2: str = "flush"
    gpu_delay: bool = True
    max_delay_s: float = 50e-3
    delay_margin: float = 1.5
    lead_s: float = 1e-3

    def __post_init__(self) -> None:
        if self.l2 not in L2_MODES:
            raise ValueError(f"l2 must be one of {L2_MODES}, got {self.l2!r}")
        if self.warmup_calls < 1:
            raise ValueError(f"warmup_calls must be >= 1, got {self.warmup_calls}")
        if self.min_samples < 1 or self.max_samples < self.min_samples:
            raise ValueError(
                f"need 1 <= min_samples <= max_samples, got {self.min_samples}, {self.max_samples}"
            )
        if self.delay_margin < 1.0:
            raise ValueError(
                f"delay_margin must be >= 1 (the device must outpace the host), got "
                f"{self.delay_margin}"
            )
        if self.max_delay_s < 0 or self.lead_s < 0:
            raise ValueError(
                f"max_delay_s and lead_s must be >= 0, got {self.max_delay_s}, {self.lead_s}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Measurement:
    """Samples of one timed call plus how they were taken."""

    samples: list[float]
    method: str
    l2: str
    warmup_calls: int
    capped: bool = False
    first_call_s: float | None = None
    est_call_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, keep_samples: bool = True) -> dict[str, Any]:
        out = summarize(self.samples)
        out.update(
            unit="s",
            method=self.method,
            l2=self.l2,
            warmup_calls=self.warmup_calls,
            first_call_s=self.first_call_s,
            capped=self.capped,
        )
        out.update(self.extra)
        if keep_samples:
            out["samples"] = list(self.samples)
        return out


def last_level_cache_bytes(device: Any) -> int:
    """L2 size of a CUDA device, or the CPU's last-level cache (32 MiB if it cannot be read)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 0)) or 50 * 2**20
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        try:
            best = max(best, int(text.rstrip("KMG")) * mult)
        except ValueError:
            continue
    return best or 32 * 2**20


class CacheFlusher:
    """Evicts whatever the previous call left in the last-level cache.

    Writes a buffer of twice the cache size, then reads it back (a sum into a device scalar): the
    write evicts everything, the read replaces the now dirty lines with clean ones, so the timed
    call does not pay for writing the flush buffer back to memory.
    """

    def __init__(self, device: Any) -> None:
        import torch

        self.device = torch.device(device)
        self.cache_bytes = last_level_cache_bytes(self.device)
        self.buffer = torch.empty(
            2 * self.cache_bytes // 4, dtype=torch.float32, device=self.device
        )
        self.sink = torch.zeros((), dtype=torch.float32, device=self.device)

    def __call__(self) -> None:
        import torch

        self.buffer.fill_(1.0)
        torch.sum(self.buffer, dim=0, out=self.sink)


# Cycles per second assumed when sizing the GPU delay: the highest SM clock of current GPUs, so
# that a slower clock only makes the delay longer (the safe side).
_DELAY_CLOCK_HZ = 2.0e9
# Added to every per-call spin: covers the Python loop's own bookkeeping between iterations.
_DELAY_FLOOR_S = 5e-6
# The timed loop waits for the device every _THROTTLE_EVERY iterations, on the end event of the
# call _THROTTLE_BEHIND iterations back: the host never queues far ahead (the driver's launch
# queue is finite and the budget is checked there), and the device never runs out of queued work.
_THROTTLE_EVERY = 16
_THROTTLE_BEHIND = 16


@dataclass(frozen=True)
class SpinPlan:
    """The spin kernels that keep the device ahead of the host while a cell is timed.

    Attributes:
        per_call_s: spin enqueued before each call's start event, seconds.
        lead_s: spin enqueued once before the first timed call, seconds.
    """

    per_call_s: float
    lead_s: float

    @property
    def per_call_cycles(self) -> int:
        return int(self.per_call_s * _DELAY_CLOCK_HZ)

    @property
    def lead_cycles(self) -> int:
        return int(self.lead_s * _DELAY_CLOCK_HZ)


def plan_spin(iteration_enqueue_s: float, policy: TimingPolicy) -> SpinPlan:
    """Size the spins from the host's enqueue time of one whole timed iteration.

    Args:
        iteration_enqueue_s: host seconds to enqueue one timed iteration (cache flush, spin, start
            event, the call, end event), measured in the warm-up.
        policy: supplies ``gpu_delay``, ``delay_margin``, ``max_delay_s`` and ``lead_s``.

    Returns:
        ``SpinPlan(0, 0)`` when ``policy.gpu_delay`` is off; otherwise a per-call spin of
        ``delay_margin * iteration_enqueue_s + 5 us`` (at most ``max_delay_s``) and the lead.
        While the per-call spin is longer than the iteration's enqueue time the device gains on
        the host at every call, so the lead it starts with is never used up by the loop itself.
    """
    if not policy.gpu_delay:
        return SpinPlan(0.0, 0.0)
    if not math.isfinite(iteration_enqueue_s) or iteration_enqueue_s < 0:
        raise ValueError(
            f"iteration_enqueue_s must be a finite time >= 0, got {iteration_enqueue_s!r}"
        )
    per_call = min(policy.max_delay_s, policy.delay_margin * iteration_enqueue_s + _DELAY_FLOOR_S)
    return SpinPlan(per_call_s=per_call, lead_s=policy.lead_s)


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Times ``call(i)`` (``i`` picks the input copy when rotating) under a :class:`TimingPolicy`."""

    def __init__(self, device: Any, policy: TimingPolicy) -> None:
        import torch

        self.device = torch.device(device)
        self.policy = policy
        self.cuda = self.device.type == "cuda"
        self._flusher: CacheFlusher | None = None

    @property
    def method(self) -> str:
        return "cuda-events" if self.cuda else "perf_counter"

    def flusher(self) -> CacheFlusher:
        if self._flusher is None:
            self._flusher = CacheFlusher(self.device)
        return self._flusher

    def measure(
        self,
        call: Callable[[int], Any],
        n_inputs: int = 1,
        on_warmup_output: Callable[[Any], None] | None = None,
    ) -> Measurement:
        """Warm up, then time ``call`` many times.

        Args:
            call: the function to time; gets the index of the input copy to use.
            n_inputs: number of input copies (``l2="rotate"``); 1 otherwise.
            on_warmup_output: receives each warm-up call's return value (e.g. to measure acceptance).
        """
        return self.measure_interleaved([call], n_inputs, on_warmup_output)[0]

    def measure_interleaved(
        self,
        calls: Sequence[Callable[[int], Any]],
        n_inputs: int = 1,
        on_warmup_output: Callable[[Any], None] | None = None,
    ) -> list[Measurement]:
        """Time several calls in one loop that alternates between them, one sample each per round.

        Each call is warmed up on its own; then every round times each call once (the order
        reverses from round to round), so a slow drift of the machine (clocks, a neighbour's
        load, the host) reaches every call alike and their ratio is not at its mercy. The spin
        that keeps the device ahead of the host is sized for the slowest call's iteration, and
        the budget is shared. With one call this is :meth:`measure`.

        Args:
            calls: the functions to time; each gets the index of the input copy to use.
            n_inputs: number of input copies (``l2="rotate"``); 1 otherwise.
            on_warmup_output: receives each warm-up output of ``calls[0]``.

        Returns:
            One :class:`Measurement` per call, in the order of ``calls``.
        """
        if not calls:
            raise ValueError("calls must hold at least one function to time")
        policy = self.policy
        flush = self.flusher() if policy.l2 == "flush" else None
        budget = policy.budget_s if policy.budget_s is not None else math.inf
        start_wall = time.perf_counter()
        warm = []
        for j, call in enumerate(calls):
            # The budget starts after the first call of the first function (it may compile).
            w = self._warm_up(call, n_inputs, on_warmup_output if j == 0 else None, flush, budget)
            warm.append(w)
            if j == 0:
                start_wall = w.budget_start
        est = max(w.est for w in warm)
        host_iteration = max(w.host_iteration for w in warm)

        # GPU: spin kernels keep the device ahead of the host for the whole timed loop, so the
        # events time the device work, not the host's launch overhead or its stalls.
        spin = plan_spin(host_iteration, policy) if self.cuda else SpinPlan(0.0, 0.0)
        delay = spin.per_call_s

        remaining = budget - (time.perf_counter() - start_wall) - spin.lead_s
        n = max(policy.min_samples, math.ceil(policy.target_s / est))
        n = min(n, policy.max_samples)
        capped = False
        round_s = len(calls) * (est + delay)
        if round_s * n > remaining:
            n_fit = max(1, int(remaining / round_s)) if remaining > 0 else 1
            if n_fit < n:
                capped = n_fit < policy.min_samples
                n = n_fit
        if self.cuda:
            samples, loop = self._time_cuda(calls, n, n_inputs, flush, start_wall, budget, spin)
        else:
            samples = self._time_cpu(calls, n, n_inputs, flush, start_wall, budget)
            loop = []
        out = []
        for j, w in enumerate(warm):
            extra: dict[str, Any] = {"gpu_delay_s": delay, "host_enqueue_s": w.host}
            if self.cuda:
                extra.update(
                    gpu_lead_s=spin.lead_s,
                    host_iteration_s=w.host_iteration,
                    host_iteration_max_s=max(loop[j]) if loop and loop[j] else None,
                )
            if len(calls) > 1:
                extra["interleaved_with"] = len(calls) - 1
            wall = summarize(w.times)
            extra["wall"] = {k: wall[k] for k in ("statistic", "n", "median", "q1", "q3", "iqr")}
            out.append(
                Measurement(
                    samples=samples[j],
                    method=self.method,
                    l2=policy.l2,
                    warmup_calls=w.calls,
                    capped=capped or len(samples[j]) < min(n, policy.min_samples),
                    first_call_s=w.first,
                    est_call_s=w.est,
                    extra=extra,
                )
            )
        return out

    def _warm_up(self, call, n_inputs, on_output, flush, budget) -> _WarmUp:
        """Warm-up calls of one function (see :meth:`measure_interleaved`)."""
        policy = self.policy
        shaped = self.cuda and policy.gpu_delay
        if shaped:
            import torch

            sleep = _spin_kernel()
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))

        # The first call may compile/tune; later warm-up calls estimate the call time
        # (synchronized wall clock: the eager latency a caller sees) and the host's enqueue time.
        # On the GPU each warm-up call is wrapped in the rest of a timed iteration (flush, a
        # one-cycle spin, the two events), each piece timed on the host, so the spin can be sized
        # from the enqueue time of the whole iteration; the wall time covers the call alone.
        warm_times: list[float] = []
        enqueue_times: list[float] = []
        iteration_times: list[float] = []
        first = None
        calls = 0
        start_wall = time.perf_counter()
        while True:
            _sync(self.device)
            overhead = 0.0
            if shaped:
                t0 = time.perf_counter()
                if flush is not None:
                    flush()
                sleep(1)
                events[0].record()
                overhead = time.perf_counter() - t0
                _sync(self.device)
            t0 = time.perf_counter()
            out = call(calls % n_inputs)
            t_enq = time.perf_counter() - t0
            _sync(self.device)
            dt = time.perf_counter() - t0
            if shaped:
                t1 = time.perf_counter()
                events[1].record()
                overhead += time.perf_counter() - t1
            if on_output is not None:
                on_output(out)
            if first is None:
                # The first call may compile, tune or build: the budget starts after it.
                first = dt
                start_wall = time.perf_counter()
            else:
                warm_times.append(dt)
                enqueue_times.append(t_enq)
                iteration_times.append(t_enq + overhead)
            calls += 1
            elapsed = time.perf_counter() - start_wall
            if elapsed > budget:
                break
            if calls >= policy.warmup_calls and sum(warm_times) >= policy.warmup_s:
                break
            if calls >= max(policy.warmup_calls, 1000):
                break
        est = (_median(warm_times) if warm_times else first) or 1e-6
        host = _median(enqueue_times) if enqueue_times else est
        return _WarmUp(
            first=first,
            times=warm_times,
            calls=calls,
            est=est,
            host=host,
            host_iteration=_median(iteration_times) if iteration_times else host,
            budget_start=start_wall,
        )

    def _time_cpu(self, calls, n, n_inputs, flush, start_wall, budget) -> list[list[float]]:
        samples: list[list[float]] = [[] for _ in calls]
        for i in range(n):
            for j in _round_order(len(calls), i):
                if flush is not None:
                    flush()
                t0 = time.perf_counter()
                calls[j](i % n_inputs)
                samples[j].append(time.perf_counter() - t0)
            if time.perf_counter() - start_wall > budget:
                break
        return samples

    def _time_cuda(
        self, calls, n, n_inputs, flush, start_wall, budget, spin: SpinPlan
    ) -> tuple[list[list[float]], list[list[float]]]:
        """The timed loop on the GPU.

        Returns ``(samples, iteration_s)``: per call, its samples in seconds and the host's
        enqueue time of each of its iterations in seconds.
        """
        import torch

        sleep = _spin_kernel() if spin.per_call_s > 0 or spin.lead_s > 0 else None
        m = len(calls)
        starts = [[torch.cuda.Event(enable_timing=True) for _ in range(n)] for _ in calls]
        ends = [[torch.cuda.Event(enable_timing=True) for _ in range(n)] for _ in calls]
        iteration_s: list[list[float]] = [[] for _ in calls]
        done = 0
        # torch creates an event's CUDA event on its first record; creating one between a call
        # and its end event would leave the device waiting for the host (the committed report's
        # first sample of nearly every cell was 0.1 ms for it). Create them all now.
        for row in (*starts, *ends):
            for event in row:
                event.record()
        if sleep is not None and spin.lead_cycles > 0:
            sleep(spin.lead_cycles)  # the device starts idle: give it a lead before the first call
        # Throttle in rounds, so the host stays about _THROTTLE_BEHIND calls ahead whatever m is.
        every = max(1, _THROTTLE_EVERY // m)
        behind = max(1, _THROTTLE_BEHIND // m)
        for i in range(n):
            for j in _round_order(m, i):
                t0 = time.perf_counter()
                if flush is not None:
                    flush()
                if sleep is not None and spin.per_call_cycles > 0:
                    sleep(spin.per_call_cycles)
                starts[j][i].record()
                calls[j](i % n_inputs)
                ends[j][i].record()
                iteration_s[j].append(time.perf_counter() - t0)
            done = i + 1
            # Keep the host from queueing far ahead, and honour the budget, without draining the
            # device's queue: wait for a round well behind the one just enqueued.
            if done % every == 0:
                if done > behind:
                    for j in range(m):
                        ends[j][i - behind].synchronize()
                if time.perf_counter() - start_wall > budget:
                    break
        torch.cuda.synchronize(self.device)
        samples = [
            [starts[j][i].elapsed_time(ends[j][i]) * 1e-3 for i in range(done)] for j in range(m)
        ]
        return samples, iteration_s


@dataclass
class _WarmUp:
    """What one function's warm-up measured (host wall clock, seconds)."""

    first: float | None
    times: list[float]
    calls: int
    est: float
    host: float
    host_iteration: float
    budget_start: float


def _round_order(m: int, i: int) -> range:
    """The order of ``m`` interleaved calls in round ``i``: forward, then backward, alternately."""
    return range(m) if i % 2 == 0 else range(m - 1, -1, -1)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _spin_kernel() -> Callable[[int], None]:
    """``torch.cuda._sleep``: one kernel that spins for a number of cycles."""
    import torch

    sleep = getattr(torch.cuda, "_sleep", None)
    if sleep is None:
        raise RuntimeError(
            "timing with gpu_delay needs torch.cuda._sleep, which this torch "
            f"({torch.__version__}) lacks; time with gpu_delay=False (--no-gpu-delay)"
        )
    return sleep


def capture_graph(call: Callable[[int], Any], device: Any) -> Any:
    """Capture one ``call(0)`` into a CUDA graph (after warm-up on a side stream); return the graph."""
    import torch

    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            call(0)
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call(0)
    torch.cuda.synchronize(device)
    return graph


def copy_bandwidth(device: Any, nbytes: int | None = None, repeats: int = 20) -> dict[str, Any]:
    """Measure device-memory copy bandwidth: ``dst.copy_(src)``, counting bytes read + written.

    The buffer is at least 256 MiB and 8x the last-level cache, so the copy streams from memory.
    Returns ``{"bandwidth_Bps", "bytes", "median_s", "method"}``.
    """
    import torch

    device = torch.device(device)
    llc = last_level_cache_bytes(device)
    if nbytes is None:
        nbytes = max(256 * 2**20, 8 * llc) if device.type == "cuda" else max(64 * 2**20, 4 * llc)
    n = nbytes // 4
    src = torch.rand(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    policy = TimingPolicy(
        warmup_calls=3,
        warmup_s=0.0,
        target_s=0.0,
        min_samples=repeats,
        max_samples=repeats,
        budget_s=30.0,
        l2="none",
    )
    m = Timer(device, policy).measure(lambda i: dst.copy_(src))
    median = summarize(m.samples)["median"]
    return {
        "bandwidth_Bps": 2 * n * 4 / median,
        "bytes": 2 * n * 4,
        "median_s": median,
        "method": f"{m.method}, dst.copy_(src) of {n * 4} bytes, read + written, median of {len(m.samples)}",
    }


def launch_floor(device: Any, policy: TimingPolicy) -> dict[str, Any]:
    """Time the smallest possible call, one trivial kernel (``x.add_(1)`` on one element).

    Timed exactly like a cell (same method and cache policy), so it is the floor of a one-launch
    backend at small batch. On the CPU it is the cost of one trivial torch op, caches warm.
    """
    import torch

    x = torch.zeros(1, dtype=torch.float32, device=device)
    p = TimingPolicy(
        warmup_calls=10,
        warmup_s=0.01,
        target_s=max(policy.target_s, 0.1),
        min_samples=50,
        max_samples=500,
        budget_s=20.0,
        # CPU: no flush; evicting the interpreter's own code and data would make the floor the
        # cost of a cold cache, not of a call.
        l2="none"
        if torch.device(device).type == "cpu"
        else (policy.l2 if policy.l2 != "rotate" else "flush"),
        gpu_delay=policy.gpu_delay,
        max_delay_s=policy.max_delay_s,
        delay_margin=policy.delay_margin,
        lead_s=policy.lead_s,
    )
    m = Timer(device, p).measure(lambda i: x.add_(1.0))
    out = m.to_dict(keep_samples=False)
    out["what"] = "one trivial kernel (x.add_(1), one element)"
    return out
