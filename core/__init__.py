"""specsample: interchangeable, verified, benchmarked rejection samplers for speculative decoding.

``import specsample`` is cheap: torch, the registry and the backends load on first use, and triton,
cupy or the CUDA extension only when a backend that needs them is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    import torch

    from .contract import Backend, BackendInfo, BackendUnavailable, Capabilities, VerifyOutput
    from .contract_tree import TreeVerifyOutput
    from .reference import reference_verify
    from .reference_tree import reference_verify_tree
    from .registry import UnknownBackend, get_backend, list_backends
    from .status import Status

__all__ = [
    "Backend",
    "BackendInfo",
    "BackendUnavailable",
    "Capabilities",
    "Status",
    "TreeVerifyOutput",
    "UnknownBackend",
    "VerifyOutput",
    "__version__",
    "get_backend",
    "list_backends",
    "reference_verify",
    "reference_verify_tree",
    "verify",
]

_LAZY = {
    "Backend": "contract",
    "BackendInfo": "contract",
    "BackendUnavailable": "contract",
    "Capabilities": "contract",
    "VerifyInputs": "contract",
    "VerifyOutput": "contract",
    "Status": "status",
    "UnknownBackend": "registry",
    "get_backend": "registry",
    "list_backends": "registry",
    "reference_verify": "reference",
    "reference_verify_tree": "reference_tree",
    "TreeVerifyInputs": "contract_tree",
    "TreeVerifyOutput": "contract_tree",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'specsample' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def verify(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    *,
    backend: str = "torch-vectorized",
    mode: str = "random",
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
    validate: str = "status",
    check_finite: bool | None = None,
) -> VerifyOutput:
    """Convenience for ``specsample.get_backend(backend).verify(...)``; see :meth:`Backend.verify`.

    Args:
        draft_token_ids: ``[B, K]`` int32/int64.
        draft_probs: ``[B, K, V]`` float32/float16/bfloat16, or None (deterministic drafter).
        target_probs: ``[B, K+1, V]``, same dtype.
        backend: a name from :func:`specsample.list_backends`.
        mode, generator, uniforms, validate, check_finite: as in :meth:`Backend.verify`.

    Returns:
        VerifyOutput: ``token_ids`` [B, K+1] int64 (-1 padded), ``num_emitted`` [B] int64,
        ``status`` [B] int32 (0 = ok; see :class:`specsample.Status`).
    """
    from .registry import get_backend
    from .validation import resolve_validate

    validate = resolve_validate(validate, check_finite, stacklevel=2)

    return get_backend(backend).verify(
        draft_token_ids,
        draft_probs,
        target_probs,
        mode=mode,
        generator=generator,
        uniforms=uniforms,
        validate=validate,
    )
