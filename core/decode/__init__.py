"""End-to-end speculative generation with any registered backend in the verify step.

- :func:`speculative_generate` / :func:`autoregressive_generate`: the loop and its baseline
  (:mod:`specsample.decode.loop`).
- :func:`demo_pair`: a target and a draft whose weights come from a seed, no download
  (:mod:`specsample.decode.demo`).
- :func:`run_e2e`: the measurement behind ``specsample e2e`` (:mod:`specsample.decode.e2e`).

See docs/e2e.md.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "GenerationResult",
    "TinyLM",
    "TinyLMConfig",
    "amdahl_speedup",
    "autoregressive_generate",
    "demo_pair",
    "run_e2e",
    "speculative_generate",
]

_LAZY = {
    "GenerationResult": "loop",
    "autoregressive_generate": "loop",
    "speculative_generate": "loop",
    "TinyLM": "model",
    "TinyLMConfig": "model",
    "demo_pair": "demo",
    "amdahl_speedup": "projection",
    "run_e2e": "e2e",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'specsample.decode' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
