"""Statistics, the timing loop, must-read bytes and the launch counter's CPU path."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from specsample.reports.runner import must_read_bytes
from specsample.reports.stats import geometric_mean, quantile, summarize
from specsample.reports.timing import Timer, TimingPolicy


def test_quantiles_match_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 10, 101):
        x = rng.exponential(size=n)
        s = sorted(x.tolist())
        for q in (0.0, 0.25, 0.5, 0.75, 1.0):
            assert quantile(s, q) == pytest.approx(float(np.quantile(x, q)))


def test_summarize():
    s = summarize([5, 1, 4, 2, 3])
    assert s["statistic"] == "median" and s["median"] == 3 and s["n"] == 5
    assert (s["q1"], s["q3"], s["iqr"]) == (2, 4, 2)
    assert s["mean"] == 3 and s["min"] == 1 and s["max"] == 5
    empty = summarize([])
    assert empty["n"] == 0 and math.isnan(empty["median"])


def test_geometric_mean():
    assert geometric_mean([2, 8]) == pytest.approx(4)
    assert geometric_mean([1, None, float("nan"), 4]) == pytest.approx(2)
    assert math.isnan(geometric_mean([]))


def test_policy_validation():
    with pytest.raises(ValueError, match="l2"):
        TimingPolicy(l2="sometimes")
    with pytest.raises(ValueError, match="min_samples"):
        TimingPolicy(min_samples=5, max_samples=2)


def test_timer_counts_warmup_and_samples():
    calls = []
    policy = TimingPolicy(
        warmup_calls=2,
        warmup_s=0.0,
        target_s=0.0,
        min_samples=7,
        max_samples=7,
        budget_s=None,
        l2="none",
    )
    m = Timer("cpu", policy).measure(lambda i: calls.append(i) or i)
    assert m.warmup_calls == 2 and len(m.samples) == 7 and len(calls) == 9
    assert m.method == "perf_counter" and not m.capped
    d = m.to_dict()
    assert d["statistic"] == "median" and len(d["samples"]) == 7 and d["unit"] == "s"
    assert "samples" not in m.to_dict(keep_samples=False)


def test_timer_budget_caps_slow_calls():
    policy = TimingPolicy(
        warmup_calls=1,
        warmup_s=0.0,
        target_s=1.0,
        min_samples=50,
        max_samples=100,
        budget_s=0.05,
        l2="flush",
    )
    m = Timer("cpu", policy).measure(lambda i: time.sleep(0.01))
    assert m.capped and 1 <= len(m.samples) < 50
    assert all(s >= 0.009 for s in m.samples)


def test_timer_rotates_inputs_and_sees_warmup_outputs():
    seen, outs = [], []
    policy = TimingPolicy(
        warmup_calls=3,
        warmup_s=0.0,
        target_s=0.0,
        min_samples=6,
        max_samples=6,
        budget_s=None,
        l2="rotate",
    )
    Timer("cpu", policy).measure(
        lambda i: seen.append(i) or i * 10, n_inputs=3, on_warmup_output=outs.append
    )
    assert outs == [0, 10, 20] and set(seen) == {0, 1, 2}


def test_must_read_bytes_formula():
    # random, float32: K ids (8 B) + K p and K q values + one q row + p row for rejected requests
    b = must_read_bytes("random", 2, 4, 1000, "float32", mean_length=3.0, reject_fraction=0.5)
    assert b == 2 * (4 * 8 + 2 * 4 * 4 + 1000 * 4 + 0.5 * 1000 * 4)
    # greedy, bf16: K ids + mean_length full target rows
    g = must_read_bytes("greedy", 3, 4, 1000, "bfloat16", mean_length=2.0, reject_fraction=1.0)
    assert g == 3 * (4 * 8 + 2.0 * 1000 * 2)
    with pytest.raises(ValueError):
        must_read_bytes("beam", 1, 1, 1, "float32", 1.0, 0.0)


def test_launch_counter_is_gpu_only():
    from specsample.reports.launches import count_launches

    assert count_launches(lambda: None, "cpu") is None
