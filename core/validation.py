"""Input validation, written once and shared by every backend.

Structural checks (types, shapes, dtypes, devices, mode, capabilities) run on the host and cost
nothing on the device: they always run. Value checks (ids in range, probabilities finite and
non-negative, uniforms in [0, 1)) are the backends' job by default (``validate="status"``: each
backend guards what it reads and flags bad requests in ``VerifyOutput.status``);
``validate="full"`` runs them here, eagerly, in one reduction pass per tensor and one host sync.
"""

from __future__ import annotations

import warnings

import torch

from .contract import MODES, RULES, Capabilities, VerifyInputs, VerifyOutput

VALIDATE_LEVELS = ("status", "full")

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_ID_DTYPES = (torch.int32, torch.int64)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _require_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {value.layout}")
    if value.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (no data); pass a tensor on the CPU or a GPU")
    return value


def resolve_validate(validate: str, check_finite: bool | None, *, stacklevel: int = 2) -> str:
    """The validation level from ``validate=`` and the deprecated ``check_finite=``.

    ``stacklevel`` 2 points the warning at the caller of the function that calls this one.

    ``check_finite=True`` means ``"full"`` and ``False`` means ``"status"``; passing it warns.
    """
    if check_finite is not None:
        warnings.warn(
            "check_finite= is deprecated and will be removed in the next minor version: use "
            'validate="full" (eager value checks that raise) or the default validate="status" '
            "(per-request VerifyOutput.status)",
            DeprecationWarning,
            stacklevel=stacklevel + 1,
        )
        return "full" if check_finite else "status"
    if not isinstance(validate, str) or validate not in VALIDATE_LEVELS:
        raise ValueError(f"validate must be one of {VALIDATE_LEVELS}, got {validate!r}")
    return validate


