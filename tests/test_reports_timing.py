"""The GPU timing loop's spin logic, with the CUDA calls replaced by recorders (runs on a CPU)."""

from __future__ import annotations

import pytest
import torch
from specsample.reports import timing
from specsample.reports.timing import SpinPlan, Timer, TimingPolicy, plan_spin


class FakeClock:
    """The timer's ``time`` module: a clock that moves only when a fake CUDA operation says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1e-9  # the loop's own bookkeeping: next to nothing
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeCuda:
    """Stands in for CUDA events, the spin kernel and synchronize; logs every operation."""

    def __init__(self, monkeypatch, record_s: float = 0.0, elapsed_ms: float = 0.01):
        self.log: list[tuple] = []
        self.record_s = record_s
        self.clock = FakeClock()
        monkeypatch.setattr(timing, "time", self.clock)
        fake = self

        class Event:
            count = 0

            def __init__(self, enable_timing: bool = False):
                Event.count += 1
                self.id = Event.count

            def record(self):
                fake.clock.advance(fake.record_s)
                fake.log.append(("record", self.id))

            def synchronize(self):
                fake.log.append(("wait", self.id))

            def elapsed_time(self, other):
                return elapsed_ms

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: fake.log.append(("spin", cycles)))
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: fake.log.append(("sync",)))

    def call(self, seconds: float = 0.0):
        def run(i):
            self.clock.advance(seconds)
            self.log.append(("call", i))

        return run


def _policy(**kw) -> TimingPolicy:
    base = dict(
        warmup_calls=3,
        warmup_s=0.0,
        target_s=0.0,
        min_samples=40,
        max_samples=40,
        budget_s=None,
        l2="none",
        max_delay_s=1.0,
    )
    base.update(kw)
    return TimingPolicy(**base)


def test_plan_spin_scales_the_whole_iteration_and_caps():
    p = TimingPolicy(delay_margin=2.0, max_delay_s=1e-3, lead_s=3e-4)
    plan = plan_spin(100e-6, p)
    assert plan.per_call_s == pytest.approx(2.0 * 100e-6 + 5e-6)
    assert plan.lead_s == 3e-4
    assert plan.per_call_cycles == int(plan.per_call_s * 2.0e9)
    assert plan_spin(0.1, p).per_call_s == 1e-3  # capped at max_delay_s
    assert plan_spin(100e-6, TimingPolicy(gpu_delay=False)) == SpinPlan(0.0, 0.0)
    with pytest.raises(ValueError, match="iteration_enqueue_s"):
        plan_spin(float("nan"), p)


def test_policy_rejects_a_spin_that_cannot_outpace_the_host():
    with pytest.raises(ValueError, match="delay_margin"):
        TimingPolicy(delay_margin=0.9)
    with pytest.raises(ValueError, match="lead_s"):
        TimingPolicy(lead_s=-1.0)


def test_spin_is_sized_from_the_whole_iteration_not_the_call(monkeypatch):
    # Each event record costs the host 0.3 ms, as much as the call itself: an iteration (spin,
    # start event, call, end event) takes at least 0.9 ms to enqueue.
    cuda = FakeCuda(monkeypatch, record_s=3e-4)
    m = Timer("cuda", _policy(delay_margin=1.5)).measure(cuda.call(3e-4))
    host_call, host_iter = m.extra["host_enqueue_s"], m.extra["host_iteration_s"]
    assert host_call == pytest.approx(3e-4, rel=1e-3)
    assert host_iter == pytest.approx(9e-4, rel=1e-3)  # spin (free here), two records, the call
    assert m.extra["gpu_delay_s"] == pytest.approx(1.5 * host_iter + 5e-6)
    per_call = int(m.extra["gpu_delay_s"] * 2.0e9)
    spins = [op[1] for op in cuda.log if op[0] == "spin"]
    assert spins.count(per_call) == len(m.samples) == 40
    # Every timed iteration's enqueue time is recorded; the longest is at least one iteration.
    assert m.extra["host_iteration_max_s"] == pytest.approx(9e-4, rel=1e-3)


def test_timed_loop_keeps_the_device_ahead(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    policy = _policy(lead_s=5e-4, min_samples=64, max_samples=64)
    m = Timer("cuda", policy).measure(cuda.call())
    lead = int(5e-4 * 2.0e9)
    assert m.extra["gpu_lead_s"] == 5e-4
    log = cuda.log
    first = log.index(("spin", lead))  # after warm-up, one lead spin before the first timed call
    # Every timed event is created (recorded once) before the lead, outside the timed iterations.
    assert all(op[0] == "record" for op in log[first - 128 : first])
    created = {op[1] for op in log[first - 128 : first]}
    timed = log[first + 1 :]
    assert {op[1] for op in timed if op[0] == "record"} == created
    per_call = int(m.extra["gpu_delay_s"] * 2.0e9)
    # Each iteration: spin, start event, call, end event.
    iters = [op for op in timed if op[0] in ("spin", "record", "call")]
    assert len(iters) == 4 * 64
    for j in range(64):
        spin, start, call, end = iters[4 * j : 4 * j + 4]
        assert spin == ("spin", per_call) and start[0] == "record" and call == ("call", 0)
        assert end[0] == "record"
    # The loop never drains the device: no full synchronize until the loop is over, and every
    # wait is on an end event at least 16 calls behind the last one enqueued.
    assert [op for op in timed if op[0] == "sync"] == [("sync",)] and timed[-1] == ("sync",)
    enqueued_ends = 0
    for op in timed:
        if op[0] == "call":
            enqueued_ends += 1
        if op[0] == "wait":
            ends = [o[1] for o in timed if o[0] == "record"][1::2]
            waited = ends.index(op[1]) + 1  # which call's end event
            assert enqueued_ends - waited >= 16
    assert sum(op[0] == "wait" for op in timed) == 3  # after calls 32, 48 and 64


def test_no_gpu_delay_enqueues_no_spin(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    m = Timer("cuda", _policy(gpu_delay=False)).measure(cuda.call())
    assert not any(op[0] == "spin" for op in cuda.log)
    assert m.extra["gpu_delay_s"] == 0.0 and m.extra["gpu_lead_s"] == 0.0
    assert len(m.samples) == 40 and all(s == pytest.approx(1e-5) for s in m.samples)


def test_missing_spin_kernel_is_a_clear_error(monkeypatch):
    FakeCuda(monkeypatch)
    monkeypatch.delattr(torch.cuda, "_sleep")
    with pytest.raises(RuntimeError, match="--no-gpu-delay"):
        Timer("cuda", _policy()).measure(lambda i: None)


def test_default_cap_leaves_eager_backends_their_whole_spin():
    # Eager multi-kernel calls take milliseconds to enqueue on a GPU host; a spin capped below
    # delay_margin x that lets the device wait for the host inside the timed region.
    policy = TimingPolicy()
    for enqueue in (0.8e-3, 3.2e-3, 20e-3):
        assert plan_spin(enqueue, policy).per_call_s == pytest.approx(
            policy.delay_margin * enqueue + 5e-6
        )


def test_interleaved_calls_alternate_in_one_loop(monkeypatch):
    cuda = FakeCuda(monkeypatch)

    def named(tag: str, seconds: float):
        def run(i):
            cuda.clock.advance(seconds)
            cuda.log.append(("call", tag))

        return run

    policy = _policy(min_samples=32, max_samples=32)
    slow, fast = named("default", 4e-4), named("kernel", 1e-4)
    m_slow, m_fast = Timer("cuda", policy).measure_interleaved([slow, fast])
    assert len(m_slow.samples) == len(m_fast.samples) == 32
    assert m_slow.extra["interleaved_with"] == m_fast.extra["interleaved_with"] == 1
    # Both get the same spin, sized for the slower call's iteration.
    assert m_slow.extra["gpu_delay_s"] == m_fast.extra["gpu_delay_s"]
    assert m_slow.extra["gpu_delay_s"] >= 1.5 * 4e-4
    # After the warm-ups (each function on its own), rounds alternate the order: AB, BA, AB, ...
    lead = cuda.log.index(("spin", int(policy.lead_s * 2.0e9)))
    timed = [op[1] for op in cuda.log[lead:] if op[0] == "call"]
    assert len(timed) == 64
    for r in range(32):
        pair = timed[2 * r : 2 * r + 2]
        assert pair == (["default", "kernel"] if r % 2 == 0 else ["kernel", "default"])
    # Waits stay at least 16 calls behind the newest one enqueued, as with one call.
    ends = [op[1] for op in cuda.log[lead:] if op[0] == "record"][1::2]
    enqueued = 0
    for op in cuda.log[lead:]:
        if op[0] == "call":
            enqueued += 1
        elif op[0] == "wait":
            assert enqueued - (ends.index(op[1]) + 1) >= 16


def test_interleaved_on_the_cpu_gives_each_call_its_samples():
    seen: list[str] = []
    policy = _policy(min_samples=12, max_samples=12)
    a, b = Timer("cpu", policy).measure_interleaved(
        [lambda i: seen.append("a"), lambda i: seen.append("b")]
    )
    assert len(a.samples) == len(b.samples) == 12
    assert seen[-24:] == ["a", "b", "b", "a"] * 6
    with pytest.raises(ValueError, match="calls"):
        Timer("cpu", policy).measure_interleaved([])
