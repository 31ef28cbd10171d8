"""The one interface every backend implements: inputs, outputs, capabilities, the base class.

The semantics are defined by :mod:`specsample.reference` (float64); see DESIGN.md, "The contract".
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # torch is imported lazily so that `import specsample` stays cheap
    import torch

MODES = ("random", "greedy")
PROB_DTYPES = ("float32", "float16", "bfloat16")
ID_DTYPES = ("int32", "int64")


class BackendUnavailable(RuntimeError):
    """Raised by :func:`specsample.get_backend` for an unknown or unavailable backend.

    ``reason`` says why (``"cupy not installed"``, ``"no CUDA device"``, ...).
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"backend {name!r} is unavailable: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class Capabilities:
    """What a backend claims; conformance checks exactly what is claimed.

    Attributes:
        modes: subset of ``("random", "greedy")``.
        dtypes: probability dtypes accepted, names from ``("float32", "float16", "bfloat16")``.
        devices: device types it runs on, e.g. ``("cpu",)`` or ``("cuda",)``.
        needs_gpu: True when it cannot run without a CUDA device.
        max_vocab: largest V it supports, or None for no limit.
        max_k: largest K it supports, or None for no limit.
        fused: True when one call is one kernel launch.
        launches_per_call: kernel launches per call when known (1 for fused backends).
        cuda_graphs: True when a call can be captured in a CUDA graph and replayed.
        host_sync_free: True when a call (with ``check_finite=False``) never synchronizes the host.
    """

    modes: tuple[str, ...] = MODES
    dtypes: tuple[str, ...] = PROB_DTYPES
    devices: tuple[str, ...] = ("cpu", "cuda")
    needs_gpu: bool = False
    max_vocab: int | None = None
    max_k: int | None = None
    fused: bool = False
    launches_per_call: int | None = None
    cuda_graphs: bool = False
    host_sync_free: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "modes": list(self.modes),
            "dtypes": list(self.dtypes),
            "devices": list(self.devices),
            "needs_gpu": self.needs_gpu,
            "max_vocab": self.max_vocab,
            "max_k": self.max_k,
            "fused": self.fused,
            "launches_per_call": self.launches_per_call,
            "cuda_graphs": self.cuda_graphs,
            "host_sync_free": self.host_sync_free,
        }


@dataclass(frozen=True)
class BackendInfo:
    """One row of :func:`specsample.list_backends`."""

    name: str
    description: str
    available: bool
    reason: str
    capabilities: Capabilities | None
    plugin: str = "specsample"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "available": self.available,
            "reason": self.reason,
            "plugin": self.plugin,
            "capabilities": self.capabilities.to_dict() if self.capabilities else None,
        }


@dataclass
class VerifyOutput:
    """Result of one verification call.

    Attributes:
        token_ids: ``[B, K+1]`` int64; row ``b`` holds ``num_emitted[b]`` tokens, then ``-1``.
        num_emitted: ``[B]`` int64 in ``1..K+1`` (accepted draft tokens + one resampled/bonus token).
    """

    token_ids: torch.Tensor
    num_emitted: torch.Tensor


@dataclass
class VerifyInputs:
    """Validated, normalized inputs handed to :meth:`Backend._verify`.

    Tensors are contiguous and on one device. Shapes: ``draft_token_ids`` [B, K] (int32 or int64,
    every id in ``[0, V)`` unless the caller turned checks off), ``draft_probs`` [B, K, V] or None,
    ``target_probs`` [B, K+1, V] (one of the claimed float dtypes, same dtype as draft_probs),
    ``uniforms`` [B, K+1] float32 in [0, 1) or None. ``generator`` is a torch.Generator on the
    inputs' device when ``uniforms`` is None (the device's default generator if the caller gave none).
    """

    draft_token_ids: torch.Tensor
    draft_probs: torch.Tensor | None
    target_probs: torch.Tensor
    mode: str
    generator: torch.Generator | None
    uniforms: torch.Tensor | None
    batch_size: int
    num_draft: int
    vocab_size: int
    device: torch.device = field(repr=False, default=None)  # type: ignore[assignment]


class Backend(abc.ABC):
    """Base class of every backend, built-in or third-party.

    Subclasses set the class attributes ``name``, ``description`` and ``capabilities``, may override
    :meth:`is_available`, and implement :meth:`_verify`, which receives :class:`VerifyInputs` already
    validated by :meth:`verify` (so validation is written once, in core, for every backend).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        """Return ``(available, reason)``; ``reason`` explains a False and is ``""`` otherwise.

        Must be cheap and must not build or compile anything.
        """
        return True, ""

    def verify(
        self,
        draft_token_ids: torch.Tensor,
        draft_probs: torch.Tensor | None,
        target_probs: torch.Tensor,
        *,
        mode: str = "random",
        generator: torch.Generator | None = None,
        uniforms: torch.Tensor | None = None,
        check_finite: bool = True,
    ) -> VerifyOutput:
        """Verify K draft tokens per request and emit the accepted prefix plus one token.

        Args:
            draft_token_ids: ``[B, K]`` int32/int64, the proposed tokens, ``0 <= id < V``.
            draft_probs: ``[B, K, V]`` float32/float16/bfloat16 draft distributions, or None for a
                deterministic drafter (p(x̂) = 1, p = one-hot(x̂)).
            target_probs: ``[B, K+1, V]``, same dtype; row K is the bonus distribution.
            mode: ``"random"`` (rejection sampling) or ``"greedy"`` (argmax verification).
            generator: torch.Generator on the inputs' device; same state -> same output.
            uniforms: ``[B, K+1]`` float32 in [0, 1): explicit randomness (makes the call a
                deterministic function of its inputs).
            check_finite: check values (ids in range, probabilities finite and >= 0, uniforms in
                [0, 1)) at the cost of one pass and one host sync. Shapes, dtypes and devices are
                always checked.

        Returns:
            :class:`VerifyOutput` with ``token_ids`` ``[B, K+1]`` int64 (-1 padded) and
            ``num_emitted`` ``[B]`` int64, on the inputs' device.

        Raises:
            ValueError, TypeError: bad input; the message names the argument.
        """
        from .validation import empty_output, validate_inputs

        inputs = validate_inputs(
            draft_token_ids,
            draft_probs,
            target_probs,
            mode=mode,
            generator=generator,
            uniforms=uniforms,
            check_finite=check_finite,
            capabilities=self.capabilities,
            backend_name=self.name,
        )
        if inputs.batch_size == 0:
            return empty_output(inputs)
        return self._verify(inputs)

    @abc.abstractmethod
    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        """Compute the output from validated inputs. Must not modify the inputs."""

    def __repr__(self) -> str:
        return f"<specsample backend {self.name!r}>"
