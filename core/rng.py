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
    use :func:`device_seed` there instead.
    """
    seed = generator.initial_seed()
    offset = generator.get_offset()
    generator.set_offset(offset + ((increment + 3) // 4) * 4)
    return seed, offset


def device_seed(generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """A fresh ``[2]`` int64 (seed, offset=0) tensor drawn on ``device`` by a graph-safe torch op.

    Under CUDA graph capture every replay draws new values, because torch registers the generator
    with the graph. Costs one small kernel launch, so backends use it only while capturing.
    """
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=device, dtype=torch.int64)
    return torch.cat([seed, torch.zeros_like(seed)])


def is_capturing(device: torch.device) -> bool:
    """True while the current CUDA stream of ``device`` is being captured into a graph."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()
