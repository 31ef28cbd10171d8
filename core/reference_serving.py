"""The float64 reference of the serving entry point: the definition, written for clarity.

Per request ``b`` with ``K_b = num_draft_tokens[b]`` drafts, temperature ``T``, ``top_k`` ``k`` and
``top_p`` ``p`` (docs/serving.md):

- ``T == 0``: greedy. Drafts are accepted while they equal the argmax of the raw target row
  (logits or probabilities; ties to the smallest index); the last token is the argmax of the first
  mismatching row, or of row ``K_b``.
- ``T > 0``: every target row (and every draft row given as logits) becomes a distribution with
  :func:`transform_row`; the chain contract's rules (accept iff ``u * p < q``, residual, inverse
  CDF; docs/contract.md) then run on those distributions with coins ``0 .. K_b``. Draft rows given
  as probabilities are used as given.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from .contract import Backend, Capabilities, VerifyInputs, VerifyOutput
from .reference import inverse_cdf, residual, residual_positive_part
from .serving import ServingInputs, ServingOutput, serving_coins
from .status import Status


def transform_row(
    row: torch.Tensor, is_logits: bool, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """One row's sampling distribution, float64 ``[V]``, summing to 1 (or all zero when the row
    has no positive weight).

    1. **top-k** (``0 < top_k < V``; 0 or ``>= V`` is off), on the raw values: keep token ``j`` iff
       ``row[j] >= t_k``, the k-th largest value counted with multiplicity. Every token tied with
       the k-th largest is kept, so more than k may survive.
    2. **temperature** ``T > 0``: logits ``x`` give ``w_j = exp((x_j - max x) / T)``; probabilities
       ``q`` give ``w_j = (q_j / max q) ** (1 / T)`` (``q ** (1/T)`` renormalized, which equals
       ``softmax(log q / T)``). Filtered tokens get ``w_j = 0``; ``pi = w / sum(w)``.
    3. **top-p** (``p < 1``; 1 is off), on ``pi``: keep ``j`` iff the total probability of the
       tokens strictly more probable than ``j`` is ``< p``. This is the smallest set of most
       probable tokens whose mass reaches ``p``, extended to every token tied with its least
       probable member. Then ``pi`` is renormalized over the kept tokens.

    Args:
        row: ``[V]`` logits (finite or ``-inf``) or probabilities (finite, ``>= 0``), any float dtype.
        is_logits: which of the two ``row`` holds.
        temperature: ``> 0``.
        top_k: ``>= 0``.
        top_p: in ``(0, 1]``.
    """
    x = row.to(torch.float64)
    V = x.numel()
    keep = torch.ones(V, dtype=torch.bool)
    if 0 < top_k < V:
        kth = torch.sort(x, descending=True).values[top_k - 1]
        keep = x >= kth
    top = x.max().item()
    # Each weight is computed once per distinct value, so equal values get equal weights, as the
    # top-p tie rule below requires: torch's vectorized float64 pow on the CPU can round an
    # element in a loop's tail one ulp away from an equal element of the vectorized body.
    values, inverse = torch.unique(x, return_inverse=True)
    if is_logits:
        if top == -math.inf:
            return torch.zeros(V, dtype=torch.float64)
        w = torch.exp((values - top) / temperature)[inverse]
    else:
        if top <= 0.0:
            return torch.zeros(V, dtype=torch.float64)
        w = torch.pow(values / top, 1.0 / temperature)[inverse]
    w = torch.where(keep, w, 0.0)
    pi = w / w.sum()
    if top_p < 1.0:
        s = torch.sort(pi, descending=True).values
        above = torch.cumsum(s, dim=0) - s  # mass of the tokens sorted before each one
        above[0] = 0.0
        kept = int((above < top_p).sum())
        tau = s[kept - 1].item()
        pi = torch.where(pi >= tau, pi, 0.0)
        pi = pi / pi.sum()
    return pi


def _bad_rows(rows: torch.Tensor, is_logits: bool) -> bool:
    """Any NaN or ``+inf``; for probabilities also ``-inf`` or a negative value."""
    x = rows.to(torch.float64)
    if is_logits:
        return bool((torch.isnan(x) | (x == math.inf)).any())
    return not bool(((x >= 0) & (x < math.inf)).all())


def _no_mass(row: torch.Tensor, is_logits: bool) -> bool:
    top = row.to(torch.float64).max().item()
    return top == -math.inf if is_logits else top <= 0.0


def request_flags(inputs: ServingInputs, b: int, coins: torch.Tensor | None) -> int:
    """The status bits of request ``b`` (docs/serving.md, "Status"): every value it owns is read.

    ``coins`` [B, K+1] are checked only when the caller passed them as ``uniforms``.
    """
    K_b = int(inputs.num_draft_tokens[b])
    V = inputs.vocab_size
    greedy = float(inputs.temperature[b]) == 0.0
    flags = Status(int(inputs.param_flags[b]))
    ids = inputs.draft_token_ids[b, :K_b].tolist()
    if any(not 0 <= x < V for x in ids):
        flags |= Status.BAD_DRAFT_ID
    rows = inputs.target[b, : K_b + 1]
    if _bad_rows(rows, inputs.target_is_logits):
        flags |= Status.BAD_TARGET_VALUE
    if greedy:
        return int(flags)
    if inputs.uniforms is not None and coins is not None:
        u = coins[b, : K_b + 1]
        if not bool(((u >= 0) & (u < 1)).all()):
            flags |= Status.BAD_UNIFORM
    if inputs.draft is not None and K_b > 0:
        if _bad_rows(inputs.draft[b, :K_b], inputs.draft_is_logits):
            flags |= Status.BAD_DRAFT_VALUE
    if any(_no_mass(rows[k], inputs.target_is_logits) for k in range(K_b + 1)):
        flags |= Status.ZERO_ROW
    return int(flags)


def _to_cpu(inputs: ServingInputs) -> ServingInputs:
    fields = dict(inputs.__dict__)
    for name, value in fields.items():
        if isinstance(value, torch.Tensor):
            fields[name] = value.cpu()
    return ServingInputs(**fields)


def serving_status(inputs: ServingInputs) -> torch.Tensor:
    """``[B]`` int32 status of every request, on the CPU (reads the inputs on the host)."""
    host = _to_cpu(inputs)
    coins = host.uniforms
    return torch.tensor(
        [request_flags(host, b, coins) for b in range(host.batch_size)], dtype=torch.int32
    )


class LastDraw(NamedTuple):
    """How the reference drew a sampling request's last token (float64, ``[V]`` rows)."""

    #: the row drawn from by inverse CDF: the residual ``max(0, q' - p')`` (``q'`` when that is
    #: all zero) or the bonus row ``q'``; unnormalized
    row: torch.Tensor
    #: the coin that drew it (coin ``K_b``)
    coin: float
    #: the target distribution ``q'`` at that position
    target: torch.Tensor
    #: the residual's mass ``sum(max(0, q' - p'))`` before any fallback; None for the bonus row
    residual_mass: float | None