def default_generator(device: torch.device) -> torch.Generator:
    """The default torch.Generator of ``device`` (CPU or a CUDA device index)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    if device.type == "cpu":
        return torch.default_generator
    raise ValueError(f"no default generator for device {device}; pass generator=")


def validate_inputs(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    *,
    mode: str = "random",
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
    validate: str = "status",
    capabilities: Capabilities | None = None,
    backend_name: str = "backend",
    rule: str = "token",
) -> VerifyInputs:
    """Check the arguments of ``verify`` and return them normalized (contiguous, generator resolved).

    Shapes: ``draft_token_ids`` [B, K] int32/int64; ``draft_probs`` [B, K, V] or None;
    ``target_probs`` [B, K+1, V] float32/float16/bfloat16; ``uniforms`` [B, K+1] float32 or None.

    ``validate="full"`` also checks every value (one reduction pass per tensor, one host sync)
    and raises on the first problem; ``"status"`` leaves values to the backend. ``rule`` must be
    one of ``RULES`` and, with ``capabilities``, one the backend claims.

    Raises:
        TypeError: an argument of the wrong type or dtype.
        ValueError: a wrong shape, device, mode, value, or a capability the backend does not claim.
    """
    if validate not in VALIDATE_LEVELS:
        raise ValueError(f"validate must be one of {VALIDATE_LEVELS}, got {validate!r}")
    draft_token_ids = _require_tensor("draft_token_ids", draft_token_ids)
    target_probs = _require_tensor("target_probs", target_probs)
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(rule, str) or rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")

    if draft_token_ids.dtype not in _ID_DTYPES:
        raise TypeError(f"draft_token_ids must be int32 or int64, got {draft_token_ids.dtype}")
    if draft_token_ids.dim() != 2:
        raise ValueError(f"draft_token_ids must be 2-D [B, K], got shape {_shape(draft_token_ids)}")
    if target_probs.dtype not in _DTYPE_NAMES:
        raise TypeError(
            f"target_probs must be float32, float16 or bfloat16, got {target_probs.dtype}"
        )
    if target_probs.dim() != 3:
        raise ValueError(f"target_probs must be 3-D [B, K+1, V], got shape {_shape(target_probs)}")

    batch_size, num_draft = draft_token_ids.shape
    vocab_size = target_probs.shape[2]
    if target_probs.shape[0] != batch_size:
        raise ValueError(
            f"draft_token_ids has B={batch_size} rows but target_probs has shape "
            f"{_shape(target_probs)} (B={target_probs.shape[0]})"
        )
    if target_probs.shape[1] != num_draft + 1:
        raise ValueError(
            f"draft_token_ids has shape {_shape(draft_token_ids)} but target_probs has "
            f"{target_probs.shape[1]} rows per request; expected K+1={num_draft + 1}"
        )
    if vocab_size < 1:
        raise ValueError(f"target_probs has vocabulary size V={vocab_size}; expected V >= 1")

    device = target_probs.device
    if draft_token_ids.device != device:
        raise ValueError(
            f"draft_token_ids is on {draft_token_ids.device} but target_probs is on {device}"
        )

    if draft_probs is not None:
        draft_probs = _require_tensor("draft_probs", draft_probs)
        if draft_probs.dtype != target_probs.dtype:
            raise TypeError(
                f"draft_probs has dtype {draft_probs.dtype} but target_probs has "
                f"{target_probs.dtype}; they must match"
            )
        expected = (batch_size, num_draft, vocab_size)
        if _shape(draft_probs) != expected:
            raise ValueError(
                f"draft_probs has shape {_shape(draft_probs)}; expected [B, K, V]={expected} "
                f"from draft_token_ids {_shape(draft_token_ids)} and target_probs "
                f"{_shape(target_probs)}"
            )
        if draft_probs.device != device:
            raise ValueError(
                f"draft_probs is on {draft_probs.device} but target_probs is on {device}"
            )

    if uniforms is not None:
        uniforms = _require_tensor("uniforms", uniforms)
        if uniforms.dtype != torch.float32:
            raise TypeError(f"uniforms must be float32, got {uniforms.dtype}")
        if _shape(uniforms) != (batch_size, num_draft + 1):
            raise ValueError(
                f"uniforms has shape {_shape(uniforms)}; expected [B, K+1]="
                f"{(batch_size, num_draft + 1)}"
            )
        if uniforms.device != device:
            raise ValueError(f"uniforms is on {uniforms.device} but target_probs is on {device}")

    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != device.type or (
            device.type == "cuda"
            and generator.device.index is not None
            and device.index is not None
            and generator.device.index != device.index
        ):
            raise ValueError(f"generator is on {generator.device} but the inputs are on {device}")
    elif mode == "random" and uniforms is None:
        generator = default_generator(device)

    if capabilities is not None:
        _check_capabilities(
            capabilities, backend_name, mode, target_probs.dtype, device, vocab_size, num_draft
        )
        if rule not in capabilities.rules:
            raise ValueError(
                f"backend {backend_name!r} does not support rule={rule!r} (claims rules "
                f"{capabilities.rules}); use a backend that claims it (`specsample list`) or "
                'rule="token"'
            )

    if validate == "full" and batch_size > 0:
        check_values(draft_token_ids, draft_probs, target_probs, uniforms, vocab_size)

    return VerifyInputs(
        draft_token_ids=draft_token_ids.contiguous(),
        draft_probs=None if draft_probs is None else draft_probs.contiguous(),
        target_probs=target_probs.contiguous(),
        mode=mode,
        generator=generator,
        uniforms=None if uniforms is None else uniforms.contiguous(),
        batch_size=batch_size,
        num_draft=num_draft,
        vocab_size=vocab_size,
        device=device,
        rule=rule,
    )


def _check_capabilities(
    caps: Capabilities,
    backend_name: str,
    mode: str,
    dtype: torch.dtype,
    device: torch.device,
    vocab_size: int,
    num_draft: int,
) -> None:
    if mode not in caps.modes:
        raise ValueError(
            f"backend {backend_name!r} does not support mode={mode!r} (claims {caps.modes})"
        )
    dtype_name = _DTYPE_NAMES[dtype]
    if dtype_name not in caps.dtypes:
        raise TypeError(
            f"backend {backend_name!r} does not support {dtype_name} probabilities "
            f"(claims {', '.join(caps.dtypes)})"
        )
    if device.type not in caps.devices:
        raise ValueError(
            f"backend {backend_name!r} does not run on {device.type} inputs "
            f"(claims {', '.join(caps.devices)})"
        )
    if caps.max_vocab is not None and vocab_size > caps.max_vocab:
        raise ValueError(
            f"target_probs has V={vocab_size} but backend {backend_name!r} supports V <= {caps.max_vocab}"
        )
    if caps.max_k is not None and num_draft > caps.max_k:
        raise ValueError(
            f"draft_token_ids has K={num_draft} but backend {backend_name!r} supports K <= {caps.max_k}"
        )


def check_values(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor | None,
    vocab_size: int,
) -> None:
    """The eager value check of ``validate="full"``: raise ``ValueError`` on the first problem.

    One min/max reduction per tensor and request (``torch.aminmax``: a single read of the data, no
    boolean tensor of the input's size), then one host transfer of the ``[B]`` results. A value is
    bad when it is NaN (min/max propagate it), infinite, or negative.

    Shapes: ``draft_token_ids`` [B, K], ``draft_probs`` [B, K, V] or None, ``target_probs``
    [B, K+1, V], ``uniforms`` [B, K+1] float32 or None.
    """
    B = target_probs.shape[0]
    checks: list[tuple[str, str, torch.Tensor]] = []
    if draft_token_ids.shape[1] > 0:
        lo, hi = torch.aminmax(draft_token_ids.reshape(B, -1), dim=1)
        checks.append(
            (
                "draft_token_ids",
                f"holds an id outside [0, V={vocab_size})",
                (lo < 0) | (hi >= vocab_size),
            )
        )
    for name, tensor in (("target_probs", target_probs), ("draft_probs", draft_probs)):
        if tensor is None or tensor.numel() == 0:
            continue
        lo, hi = torch.aminmax(tensor.reshape(B, -1), dim=1)
        # NaN propagates through min and max, so it fails `lo >= 0`; inf fails `hi < inf`.
        checks.append(
            (name, "holds a NaN, infinite or negative value", ~((lo >= 0) & (hi < float("inf"))))
        )
    if uniforms is not None:
        lo, hi = torch.aminmax(uniforms, dim=1)
        checks.append(("uniforms", "holds a value outside [0, 1)", ~((lo >= 0) & (hi < 1))))
    if not checks:
        return
    bad = torch.stack([c[2] for c in checks]).cpu()  # [checks, B]: the one host sync
    for (name, problem, _), row in zip(checks, bad, strict=True):
        flagged = torch.nonzero(row).flatten().tolist()
        if flagged:
            more = f" ({len(flagged) - 1} more requests too)" if len(flagged) > 1 else ""
            raise ValueError(f"{name} {problem} in request {flagged[0]}{more}")


def empty_output(inputs: VerifyInputs) -> VerifyOutput:
    """The output for B = 0: ``token_ids`` [0, K+1] and ``num_emitted`` [0] int64, ``status`` [0]."""
    device = inputs.target_probs.device
    return VerifyOutput(
        token_ids=torch.empty((0, inputs.num_draft + 1), dtype=torch.int64, device=device),
        num_emitted=torch.empty((0,), dtype=torch.int64, device=device),
        status=torch.empty((0,), dtype=torch.int32, device=device),
    )
