"""The one interface every backend implements: inputs, outputs, capabilities, the base class.

The semantics are defined by :mod:`specsample.reference` (float64); see docs/contract.md.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # torch is imported lazily so that `import specsample` stays cheap
    import torch

    from .contract_tree import TreeVerifyInputs, TreeVerifyOutput
    from .serving import ServingInputs, ServingOutput

MODES = ("random", "greedy")
#: verification rules for chains (docs/rules.md): token-wise, and block verification
RULES = ("token", "block")
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
        host_sync_free: True when the default call never synchronizes the host.
        status_flags: True when the backend guards the values it reads and reports bad ones per
            request in ``VerifyOutput.status`` (docs/contract.md, "Status"). When False (the
            default, safe for a new plugin), the default call checks every value eagerly first, as
            ``validate="full"`` does, and ``status`` is all zeros.
        serving: True when the backend implements :meth:`Backend.verify_serving` (ragged drafts,
            per-request temperature / top-k / top-p, logits in, per-request seeds;
            docs/serving.md).
        tree_modes: the modes in which :meth:`Backend.verify_tree` is implemented, a subset of
            ``("random", "greedy")``; empty (the default) when the backend verifies no trees.
        tree_sampling: the random tree rules implemented, names from ``("target_only",
            "with_replacement", "without_replacement")`` (``"target_only"`` is
            ``draft_probs=None``; the others are the ``draft_sampling`` values).
        tree_rules: the ``rule`` values of :meth:`Backend.verify_tree` implemented (``"token"``,
            ``"traversal"``).
        rules: verification rules ``verify(..., rule=)`` accepts, names from
            ``("token", "block")`` (docs/rules.md). Every backend implements ``"token"``; a
            backend that claims ``"block"`` receives it in ``VerifyInputs.rule``.
        uniforms: True (the default) when the backend accepts explicit ``uniforms`` and its
            tokens are then the reference's. False for a backend that draws its own random
            numbers (a wrapped library's RNG, docs/peers.md): ``verify(uniforms=...)`` raises
            ``ValueError``, the conformance checks that need explicit uniforms report "not
            claimed", and the statistical checks decide its correctness.
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
    status_flags: bool = False
    serving: bool = False
    tree_modes: tuple[str, ...] = ()
    tree_sampling: tuple[str, ...] = ()
    tree_rules: tuple[str, ...] = ()
    rules: tuple[str, ...] = ("token",)
    uniforms: bool = True

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
            "status_flags": self.status_flags,
            "serving": self.serving,
            "tree_modes": list(self.tree_modes),
            "tree_sampling": list(self.tree_sampling),
            "tree_rules": list(self.tree_rules),
            "rules": list(self.rules),
            "uniforms": self.uniforms,
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
        num_emitted: ``[B]`` int64 in ``1..K+1`` (accepted draft tokens + one resampled/bonus
            token), or ``0`` for a request whose ``status`` is not zero.
        status: ``[B]`` int32 bit flags of :class:`specsample.Status`, 0 for a request that was
            verified normally. A flagged request has ``token_ids`` all ``-1`` and
            ``num_emitted`` 0. None only for an output a backend's ``_verify`` built without it;
            :meth:`Backend.verify` always fills it.
    """

    token_ids: torch.Tensor
    num_emitted: torch.Tensor
    status: torch.Tensor | None = None

    def raise_for_status(self) -> VerifyOutput:
        """Raise ``ValueError`` if any request is flagged; return ``self`` otherwise.

        Reads ``status`` on the host (one synchronization). The message names the first flagged
        request, the argument and the problem, e.g. ``request 3: target_probs holds a NaN,
        infinite or negative value (status=2)``.
        """
        if self.status is None:
            return self
        from .status import status_error

        error = status_error(self.status)
        if error is not None:
            raise error
        return self