def _verify_request(
    inputs: ServingInputs, b: int, coins: torch.Tensor, rounding: torch.dtype | None = None
) -> tuple[list[int], LastDraw | None]:
    """Request ``b``'s tokens and how its last token was drawn (None for a greedy request)."""
    K_b = int(inputs.num_draft_tokens[b])
    T = float(inputs.temperature[b])
    ids = inputs.draft_token_ids[b, :K_b].tolist()
    target = inputs.target[b]
    if T == 0.0:
        out: list[int] = []
        for k in range(K_b + 1):
            best = int(torch.argmax(target[k].to(torch.float64)))  # ties -> smallest index
            if k == K_b or ids[k] != best:
                return out + [best], None
            out.append(ids[k])
        raise AssertionError("unreachable")
    k_top, p_top = int(inputs.top_k[b]), float(inputs.top_p[b])

    def rounded(row: torch.Tensor) -> torch.Tensor:
        return row if rounding is None else row.to(rounding).to(torch.float64)

    def q_row(k: int) -> torch.Tensor:
        return rounded(transform_row(target[k], inputs.target_is_logits, T, k_top, p_top))

    def p_row(k: int) -> torch.Tensor | None:
        if inputs.draft is None:
            return None
        if inputs.draft_is_logits:
            return rounded(transform_row(inputs.draft[b, k], True, T, k_top, p_top))
        return inputs.draft[b, k].to(torch.float64)

    u = coins[b].to(torch.float64).tolist()
    out = []
    for k, x in enumerate(ids):
        q, p = q_row(k), p_row(k)
        p_x = 1.0 if p is None else float(p[x])
        if not u[k] * p_x < float(q[x]):
            r = residual(p, q, x)
            mass = float(residual_positive_part(p, q, x).sum())
            return out + [inverse_cdf(r, u[K_b])], LastDraw(r, u[K_b], q, mass)
        out.append(x)
    q = q_row(K_b)
    return out + [inverse_cdf(q, u[K_b])], LastDraw(q, u[K_b], q, None)


