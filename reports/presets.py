"""Named benchmark grids: ``tiny`` (tests), ``quick`` (a CPU laptop, minutes) and ``standard`` (GPU)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .timing import TimingPolicy


@dataclass(frozen=True)
class Preset:
    """A grid plus a timing policy."""

    name: str
    description: str
    batch: tuple[int, ...]
    k: tuple[int, ...]
    vocab: tuple[int, ...]
    dtype: tuple[str, ...] = ("float32",)
    mode: tuple[str, ...] = ("random", "greedy")
    accept: tuple[str, ...] = ("high", "low")
    policy: TimingPolicy = field(default_factory=TimingPolicy)

    def grid(self) -> dict[str, Any]:
        return {
            "batch": list(self.batch),
            "k": list(self.k),
            "vocab": list(self.vocab),
            "dtype": list(self.dtype),
            "mode": list(self.mode),
            "accept": list(self.accept),
        }


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        description="a few seconds; for tests",
        batch=(1, 3),
        k=(2,),
        vocab=(64,),
        policy=TimingPolicy(
            warmup_calls=1,
            warmup_s=0.0,
            target_s=0.005,
            min_samples=3,
            max_samples=10,
            budget_s=1.0,
            l2="none",
        ),
    ),
    "quick": Preset(
        name="quick",
        description="a CPU in a few minutes",
        batch=(1, 16),
        k=(4,),
        vocab=(4096, 32000),
        policy=TimingPolicy(
            warmup_calls=2,
            warmup_s=0.01,
            target_s=0.1,
            min_samples=5,
            max_samples=100,
            budget_s=2.0,
            l2="flush",
        ),
    ),
    "standard": Preset(
        name="standard",
        description="the GPU grid of the cuda-cpp issue (B x K x V, high and low acceptance)",
        batch=(1, 8, 64, 256),
        k=(4, 8),
        vocab=(32000, 128256),
        policy=TimingPolicy(
            warmup_calls=3,
            warmup_s=0.02,
            target_s=0.1,
            min_samples=10,
            max_samples=200,
            budget_s=1.5,
            l2="flush",
        ),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; the error lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def preset_for_machine() -> str:
    """``"standard"`` when a CUDA device is present, else ``"quick"``."""
    import torch

    return "standard" if torch.cuda.is_available() else "quick"
