"""Philox4x32-10 in PyTorch tensor ops: the per-request random stream of seeded serving calls.

The stream is the one the fused CUDA kernels already draw (``backends/_cuda_build.py``,
:func:`philox_uniform`): number ``n`` of a stream keyed by a 64-bit ``seed`` is word ``n % 4`` of
``Philox4x32-10(counter=(n // 4 as two 32-bit words, subsequence as two words), key=seed as two
words)``, turned into a float32 in ``[0, 1)`` as ``(word >> 8) * 2**-24``. A seeded serving call
uses subsequence 0 and ``n = offsets[b] + i`` for coin ``i`` of request ``b``, so a request's coins
depend on its own seed, offset and position only, never on the rest of the batch.

Everything here is elementwise int64 arithmetic (32-bit products are split in 16-bit halves so that
nothing overflows a signed 64-bit integer): no host sync, any device, capturable.
"""

from __future__ import annotations

import torch

_M0, _M1, _W0, _W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
_MASK = 0xFFFFFFFF


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, lo)`` 32-bit words of the 64-bit product of the constant ``a`` and ``b`` (int64
    tensor holding values in ``[0, 2**32)``)."""
    t_lo = (a & 0xFFFF) * b  # < 2**48
    t_hi = (a >> 16) * b  # < 2**48
    hi = (t_hi + (t_lo >> 16)) >> 16
    lo = (((t_hi & 0xFFFF) << 16) + t_lo) & _MASK
    return hi, lo


def philox4x32_10(
    c0: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    c3: torch.Tensor,
    k0: torch.Tensor,
    k1: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32 with 10 rounds on int64 tensors holding 32-bit words (broadcastable shapes)."""
    for _ in range(10):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
        k0 = (k0 + _W0) & _MASK
        k1 = (k1 + _W1) & _MASK
    return c0, c1, c2, c3


def philox_stream_uniforms(
    seeds: torch.Tensor, offsets: torch.Tensor, num_coins: int, subsequence: int = 0
) -> torch.Tensor:
    """The first ``num_coins`` uniforms of each request's stream, ``[B, num_coins]`` float32.

    Args:
        seeds: ``[B]`` int64, the 64-bit Philox key of each request (negative values are read as
            their two's-complement bits).
        offsets: ``[B]`` int64 ``>= 0``, where each request's stream starts.
        num_coins: the number of uniforms per request (the serving call draws ``K + 1``).
        subsequence: Philox subsequence (serving calls use 0).

    Returns:
        ``[B, num_coins]`` float32 in ``[0, 1)`` on the inputs' device; entry ``[b, i]`` equals
        ``philox_uniform(seeds[b], offsets[b], subsequence, i)`` of the CUDA kernels.
    """
    device = seeds.device
    seeds = seeds.to(torch.int64)
    n = offsets.to(torch.int64).unsqueeze(1) + torch.arange(num_coins, device=device)  # [B, N]
    ctr = n >> 2
    zeros = torch.zeros_like(ctr)
    words = philox4x32_10(
        ctr & _MASK,
        (ctr >> 32) & _MASK,
        zeros + (subsequence & _MASK),
        zeros + ((subsequence >> 32) & _MASK),
        (seeds & _MASK).unsqueeze(1),
        ((seeds >> 32) & _MASK).unsqueeze(1),
    )
    lane = n & 3
    word = torch.where(
        lane == 0,
        words[0],
        torch.where(lane == 1, words[1], torch.where(lane == 2, words[2], words[3])),
    )
    return (word >> 8).to(torch.float32) * (1.0 / 16777216.0)