class _ReferenceServing(Backend):
    """The float64 definition behind :func:`reference_verify_serving` (not registered)."""

    name = "reference"
    capabilities = Capabilities(status_flags=True, serving=True)
    #: dtype the sampling distributions are rounded through (None: exact float64 definition)
    rounding: torch.dtype | None = None

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        from .reference import reference_verify

        return reference_verify(
            inputs.draft_token_ids, inputs.draft_probs, inputs.target_probs, mode=inputs.mode,
            generator=inputs.generator, uniforms=inputs.uniforms,
        )  # fmt: skip

    def _verify_serving(self, inputs: ServingInputs) -> ServingOutput:
        coins = serving_coins(inputs).cpu()
        host = _to_cpu(inputs)
        B, K = host.batch_size, host.num_draft
        token_ids = torch.full((B, K + 1), -1, dtype=torch.int64)
        num_emitted = torch.zeros(B, dtype=torch.int64)
        status = torch.zeros(B, dtype=torch.int32)
        for b in range(B):
            flags = request_flags(host, b, coins)
            status[b] = flags
            if flags:
                continue
            tokens, _ = _verify_request(host, b, coins, self.rounding)
            num_emitted[b] = len(tokens)
            token_ids[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
        device = inputs.device
        return ServingOutput(token_ids.to(device), num_emitted.to(device), status.to(device))


class _Float32RoundedServing(_ReferenceServing):
    rounding = torch.float32


_REFERENCE = _ReferenceServing()
_FLOAT32_ROUNDED = _Float32RoundedServing()


def reference_verify_serving(*args: Any, **kwargs: Any) -> ServingOutput:
    """The serving contract in float64: same arguments and output as
    :meth:`specsample.Backend.verify_serving`. Runs on the CPU; output on the inputs' device."""
    return _REFERENCE.verify_serving(*args, **kwargs)


def reference_verify_serving_flat(*args: Any, **kwargs: Any) -> ServingOutput:
    """:meth:`specsample.Backend.verify_serving_flat` in float64."""
    return _REFERENCE.verify_serving_flat(*args, **kwargs)


def last_draws(*args: Any, **kwargs: Any) -> list[LastDraw | None]:
    """Per request, how the reference drew its last token (:class:`LastDraw`); None for greedy
    and flagged requests. Same arguments as :func:`reference_verify_serving`. The fuzzer uses it to
    tell a float32 rounding tie from a wrong token (docs/fuzz.md)."""
    from .serving import validate_serving

    inputs = validate_serving(*args, **kwargs)
    coins = serving_coins(inputs).cpu()
    host = _to_cpu(inputs)
    draws: list[LastDraw | None] = []
    for b in range(host.batch_size):
        if request_flags(host, b, coins):
            draws.append(None)
            continue
        draws.append(_verify_request(host, b, coins)[1])
    return draws


def float32_sensitive_requests(*args: Any, **kwargs: Any) -> torch.Tensor:
    """``[B]`` bool, on the CPU: requests whose reference tokens change when every sampling
    distribution is rounded to float32 (same arguments as :func:`reference_verify_serving`).

    A backend that transforms logits in float32 (as engines do) cannot see such a difference: a
    residual mass of 1e-245 is zero in float32, and so is a probability under about 1e-45. The
    conformance checks excuse these requests, as the chain checks excuse near-ties.
    """
    exact = _REFERENCE.verify_serving(*args, **kwargs).token_ids.cpu()
    rounded = _FLOAT32_ROUNDED.verify_serving(*args, **kwargs).token_ids.cpu()
    return (exact != rounded).any(dim=1)
