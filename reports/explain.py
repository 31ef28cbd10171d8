"""The report's "how to read this" texts: one short paragraph per section and table, worded from
the run's own settings (device, cache policy), shared by the markdown and the HTML page."""

from __future__ import annotations

from typing import Any

from .tables import NOISY_NOTE

_CACHE = {
    "flush": "the last-level cache flushed before each call (inputs come from memory, as in a "
    "decoding step where the model ran in between)",
    "rotate": "the inputs rotated among copies larger than the last-level cache (inputs come "
    "from memory)",
    "none": "caches left warm between calls",
}


def _device_type(doc: dict[str, Any]) -> str:
    return (doc.get("device") or {}).get("type") or "cpu"


def _cache(doc: dict[str, Any]) -> str:
    return (doc.get("config") or {}).get("policy", {}).get("l2") or "flush"


def median_heading(doc: dict[str, Any]) -> str:
    """The heading of the latency table: the statistic and the cache state it ran under."""
    cache = {"flush": "cold cache", "rotate": "cold cache", "none": "warm cache"}[_cache(doc)]
    clock = "device time" if _device_type(doc) == "cuda" else "wall-clock"
    return f"Median latency ({clock}, {cache}): the benchmark's statistic"


WALL_HEADING = "Eager wall-clock latency (host + device, synchronized, warm cache)"


def headline(doc: dict[str, Any], has_third_party: bool) -> str:
    text = (
        "The headline shapes (each mode at the grid's largest vocabulary and K, every batch "
        "size) and each backend's speedup over torch-loop, the naive PyTorch loop: t_loop / t "
        "from the median latencies, so 10x means ten times faster than the loop; bars right of "
        "the 1x line are faster."
    )
    if has_third_party:
        text += (
            " The second panel divides the fastest peer's time by each backend's: above 1x the "
            "backend beats every installed peer on that shape. Peers are the backends that wrap "
            "another library (FlashInfer, vLLM, SGLang: docs/peers.md), marked '(peer)'; with "
            "none installed, the plugins not shipped with specsample."
        )
    return text + " Noisy cells are left out (a gap, marked)."


def summary(doc: dict[str, Any]) -> str:
    return (
        "One row per backend over the whole grid. cells: measured; n/c: not claimed (the "
        "backend does not declare that mode, dtype, device or size, so it was not run); capped: "
        "stopped by its time budget before the minimum sample count ('*' in the tables); fastest "
        "in: the workloads where this backend has the lowest median; the geomeans summarise "
        "the per-workload ratios below. " + NOISY_NOTE
    )


def conformance(level: str | None) -> str:
    return (
        f"Level {level}. One row per check, one column per backend. pass: the backend meets the "
        "contract on that check; FAIL: it does not (the details name the request, the expected "
        "and the observed value); n/c: not claimed, the backend's Capabilities do not declare the "
        "feature the check needs, so the check does not apply; ERROR: the check itself could not "
        "run (an exception outside the verdict); unavailable: the backend cannot run here."
    )


def median(doc: dict[str, Any]) -> str:
    dev = _device_type(doc)
    clock = (
        "device time between CUDA events recorded around each call (a spin kernel queued before "
        "the start event hides the host's launch overhead)"
        if dev == "cuda"
        else "time.perf_counter around each call, which ends when the result is ready"
    )
    return (
        f"Median over the timed calls (±half the inter-quartile range) of {clock}, with "
        f"{_CACHE[_cache(doc)]}; warm-up calls, which may compile, are excluded. Every ratio and "
        "plot below is computed from this number."
    )


def wall(doc: dict[str, Any]) -> str:
    dev = _device_type(doc)
    other = (
        "on a GPU it is higher than the median latency, which counts device time only"
        if dev == "cuda"
        else "on a CPU it can be lower than the median latency, whose calls start with a cold cache"
    )
    return (
        "Median of the warm-up calls (the first call, which may compile, excluded; at least two "
        "calls and 20 ms of them): time.perf_counter around the call and a device synchronize, "
        "with no cache flush in between. It is what an eager caller waits for, host overhead "
        f"included, with warm caches: {other}. Compare backends within one table, not across "
        "the two."
    )


def speedup() -> str:
    return (
        "t_loop / t per workload, from the median latencies: above 1x the backend is faster "
        "than torch-loop (the naive loop over B and K) by that factor."
    )


def vs_fastest() -> str:
    return (
        "t / t_fastest_other per workload: below 1x this backend is the fastest of all, by that "
        "margin; 1.5x means it takes 1.5 times as long as the best other backend."
    )


def floor() -> str:
    return (
        "median / floor, where floor = max(one trivial kernel launch, must-read bytes / copy "
        "bandwidth), both measured in this run: 1x would be as fast as the machine allows; a "
        "one-launch kernel at small sizes sits near the launch floor."
    )


def bandwidth() -> str:
    return (
        "The bytes a verify call must read (docs/benchmarks.md) divided by its median, as a "
        "share of this run's copy bandwidth: near 100% the call is memory-bound and done."
    )


def launches() -> str:
    return (
        "Kernels launched and host synchronizations per call, counted by the profiler on one "
        "call: every launch costs a few microseconds, every sync stalls the host."
    )


def kernel_only() -> str:
    return (
        "The documented default call (every column above) against the backend's launch path "
        "alone (Backend._verify on inputs validated once, outside the timed loop), same timer: "
        "default / kernel-only, then the default call's median. Values are checked inside the "
        "kernel, so the default call costs only its host-side checks, which the timer hides "
        "behind the GPU; the eager wall-clock shows them. Fused backends only."
    )


def graph() -> str:
    return (
        "Median replay time of the call captured in a CUDA graph (backends that claim graph "
        "support): the launch overhead removed."
    )


def length() -> str:
    return (
        "Tokens emitted per request on average (accepted drafts + 1), measured on the warm-up "
        "calls, with the workload's expected value in brackets: they agree when the workload "
        "reached the requested acceptance regime."
    )


def plots_note() -> str:
    return (
        "Plots: latency on log axes, IQR shaded, one colour per backend and one line style per "
        "acceptance regime; heatmaps give the value in each cell, the colour bar its scale. An "
        "axis with one value in the grid gets no plot."
    )


CPU_NOTE = (
    "Why the Python loop can win on a CPU: at small sizes a verify call is launch-bound, not "
    "arithmetic-bound. Each PyTorch op costs a few microseconds of dispatch on the host whatever "
    "its size; the vectorized backends run some forty ops per call, each a full pass over "
    "[B, K(+1), V] tensors, while the loop reads only the few probabilities it needs (K draft "
    "and target values, then one row) with a handful of small ops per request. On a GPU the "
    "ops run in parallel on the device and the fused kernels do it in one launch; on a CPU "
    "there is no device to hide the per-op cost, so the loop stays ahead until B x K grows."
)
