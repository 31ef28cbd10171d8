"""Extra memory of one call of the PyTorch backends, and a check that it fits before allocating.

The vectorized algorithm (``torch-vectorized``, ``torch-compile``) needs a few ``[B, V]`` float32
temporaries in random mode (the row the last token is drawn from, the draft row, ``q - p``, the
residual, the CDF and an int64 position index) and only ``[B, K+1]``-sized ones in greedy mode; block verification (``rule="block"``,
random mode) needs float64 copies of draft rows ``1..K-1`` for the residual masses and a float64
final row instead: see docs/memory.md for the formulas and the measurements behind them. Inputs
that are not contiguous are copied first (the size of that input again).

:func:`check_fits` raises :class:`NotEnoughMemory` on CUDA when the free device memory (the driver's
free memory plus what torch's caching allocator holds unused) is smaller than what a call needs. On
other devices, and while a CUDA graph is being captured, it does nothing.
"""

from __future__ import annotations

from typing import Any

import torch

#: bytes per (request, vocabulary entry) of the random-mode ``[B, V]`` temporaries at the peak
#: (measured 24 for float32 inputs, 26 for half precision; the bound leaves room for either)
RANDOM_BYTES_PER_ROW_ENTRY = 28
#: bytes per (request, draft position) of the small ``[B, K+1]`` temporaries (ids, decisions, u, p, q)
BYTES_PER_DRAFT = 64
#: ``rule="block"``: bytes per (request, vocabulary entry) of the float64 final row, its residual
#: and its inverse CDF (measured 40 for float32 inputs, 42 for half precision)
BLOCK_BYTES_PER_ROW_ENTRY = 48
#: ``rule="block"``: bytes per (request, draft row 1..K-1, vocabulary entry) of the residual masses
#: (float64 ``q``, ``p``, ``w q - p`` and its clamp: measured 32 for every input dtype)
BLOCK_BYTES_PER_DRAFT_ROW_ENTRY = 32


class NotEnoughMemory(MemoryError):
    """A call's temporaries would not fit in the device's free memory (raised before allocating)."""


def vectorized_extra_bytes(
    batch_size: int,
    num_draft: int,
    vocab_size: int,
    mode: str,
    *,
    element_size: int = 4,
    copied_input_bytes: int = 0,
    rule: str = "token",
) -> int:
    """Upper bound of the extra bytes one vectorized call allocates (docs/memory.md).

    Args:
        batch_size, num_draft, vocab_size: B, K, V.
        mode: ``"random"`` or ``"greedy"``.
        element_size: bytes per probability of the inputs (4 float32, 2 half precision); a half
            precision row is gathered in its dtype before it is widened, which the per-entry bound
            already covers.
        copied_input_bytes: bytes of the inputs that are not contiguous (copied first).
        rule: ``"token"`` or ``"block"`` (``verify(rule=)``); block verification in random mode
            with ``K >= 1`` has its own row temporaries, greedy mode and ``K = 0`` run the token
            rule's algorithm.

    Returns:
        ``28·B·V + 64·B·(K+1) + copied_input_bytes`` in random mode, ``64·B·(K+1) +
        copied_input_bytes`` in greedy mode; under ``rule="block"`` in random mode with
        ``K >= 1``, ``32·B·(K-1)·V + 48·B·V + 64·B·(K+1) + copied_input_bytes``.
    """
    if mode not in ("random", "greedy"):
        raise ValueError(f"mode must be 'random' or 'greedy', got {mode!r}")
    if element_size not in (2, 4):
        raise ValueError(f"element_size must be 2 or 4 bytes, got {element_size}")
    if rule not in ("token", "block"):
        raise ValueError(f"rule must be 'token' or 'block', got {rule!r}")
    B, K, V = batch_size, num_draft, vocab_size
    small = BYTES_PER_DRAFT * B * (K + 1)
    if mode == "greedy":
        rows = 0
    elif rule == "block" and K >= 1:
        rows = BLOCK_BYTES_PER_ROW_ENTRY * B * V + BLOCK_BYTES_PER_DRAFT_ROW_ENTRY * B * (K - 1) * V
    else:
        rows = RANDOM_BYTES_PER_ROW_ENTRY * B * V
    return rows + small + copied_input_bytes


def available_bytes(device: torch.device) -> int | None:
    """Bytes a new allocation can get on ``device``: the driver's free memory plus what torch's
    caching allocator reserved but does not use; None where that cannot be told (not CUDA)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free) + max(0, int(cached))


def check_fits(device: torch.device, needed: int, what: str) -> None:
    """Raise :class:`NotEnoughMemory` before allocating when ``needed`` bytes do not fit.

    Args:
        device: where the call runs; nothing is checked off CUDA or under CUDA graph capture.
        needed: bytes the call will allocate (e.g. :func:`vectorized_extra_bytes`).
        what: the call, for the message (e.g. ``"torch-vectorized random B=64, K=4, V=128256"``).
    """
    if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return
    free = available_bytes(device)
    if free is not None and needed > free:
        raise NotEnoughMemory(
            f"{what}: needs about {_size(needed)} of temporary memory on {device}, but only "
            f"{_size(free)} is free; use a smaller batch, or split the batch over several calls"
        )


#: below this many bytes of temporaries a call is not checked (the free-memory query costs host time
#: on every call, and a call this small fails only when the device is already out of memory)
CHECK_ABOVE_BYTES = 256 * 2**20


def check_vectorized_call(inputs: Any, name: str) -> None:
    """:func:`check_fits` for one call of the vectorized algorithm (torch-vectorized and
    torch-compile; ``inputs`` a :class:`~specsample.contract.VerifyInputs`, its ``rule`` included),
    skipped off CUDA and for calls needing less than :data:`CHECK_ABOVE_BYTES`."""
    if inputs.device.type != "cuda":
        return
    B, K, V = inputs.batch_size, inputs.num_draft, inputs.vocab_size
    rule = inputs.rule
    needed = vectorized_extra_bytes(
        B, K, V, inputs.mode, element_size=inputs.target_probs.element_size(), rule=rule
    )
    if needed >= CHECK_ABOVE_BYTES:
        what = f"{name} {inputs.mode}" + (" rule=block" if rule == "block" else "")
        check_fits(inputs.device, needed, f"{what} B={B}, K={K}, V={V}")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"