@dataclass
class VerifyInputs:
    """Validated, normalized inputs handed to :meth:`Backend._verify`.

    Tensors are contiguous and on one device. Shapes: ``draft_token_ids`` [B, K] (int32 or int64;
    with the default ``validate="status"`` the values are not checked yet: an id may lie outside
    ``[0, V)``, a probability may be NaN, and the backend must guard what it reads and flag the
    request in ``status``, docs/contract.md), ``draft_probs`` [B, K, V] or None,
    ``target_probs`` [B, K+1, V] (one of the claimed float dtypes, same dtype as draft_probs),
    ``uniforms`` [B, K+1] float32 in [0, 1) or None. ``generator`` is a torch.Generator on the
    inputs' device when ``uniforms`` is None (the device's default generator if the caller gave none).
    ``rule`` is the verification rule, one of the backend's claimed ``Capabilities.rules``.
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
    rule: str = "token"


class Backend(abc.ABC):
    """Base class of every backend, built-in or third-party.

    Subclasses set the class attributes ``name``, ``description`` and ``capabilities``, may override
    :meth:`is_available`, and implement :meth:`_verify`, which receives :class:`VerifyInputs` already
    validated by :meth:`verify` (so validation is written once, in core, for every backend).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: the external library this backend wraps (``"FlashInfer"``, ...), or ``""`` for a backend
    #: that implements the sampler itself; reports mark such "peer" backends (docs/peers.md)
    peer: ClassVar[str] = ""

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
        validate: str = "status",
        check_finite: bool | None = None,
        rule: str = "token",
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
            validate: ``"status"`` (default): shapes, dtypes and devices are checked on the host
                (no GPU work); values are checked where the backend reads them and a bad request
                is reported in ``status`` (no host sync, graph-capturable). ``"full"``: also one
                eager pass over every value before the backend runs, raising ``ValueError`` on the
                first problem (one host sync; for debugging).
            check_finite: deprecated alias: ``True`` means ``validate="full"``, ``False`` means
                ``validate="status"``.
            rule: ``"token"`` (default): token-wise verification, the first rejection ends the
                step. ``"block"``: block verification, which decides the accepted prefix jointly
                (lossless, never fewer accepted drafts on average; docs/rules.md). Only rules in
                ``capabilities.rules`` are accepted. In greedy mode both give the same output.

        Returns:
            :class:`VerifyOutput` with ``token_ids`` ``[B, K+1]`` int64 (-1 padded),
            ``num_emitted`` ``[B]`` int64 and ``status`` ``[B]`` int32, on the inputs' device.

        Raises:
            ValueError, TypeError: bad input found on the host (or by ``validate="full"``); the
                message names the argument; an unknown rule, or one the backend does not claim.
        """
        from .validation import empty_output, resolve_validate, validate_inputs

        level = resolve_validate(validate, check_finite, stacklevel=2)
        if uniforms is not None and not getattr(self.capabilities, "uniforms", True):
            raise ValueError(
                f"uniforms: backend {self.name!r} draws its own random numbers and does not "
                "accept explicit uniforms (Capabilities.uniforms is False); pass generator= instead"
            )
        if level == "status" and not self.capabilities.status_flags:
            # The backend does not guard its reads: check eagerly instead. Not while a CUDA graph
            # is being captured: the check would read (and sync on) the capture-time data, which
            # says nothing about the data of later replays.
            level = "status" if _capturing(target_probs) else "full"
        inputs = validate_inputs(
            draft_token_ids,
            draft_probs,
            target_probs,
            mode=mode,
            generator=generator,
            uniforms=uniforms,
            validate=level,
            capabilities=self.capabilities,
            backend_name=self.name,
            rule=rule,
        )
        if inputs.batch_size == 0:
            return empty_output(inputs)
        out = self._verify(inputs)
        if out.status is None:
            import torch

            out.status = torch.zeros(
                inputs.batch_size, dtype=torch.int32, device=out.num_emitted.device
            )
        return out

    @abc.abstractmethod
    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        """Compute the output from validated inputs. Must not modify the inputs."""

    def verify_serving(self, draft_token_ids: torch.Tensor, **kwargs: Any) -> ServingOutput:
        """Verify a serving-shaped batch in the padded layout (docs/serving.md).

        Args:
            draft_token_ids: ``[B, K]`` int32/int64.
            **kwargs: ``num_draft_tokens`` [B]; ``target_probs`` or ``target_logits``
                [B, K+1, V]; ``draft_probs`` or ``draft_logits`` [B, K, V] or neither;
                ``temperature``, ``top_k``, ``top_p`` [B] (or one number for all); ``generator``,
                or ``seeds`` [B] (+ ``offsets`` [B]), or ``uniforms`` [B, K+1]; ``validate``.
                See :func:`specsample.serving.validate_serving`.

        Returns:
            :class:`specsample.serving.ServingOutput`: ``token_ids`` [B, K+1] int64 (-1 padded),
            ``num_emitted`` [B] int64, ``status`` [B] int32, on the inputs' device.

        Raises:
            ValueError: the backend does not claim ``Capabilities.serving``, or bad input found on
                the host (the message names the argument).
        """
        from .serving import empty_serving_output, validate_serving

        self._require_serving()
        inputs = validate_serving(draft_token_ids, **kwargs)
        if inputs.batch_size == 0:
            return empty_serving_output(inputs)
        return self._finish_serving(inputs)

    def verify_serving_flat(
        self,
        draft_token_ids: torch.Tensor,
        cu_num_draft_tokens: torch.Tensor,
        *,
        max_num_draft_tokens: int | None = None,
        **kwargs: Any,
    ) -> ServingOutput:
        """Verify a serving batch in the flattened engine layout (docs/serving.md, "Layouts").

        Args:
            draft_token_ids: ``[T]`` int32/int64, every request's drafts one after the other.
            cu_num_draft_tokens: ``[B]`` int32/int64, inclusive running sum of the draft counts.
            max_num_draft_tokens: at least every count; None reads the counts on the host (one
                sync when they are on a GPU). Given, with ``cu_num_draft_tokens`` on a GPU, the
                call is sync-free and a bad count flags its request ``BAD_PARAMETER``.
            **kwargs: as :meth:`verify_serving`, with ``target_*`` [T+B, V], ``draft_*`` [T, V]
                and ``uniforms`` [T+B] in the flattened layout.

        Returns:
            :class:`specsample.serving.ServingOutput` with both ``token_ids`` [B, K+1] and
            ``flat_token_ids`` [T+B] (-1 padded) set.
        """
        from .serving import empty_serving_output, flat_arguments, flat_output, validate_serving

        self._require_serving()
        validate = kwargs.get("validate", "status")
        names = ("target_probs", "target_logits", "draft_probs", "draft_logits", "uniforms")
        flat = {name: kwargs.pop(name, None) for name in names}
        ids, counts, _, padded, flags = flat_arguments(
            draft_token_ids, cu_num_draft_tokens, max_num_draft_tokens, flat, validate
        )
        inputs = validate_serving(
            ids, num_draft_tokens=counts, extra_flags=flags, **padded, **kwargs
        )
        out = (
            empty_serving_output(inputs) if inputs.batch_size == 0 else self._finish_serving(inputs)
        )
        flat_output(out, cu_num_draft_tokens, draft_token_ids.shape[0])
        return out

    def _require_serving(self) -> None:
        if not self.capabilities.serving:
            raise ValueError(
                f"backend {self.name!r} does not implement verify_serving "
                "(Capabilities.serving is False)"
            )

    def _finish_serving(self, inputs: ServingInputs) -> ServingOutput:
        out = self._verify_serving(inputs)
        out.target_name = "target_logits" if inputs.target_is_logits else "target_probs"
        out.draft_name = "draft_logits" if inputs.draft_is_logits else "draft_probs"
        return out

    def _verify_serving(self, inputs: ServingInputs) -> ServingOutput:
        """Compute a serving call's output from validated inputs (padded layout). Backends that
        claim ``Capabilities.serving`` override it; must not modify the inputs."""
        raise NotImplementedError(f"backend {self.name!r} does not implement _verify_serving")

    def verify_tree(
        self,
        draft_token_ids: torch.Tensor,
        parents: torch.Tensor,
        draft_probs: torch.Tensor | None,
        target_probs: torch.Tensor,
        *,
        mode: str = "random",
        draft_sampling: str | None = None,
        num_nodes: torch.Tensor | None = None,
        max_depth: int | None = None,
        generator: torch.Generator | None = None,
        uniforms: torch.Tensor | None = None,
        validate: str = "status",
        rule: str = "token",
    ) -> TreeVerifyOutput:
        """Verify a tree of N drafted nodes per request in one walk from the root.

        The rules are defined by :func:`specsample.reference_tree.reference_verify_tree` and
        docs/contract-trees.md; a chain ``parents = [-1, 0, ..., N-2]`` gives :meth:`verify`'s
        tokens exactly.

        Args:
            draft_token_ids: ``[B, N]`` int32/int64, node i's token; nodes in topological order.
            parents: ``[B, N]`` int64/int32: ``-1`` (a child of the root) or a node index ``< i``.
            draft_probs: ``[B, N, V]`` float32/float16/bfloat16: the distribution node i was
                drawn from (siblings share it: the first sibling's row is read), or None for
                one-hot drafts (the target-only rule).
            target_probs: ``[B, N+1, V]``, same dtype: row 0 after the root, row ``i+1`` after
                node i.
            mode: ``"random"`` or ``"greedy"``.
            draft_sampling: ``"with_replacement"`` or ``"without_replacement"``: how siblings were
                drawn from ``draft_probs``; required in random mode with ``draft_probs``.
            num_nodes: ``[B]`` int32/int64 or None: request b's real nodes are
                ``0..num_nodes[b]-1``; the others are padding and are not read.
            max_depth: D, the longest accepted path the output holds; default N.
            generator: torch.Generator on the inputs' device for the ``[B, N+1]`` uniforms.
            uniforms: ``[B, N+1]`` float32 in [0, 1): node i's coin, then the last draw's.
            validate: ``"status"`` (default): a bad tree or value is flagged per request in
                ``status`` (no host sync); ``"full"``: checked eagerly first, raising
                ``ValueError`` naming the request (and node), one host sync.
            rule: ``"token"``: accept one node at a time along the walk; ``"traversal"``: try
                the nodes leaf to root with sequence-level weights (docs/rules.md; random mode
                needs ``draft_sampling="with_replacement"``). Only ``capabilities.tree_rules``.

        Returns:
            :class:`specsample.TreeVerifyOutput`: ``token_ids`` ``[B, D+1]`` int64,
            ``num_emitted`` ``[B]`` int64, ``accepted_nodes`` ``[B, D]`` int64 and ``status``
            ``[B]`` int32, on the inputs' device.

        Raises:
            ValueError, TypeError: bad input found on the host (or by ``validate="full"``), or a
                tree verification the backend does not claim (``Capabilities.tree_modes``).
        """
        from .validation import resolve_validate
        from .validation_tree import empty_tree_output, validate_tree_inputs

        level = resolve_validate(validate, None)
        if level == "status" and not self.capabilities.status_flags:
            level = "full"  # the backend does not guard its reads: check eagerly instead
        inputs = validate_tree_inputs(
            draft_token_ids,
            parents,
            draft_probs,
            target_probs,
            mode=mode,
            draft_sampling=draft_sampling,
            num_nodes=num_nodes,
            max_depth=max_depth,
            generator=generator,
            uniforms=uniforms,
            validate=level,
            rule=rule,
            capabilities=self.capabilities,
            backend_name=self.name,
        )
        if inputs.batch_size == 0:
            return empty_tree_output(inputs)
        return self._verify_tree(inputs)

    def _verify_tree(self, inputs: TreeVerifyInputs) -> TreeVerifyOutput:
        """Compute a tree verification's output from validated inputs (docs/contract-trees.md).

        Implemented by backends that claim ``Capabilities.tree_modes``; must not modify the
        inputs.
        """
        raise NotImplementedError(
            f"backend {self.name!r} claims tree_modes={self.capabilities.tree_modes} but does "
            "not implement _verify_tree"
        )

    def __repr__(self) -> str:
        return f"<specsample backend {self.name!r}>"


def _capturing(tensor: Any) -> bool:
    """True while the current CUDA stream of ``tensor``'s device is capturing a graph."""
    import torch

    return (
        isinstance(tensor, torch.Tensor)
        and tensor.is_cuda
        and torch.cuda.is_current_stream_capturing()
    )
