"""Progress of a conformance run on stderr: a tqdm bar per run (one step per check and backend),
the check running now, elapsed time and an estimate of the time left, and a line before a
backend's first check when that check may compile for a while. Where no bar fits (a log file),
one line per backend as it starts and ends.

The bar is the benchmark's (``specsample bench``): tqdm on stderr, ``dynamic_ncols``. A ticker
thread refreshes it every second, so a single long check (a CUDA build, the Triton interpreter)
still shows the clock moving.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, TextIO

# Shown once, before a backend's first check: why that check may take long.
FIRST_USE_NOTES = {
    "cuda-cpp": "building the cuda-cpp extension if it is not cached (first use, about a minute)",
    "cupy": "compiling the cupy kernel with NVRTC (first use, a few seconds)",
    "torch-compile": "torch.compile compiles each new shape (a few seconds each on first use)",
    "triton": "compiling the Triton kernel (first use, a few seconds)",
}
TRITON_INTERPRETER_NOTE = (
    "triton runs under its CPU interpreter (TRITON_INTERPRET=1): minutes, not seconds"
)


def first_use_note(backend: str) -> str | None:
    """The line to show before ``backend``'s first check, or None."""
    if backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        return TRITON_INTERPRETER_NOTE
    return FIRST_USE_NOTES.get(backend)


def _item_labels(item: Any) -> tuple[str | None, str]:
    params = getattr(getattr(item, "callspec", None), "params", {})
    backend = params.get("specsample_backend")
    check = params.get("specsample_check") or item.name.split("[", 1)[0]
    return (str(backend) if backend is not None else None), str(check)


class ConformanceProgress:
    """A pytest plugin: pass it to ``pytest.main(plugins=[...])``; it draws the bar while the
    session runs and closes it at the end.

    Args:
        file: where the progress goes (default ``sys.stderr``).
        tick_s: how often the ticker refreshes the bar; 0 disables the ticker.
        bar: False: no bar, one line per backend as it starts (with its first-use note) and ends.
    """

    def __init__(self, file: TextIO | None = None, tick_s: float = 1.0, bar: bool = True) -> None:
        self.file = file
        self.tick_s = tick_s if bar else 0.0
        self.use_bar = bar
        self.current: tuple[str, float, int] | None = None  # backend, start, checks done
        self.bar: Any = None
        self.noted: set[str] = set()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._lock = threading.Lock()

    def pytest_collection_finish(self, session: Any) -> None:
        from tqdm.auto import tqdm

        self.total = len(session.items)
        self.done = 0
        self.bar = tqdm(
            total=self.total,
            unit="check",
            desc="specsample conform",
            dynamic_ncols=True,
            file=self.file if self.file is not None else sys.stderr,
            disable=not self.use_bar,
        )
        if self.tick_s > 0:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.tick_s):
            with self._lock:
                if self.bar is not None:
                    self.bar.refresh()

    def pytest_runtest_protocol(self, item: Any, nextitem: Any) -> None:
        if self.bar is None:
            return
        backend, check = _item_labels(item)
        with self._lock:
            if backend is not None and backend not in self.noted:
                self.noted.add(backend)
                self._backend_done()
                note = first_use_note(backend)
                if self.use_bar:
                    if note:
                        self.bar.write(f"{backend}: {note}", file=self.bar.fp)
                else:
                    self._line(f"conformance {backend}: started{' (' + note + ')' if note else ''}")
                    self.current = (backend, time.perf_counter(), 0)
            self.bar.set_postfix_str(f"{backend} {check}" if backend else check, refresh=True)

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        if self.bar is not None:
            with self._lock:
                self.bar.update(1)
                self.done += 1
                if self.current is not None:
                    name, t0, done = self.current
                    self.current = (name, t0, done + 1)

    def pytest_sessionfinish(self, session: Any) -> None:
        with self._lock:
            self._backend_done()
        self.close()

    def _line(self, text: str) -> None:
        out = self.file if self.file is not None else sys.stderr
        print(text, file=out, flush=True)

    def _backend_done(self) -> None:
        if self.current is not None:
            name, t0, done = self.current
            self._line(
                f"conformance {name}: {done} checks in {time.perf_counter() - t0:.0f} s "
                f"({self.done}/{self.total} in all)"
            )
            self.current = None

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
            self._ticker = None
        with self._lock:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
