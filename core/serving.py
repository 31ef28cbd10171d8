"""The serving entry point's inputs, validation and output (docs/serving.md).

A serving call verifies a batch as an engine hands it over: per-request draft counts (padded with
``num_draft_tokens``, or flattened with ``cu_num_draft_tokens``), per-request ``temperature``
(0 = greedy for that request), ``top_k`` and ``top_p``, target (and draft) logits or probabilities,
and per-request seeds. The semantics are defined by :mod:`specsample.reference_serving` (float64).

Structural checks run on the host and cost no device time. Per-request parameters given on the CPU
(tensors, lists or Python numbers) are checked on the host too and raise ``ValueError`` naming the
argument; parameters already on a GPU are checked on the device with ``validate="status"`` (the
request gets ``Status.BAD_PARAMETER``, no sync) and on the host with ``validate="full"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .contract import VerifyOutput
from .rng import draw_uniforms
from .serving_layout import flat_to_padded, num_draft_from_cu, padded_to_flat
from .status import Status, status_error
from .validation import (
    _DTYPE_NAMES,
    _ID_DTYPES,
    _require_tensor,
    _shape,
    default_generator,
)

#: what a per-request parameter may be: a ``[B]`` tensor, a list of B numbers, or one number for all
PerRequest = torch.Tensor | Sequence[float] | float | int | None

_BAD_PARAMETER = int(Status.BAD_PARAMETER)


@dataclass
class ServingInputs:
    """Validated serving inputs in the padded layout, handed to :meth:`Backend._verify_serving`.

    Shapes (all on ``device``, contiguous): ``draft_token_ids`` [B, K] int32/int64 (ids not checked
    yet with ``validate="status"``); ``num_draft_tokens`` [B] int64 (request ``b`` owns drafts
    ``0 .. num_draft_tokens[b] - 1``; clamped to ``[0, K]``, an out-of-range count is flagged in
    ``param_flags``); ``target`` [B, K+1, V] float32/float16/bfloat16, logits when
    ``target_is_logits`` else probabilities; ``draft`` [B, K, V] (same dtype, logits when
    ``draft_is_logits``) or None; ``temperature`` [B] float32 (0 = greedy); ``top_k`` [B] int64
    (0 = off); ``top_p`` [B] float32 (1 = off); ``param_flags`` [B] int32 (``BAD_PARAMETER`` where a
    device-resident parameter is out of range, else 0). Randomness: ``uniforms`` [B, K+1] float32
    (explicit), or ``seeds`` / ``offsets`` [B] int64 (per-request Philox streams), or
    ``generator``.
    """

    draft_token_ids: torch.Tensor
    num_draft_tokens: torch.Tensor
    target: torch.Tensor
    target_is_logits: bool
    draft: torch.Tensor | None
    draft_is_logits: bool
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    param_flags: torch.Tensor
    uniforms: torch.Tensor | None
    seeds: torch.Tensor | None
    offsets: torch.Tensor | None
    generator: torch.Generator | None
    batch_size: int
    num_draft: int
    vocab_size: int
    uses_top_k: bool = True
    uses_top_p: bool = True
    device: torch.device = field(repr=False, default=None)  # type: ignore[assignment]


@dataclass
class ServingOutput(VerifyOutput):
    """Result of a serving call.

    Attributes:
        token_ids: ``[B, K+1]`` int64: request ``b``'s ``num_emitted[b]`` tokens, then ``-1``.
        num_emitted: ``[B]`` int64 in ``1 .. num_draft_tokens[b] + 1``, or 0 for a flagged request.
        status: ``[B]`` int32 bits of :class:`specsample.Status` (docs/serving.md, "Status").
        flat_token_ids: ``[T + B]`` int64, the tokens in the flattened layout (request ``b``'s
            slots at its target rows' indices, ``-1`` past its emitted tokens); set by
            :meth:`Backend.verify_serving_flat`, None from the padded entry point.
        target_name / draft_name: the arguments the caller passed, so that
            :meth:`raise_for_status` names them (``target_logits`` or ``target_probs``).
    """

    flat_token_ids: torch.Tensor | None = None
    target_name: str = "target_probs"
    draft_name: str = "draft_probs"

    def raise_for_status(self) -> ServingOutput:
        """Raise ``ValueError`` naming the first flagged request and its problems; else ``self``."""
        if self.status is None:
            return self
        error = status_error(self.status)
        if error is not None:
            message = str(error).replace("target_probs", self.target_name)
            raise ValueError(message.replace("draft_probs", self.draft_name))
        return self


def _exactly_one(name_a: str, a: object, name_b: str, b: object, required: bool) -> None:
    if a is not None and b is not None:
        raise ValueError(f"pass {name_a} or {name_b}, not both")
    if required and a is None and b is None:
        raise ValueError(f"pass {name_a} or {name_b} (got neither)")


def _per_request(
    name: str,
    value: PerRequest,
    batch_size: int,
    *,
    default: float | int,
    integer: bool,
    device: torch.device,
    validate: str,
    problem: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``[B]`` parameter on ``device`` plus its ``[B]`` bool out-of-range mask.

    ``problem(t) -> [B] bool`` marks bad entries. Host values (and device values with
    ``validate="full"``) are checked here and raise ``ValueError`` naming ``name``, the expected
    range and the first bad value.
    """
    dtype = torch.int64 if integer else torch.float32
    if value is None:
        t = torch.full((batch_size,), default, dtype=dtype)
    elif isinstance(value, torch.Tensor):
        _require_tensor(name, value)
        if integer and value.dtype not in _ID_DTYPES:
            raise TypeError(f"{name} must be an int32 or int64 tensor, got {value.dtype}")
        if not integer and not (value.is_floating_point()):
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        if _shape(value) != (batch_size,):
            raise ValueError(f"{name} has shape {_shape(value)}; expected [B]=({batch_size},)")
        t = value.detach()
        if not integer and t.dtype == torch.float64 and t.device.type == "cpu":
            bad64 = problem(t)  # check the caller's values before rounding them to float32
            if bool(bad64.any()):
                _raise_bad(name, t, bad64, problem)
        t = t.to(dtype)
    else:
        if isinstance(value, bool):
            raise TypeError(f"{name} must be a number, a list of B numbers or a [B] tensor")
        if isinstance(value, int | float):
            t = torch.full((batch_size,), value, dtype=dtype)
        else:
            try:
                t = torch.tensor(list(value), dtype=torch.float64)
            except (TypeError, ValueError):
                raise TypeError(
                    f"{name} must be a number, a list of B numbers or a [B] tensor, got "
                    f"{type(value).__name__}"
                ) from None
            if t.shape != (batch_size,):
                raise ValueError(f"{name} has {t.numel()} values; expected B={batch_size}")
            if integer and not bool((t == t.round()).all()):
                raise TypeError(f"{name} must hold integers, got {t.tolist()}")
            bad64 = problem(t)
            if bool(bad64.any()):
                _raise_bad(name, t, bad64, problem)
            t = t.to(dtype)
    bad = problem(t)
    if t.device.type == "cpu" or validate == "full":
        if batch_size and bool(bad.any()):  # a host read: free on the CPU, one sync on a GPU
            _raise_bad(name, t, bad, problem)
    return t.to(device), bad.to(device)


_EXPECTED = {
    "temperature": "a finite value >= 0 (0 = greedy)",
    "top_k": "an integer >= 0 (0 = off)",
    "top_p": "a value in (0, 1] (1 = off)",
    "offsets": "an integer >= 0",
}


def _raise_bad(name: str, t: torch.Tensor, bad: torch.Tensor, problem: object) -> None:
    first = int(torch.nonzero(bad.cpu()).flatten()[0])
    value = t.cpu()[first].item()
    expected = _EXPECTED.get(name, "a value in range")
    raise ValueError(f"{name}[{first}] must be {expected}, got {value!r}")


def _check_rows(
    name: str,
    t: torch.Tensor,
    expected: tuple[int, ...],
    layout: str,
    device: torch.device,
) -> torch.Tensor:
    t = _require_tensor(name, t)
    if t.dtype not in _DTYPE_NAMES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if _shape(t) != expected:
        raise ValueError(f"{name} has shape {_shape(t)}; expected {layout}={expected}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but draft_token_ids is on {device}")
    return t


def validate_serving(
    draft_token_ids: torch.Tensor,
    *,
    num_draft_tokens: PerRequest = None,
    target_probs: torch.Tensor | None = None,
    target_logits: torch.Tensor | None = None,
    draft_probs: torch.Tensor | None = None,
    draft_logits: torch.Tensor | None = None,
    temperature: PerRequest = None,
    top_k: PerRequest = None,
    top_p: PerRequest = None,
    generator: torch.Generator | None = None,
    seeds: torch.Tensor | None = None,
    offsets: PerRequest = None,
    uniforms: torch.Tensor | None = None,
    validate: str = "status",
    extra_flags: torch.Tensor | None = None,
) -> ServingInputs:
    """Check the padded-layout arguments of a serving call; return :class:`ServingInputs`.

    Shapes: ``draft_token_ids`` [B, K] int32/int64; ``num_draft_tokens`` [B] integers in
    ``[0, K]`` (None: every request has K); exactly one of ``target_probs`` / ``target_logits``
    [B, K+1, V] float32/float16/bfloat16; at most one of ``draft_probs`` / ``draft_logits``
    [B, K, V], same dtype as the target; ``temperature`` / ``top_p`` [B] floats, ``top_k`` [B]
    integers (a single number applies to every request; None: 1.0, off, off); at most one of
    ``uniforms`` [B, K+1] float32 and ``seeds`` [B] int (+ ``offsets`` [B] int >= 0, default 0);
    ``generator`` otherwise. ``extra_flags`` [B] int32 are ORed into ``param_flags``.

    Raises:
        TypeError, ValueError: a wrong type, dtype, shape, device, or (on the host) a bad
            parameter; the message names the argument, what was expected and what came.
    """
    from .validation import VALIDATE_LEVELS

    if validate not in VALIDATE_LEVELS:
        raise ValueError(f"validate must be one of {VALIDATE_LEVELS}, got {validate!r}")
    draft_token_ids = _require_tensor("draft_token_ids", draft_token_ids)
    if draft_token_ids.dtype not in _ID_DTYPES:
        raise TypeError(f"draft_token_ids must be int32 or int64, got {draft_token_ids.dtype}")
    if draft_token_ids.dim() != 2:
        raise ValueError(f"draft_token_ids must be 2-D [B, K], got shape {_shape(draft_token_ids)}")
    B, K = draft_token_ids.shape
    device = draft_token_ids.device
    _exactly_one("target_probs", target_probs, "target_logits", target_logits, required=True)
    _exactly_one("draft_probs", draft_probs, "draft_logits", draft_logits, required=False)
    target_is_logits = target_logits is not None
    target_name = "target_logits" if target_is_logits else "target_probs"
    target = target_logits if target_is_logits else target_probs
    target = _require_tensor(target_name, target)
    if target.dim() != 3:
        raise ValueError(f"{target_name} must be 3-D [B, K+1, V], got shape {_shape(target)}")
    V = target.shape[2]
    if V < 1:
        raise ValueError(f"{target_name} has vocabulary size V={V}; expected V >= 1")
    target = _check_rows(target_name, target, (B, K + 1, V), "[B, K+1, V]", device)

    draft_is_logits = draft_logits is not None
    draft = draft_logits if draft_is_logits else draft_probs
    if draft is not None:
        draft_name = "draft_logits" if draft_is_logits else "draft_probs"
        draft = _check_rows(draft_name, draft, (B, K, V), "[B, K, V]", device)
        if draft.dtype != target.dtype:
            raise TypeError(
                f"{draft_name} has dtype {draft.dtype} but {target_name} has {target.dtype}; "
                "they must match"
            )

    def counts_bad(t: torch.Tensor) -> torch.Tensor:
        return (t < 0) | (t > K)

    if num_draft_tokens is None:
        num, num_bad = torch.full((B,), K, dtype=torch.int64, device=device), None
    else:
        num, num_bad = _per_request(
            "num_draft_tokens", num_draft_tokens, B, default=K, integer=True, device=device,
            validate=validate, problem=counts_bad,
        )  # fmt: skip
    temp, temp_bad = _per_request(
        "temperature", temperature, B, default=1.0, integer=False, device=device,
        validate=validate, problem=lambda t: ~((t >= 0) & (t < float("inf"))),
    )  # fmt: skip
    tk, tk_bad = _per_request(
        "top_k", top_k, B, default=0, integer=True, device=device, validate=validate,
        problem=lambda t: t < 0,
    )  # fmt: skip
    tp, tp_bad = _per_request(
        "top_p", top_p, B, default=1.0, integer=False, device=device, validate=validate,
        problem=lambda t: ~((t > 0) & (t <= 1)),
    )  # fmt: skip
    bad = temp_bad | tk_bad | tp_bad
    if num_bad is not None:
        bad = bad | num_bad
        num = num.clamp(0, K)

    if uniforms is not None and seeds is not None:
        raise ValueError("pass uniforms or seeds, not both")
    if offsets is not None and seeds is None:
        raise ValueError("offsets needs seeds (the per-request Philox keys)")
    seed_t = offset_t = None
    if seeds is not None:
        if generator is not None:
            raise ValueError("pass generator or seeds, not both")
        seed_t = _require_tensor("seeds", seeds)
        if seed_t.dtype not in _ID_DTYPES:
            raise TypeError(f"seeds must be an int32 or int64 tensor, got {seed_t.dtype}")
        if _shape(seed_t) != (B,):
            raise ValueError(f"seeds has shape {_shape(seed_t)}; expected [B]=({B},)")
        seed_t = seed_t.to(device=device, dtype=torch.int64)
        offset_t, off_bad = _per_request(
            "offsets", offsets, B, default=0, integer=True, device=device, validate=validate,
            problem=lambda t: t < 0,
        )  # fmt: skip
        bad = bad | off_bad
    if uniforms is not None:
        uniforms = _require_tensor("uniforms", uniforms)
        if uniforms.dtype != torch.float32:
            raise TypeError(f"uniforms must be float32, got {uniforms.dtype}")
        if _shape(uniforms) != (B, K + 1):
            raise ValueError(
                f"uniforms has shape {_shape(uniforms)}; expected [B, K+1]={(B, K + 1)}"
            )
        if uniforms.device != device:
            raise ValueError(f"uniforms is on {uniforms.device} but draft_token_ids is on {device}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device} but the inputs are on {device}")
    elif uniforms is None and seeds is None:
        generator = default_generator(device)

    flags = torch.where(bad, _BAD_PARAMETER, 0).to(torch.int32)
    if extra_flags is not None:
        flags = flags | extra_flags.to(device=device, dtype=torch.int32)
    inputs = ServingInputs(
        draft_token_ids=draft_token_ids.contiguous(),
        num_draft_tokens=num.contiguous(),
        target=target.detach().contiguous(),
        target_is_logits=target_is_logits,
        draft=None if draft is None else draft.detach().contiguous(),
        draft_is_logits=draft_is_logits,
        temperature=temp,
        top_k=tk,
        top_p=tp,
        param_flags=flags,
        uniforms=None if uniforms is None else uniforms.contiguous(),
        seeds=seed_t,
        offsets=offset_t,
        generator=generator,
        batch_size=B,
        num_draft=K,
        vocab_size=V,
        uses_top_k=top_k is not None,
        uses_top_p=top_p is not None,
        device=device,
    )
    if validate == "full" and B > 0:
        check_serving_values(inputs)
    return inputs


def check_serving_values(inputs: ServingInputs) -> None:
    """The eager value check of ``validate="full"``: raise ``ValueError`` on the first problem.

    Computes the serving status of every request in float64 with the reference's rules
    (docs/serving.md, "Status") and raises the message :meth:`ServingOutput.raise_for_status`
    would give: one host sync.
    """
    from .reference_serving import serving_status

    status = serving_status(inputs)
    ServingOutput(
        token_ids=torch.empty(0),
        num_emitted=torch.empty(0),
        status=status,
        target_name="target_logits" if inputs.target_is_logits else "target_probs",
        draft_name="draft_logits" if inputs.draft_is_logits else "draft_probs",
    ).raise_for_status()


def serving_coins(inputs: ServingInputs) -> torch.Tensor:
    """The ``[B, K+1]`` float32 coins of a serving call, on the inputs' device.

    Explicit ``uniforms`` as given; with ``seeds``, request ``b``'s coin ``i`` is number
    ``offsets[b] + i`` of its own Philox stream (:func:`specsample.philox.philox_stream_uniforms`);
    otherwise ``torch.rand`` from the generator, exactly as :meth:`Backend.verify` draws them.
    Request ``b`` uses coins ``0 .. num_draft_tokens[b]``: coin ``i < K_b`` decides draft ``i``,
    coin ``K_b`` draws its last token.
    """
    if inputs.uniforms is not None:
        return inputs.uniforms
    if inputs.seeds is not None:
        from .philox import philox_stream_uniforms

        return philox_stream_uniforms(inputs.seeds, inputs.offsets, inputs.num_draft + 1)
    return draw_uniforms(inputs.batch_size, inputs.num_draft, inputs.generator, inputs.device)


def empty_serving_output(inputs: ServingInputs) -> ServingOutput:
    """The output for B = 0."""
    device = inputs.device
    return ServingOutput(
        token_ids=torch.empty((0, inputs.num_draft + 1), dtype=torch.int64, device=device),
        num_emitted=torch.empty((0,), dtype=torch.int64, device=device),
        status=torch.empty((0,), dtype=torch.int32, device=device),
    )


def flat_arguments(
    draft_token_ids: torch.Tensor,
    cu_num_draft_tokens: torch.Tensor,
    max_num_draft_tokens: int | None,
    tensors: dict[str, torch.Tensor | None],
    validate: str,
) -> tuple[torch.Tensor, torch.Tensor, int, dict[str, torch.Tensor | None], torch.Tensor]:
    """Check the flattened layout and convert it to the padded one.

    Args:
        draft_token_ids: ``[T]`` int32/int64.
        cu_num_draft_tokens: ``[B]`` int32/int64, inclusive running sum of the draft counts
            (non-decreasing, ``>= 0``, last entry ``T``).
        max_num_draft_tokens: the padded width K (at least every count); None reads the counts on
            the host (one sync when they are on a GPU).
        tensors: ``target_probs`` / ``target_logits`` ``[T+B, V]``, ``draft_probs`` /
            ``draft_logits`` ``[T, V]``, ``uniforms`` ``[T+B]`` float32 (None where not given).
        validate: as in :meth:`Backend.verify_serving`.

    Returns:
        ``(padded ids [B, K], counts [B], K, padded tensors, flags [B] int32)``: ``flags`` holds
        ``BAD_PARAMETER`` for requests whose count is out of range when ``cu_num_draft_tokens``
        is on a GPU and could not be checked on the host.
    """
    draft_token_ids = _require_tensor("draft_token_ids", draft_token_ids)
    cu = _require_tensor("cu_num_draft_tokens", cu_num_draft_tokens)
    if draft_token_ids.dim() != 1:
        raise ValueError(
            f"draft_token_ids must be 1-D [T] in the flattened layout, got shape "
            f"{_shape(draft_token_ids)}"
        )
    if cu.dtype not in _ID_DTYPES:
        raise TypeError(f"cu_num_draft_tokens must be int32 or int64, got {cu.dtype}")
    if cu.dim() != 1:
        raise ValueError(f"cu_num_draft_tokens must be 1-D [B], got shape {_shape(cu)}")
    device = draft_token_ids.device
    if cu.device != device:
        raise ValueError(
            f"cu_num_draft_tokens is on {cu.device} but draft_token_ids is on {device}"
        )
    T, B = draft_token_ids.shape[0], cu.shape[0]
    if max_num_draft_tokens is not None and (
        not isinstance(max_num_draft_tokens, int) or max_num_draft_tokens < 0
    ):
        raise ValueError(f"max_num_draft_tokens must be an int >= 0, got {max_num_draft_tokens!r}")
    host_check = cu.device.type == "cpu" or validate == "full" or max_num_draft_tokens is None
    counts = num_draft_from_cu(cu)
    flags = torch.zeros(B, dtype=torch.int32, device=device)
    if host_check:
        host = cu.cpu().to(torch.int64)
        host_counts = num_draft_from_cu(host)
        if B and int(host[0]) < 0:
            raise ValueError(f"cu_num_draft_tokens[0] must be >= 0, got {int(host[0])}")
        if B and bool((host_counts < 0).any()):
            b = int(torch.nonzero(host_counts < 0)[0])
            raise ValueError(
                f"cu_num_draft_tokens must be non-decreasing, got cu_num_draft_tokens[{b}]="
                f"{int(host[b])} after {int(host[b - 1])}"
            )
        last = int(host[-1]) if B else 0
        if last != T:
            raise ValueError(
                f"cu_num_draft_tokens[-1] must equal T={T} (the length of draft_token_ids), "
                f"got {last}"
            )
        widest = int(host_counts.max()) if B else 0
        if max_num_draft_tokens is None:
            max_num_draft_tokens = widest
        elif widest > max_num_draft_tokens:
            b = int(torch.argmax(host_counts))
            raise ValueError(
                f"request {b} has {widest} draft tokens but max_num_draft_tokens="
                f"{max_num_draft_tokens}"
            )
    else:
        assert max_num_draft_tokens is not None
        end = cu.to(torch.int64)
        bad = (counts < 0) | (counts > max_num_draft_tokens) | (end > T) | (end - counts < 0)
        flags = torch.where(bad, _BAD_PARAMETER, 0).to(torch.int32)
    K = max_num_draft_tokens
    cu_safe = torch.where(flags.bool(), cu.to(torch.int64) - counts, cu.to(torch.int64))
    expected = {
        "target_probs": (T + B, "[T+B, V]"),
        "target_logits": (T + B, "[T+B, V]"),
        "draft_probs": (T, "[T, V]"),
        "draft_logits": (T, "[T, V]"),
        "uniforms": (T + B, "[T+B]"),
    }
    padded: dict[str, torch.Tensor | None] = {}
    for name, t in tensors.items():
        if t is None:
            padded[name] = None
            continue
        t = _require_tensor(name, t)
        rows, layout = expected[name]
        want_dim = 1 if name == "uniforms" else 2
        if t.dim() != want_dim or t.shape[0] != rows:
            raise ValueError(
                f"{name} has shape {_shape(t)}; expected {layout} with T={T}, B={B} in the "
                "flattened layout"
            )
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but draft_token_ids is on {device}")
        bonus = rows == T + B and name != "draft_probs" and name != "draft_logits"
        padded[name] = flat_to_padded(t, cu_safe, K, bonus=bonus)
    ids = flat_to_padded(draft_token_ids, cu_safe, K, bonus=False)
    counts = torch.where(flags.bool(), 0, counts).clamp(0, K)
    return ids, counts, K, padded, flags


def flat_output(out: ServingOutput, cu_num_draft_tokens: torch.Tensor, num_tokens: int) -> None:
    """Fill ``out.flat_token_ids`` ``[T + B]`` from the padded ``out.token_ids``."""
    B = cu_num_draft_tokens.shape[0]
    out.flat_token_ids = padded_to_flat(
        out.token_ids, cu_num_draft_tokens, num_tokens + B, bonus=True, fill=-1,
        keep=out.status == 0,
    )  # fmt: skip
