"""Randomness: the uniforms the PyTorch backends draw, and Philox seeds for in-kernel generators."""

from __future__ import annotations

import torch


def draw_uniforms(
    batch_size: int, num_draft: int, generator: torch.Generator | None, device: torch.device | str
) -> torch.Tensor:
    """Draw the ``[B, K+1]`` float32 uniforms in [0, 1) that the contract's rules consume.

    Column ``k < K`` decides draft ``k``; column ``K`` drives the final inverse-CDF draw, so the
    accept and resample draws never share a random number.
    """
    return torch.rand(
        (batch_size, num_draft + 1), generator=generator, device=device, dtype=torch.float32
    )


def philox_seed_offset(generator: torch.Generator, increment: int) -> tuple[int, int]:
    """Read a CUDA generator's Philox ``(seed, offset)`` and advance its offset by ``increment``.

    ``increment`` is rounded up to a multiple of 4, as torch's own kernels do (one Philox call yields
    four 32-bit numbers). For in-kernel generators launched from Python (Triton, CuPy) outside CUDA
    graph capture; under capture these values would be baked into the graph, so such backends must
    draw a device-resident seed there instead (a graph-safe ``torch.randint`` with the
    generator, which torch re-draws on every replay).
    """
    seed = generator.initial_seed()
    offset = generator.get_offset()
    generator.set_offset(offset + ((increment + 3) // 4) * 4)
    return seed, offset


def is_capturing(device: torch.device) -> bool:
    """True while the current CUDA stream of ``device`` is being captured into a graph."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()
