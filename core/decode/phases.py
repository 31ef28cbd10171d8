"""Time per phase of a decoding step: CUDA events on a GPU, ``time.perf_counter`` on the CPU.

A step is split by marks: ``timer.start()`` then ``timer.mark("draft")``, ``timer.mark("target")``,
... each mark closing the phase that began at the previous mark. On a GPU a mark records an event
on the current stream and nothing synchronizes until :meth:`PhaseTimer.totals`: a phase's time is
the GPU-timeline distance between its two events, so the work a phase enqueues is charged to it
even when the host runs ahead, and the time the GPU waits for the host to launch a phase's kernels
is charged to that phase too (a sampler that launches many small kernels is not under-counted).
The phases of a step add up to the step's wall time.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch


class PhaseTimer:
    """Accumulate time per named phase on ``device`` (``None`` disables timing)."""

    def __init__(self, device: torch.device | str | None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.cuda = self.device is not None and self.device.type == "cuda"
        self._cpu: dict[str, float] = defaultdict(float)
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._last: torch.cuda.Event | float | None = None
        self._order: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.device is not None

    def _now(self) -> torch.cuda.Event | float:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        """Open the first phase of a step."""
        if self.enabled:
            self._last = self._now()

    def mark(self, phase: str) -> None:
        """Close ``phase`` (begun at the previous mark) and open the next one."""
        if not self.enabled:
            return
        if self._last is None:
            raise RuntimeError("PhaseTimer.mark() before start()")
        now = self._now()
        if phase not in self._order:
            self._order.append(phase)
        if self.cuda:
            self._events.append((phase, self._last, now))  # type: ignore[arg-type]
        else:
            self._cpu[phase] += now - self._last  # type: ignore[operator]
        self._last = now

    def totals(self) -> dict[str, float]:
        """Seconds per phase, in the order phases first appeared (synchronizes on a GPU)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            for phase, begin, end in self._events:
                self._cpu[phase] += begin.elapsed_time(end) / 1e3
            self._events.clear()
        return {phase: self._cpu[phase] for phase in self._order}
