"""Synthetic, LLM-like inputs for tests and benchmarks, with acceptance calibration.

Target rows are softmax(logits) with Gaussian logits scaled by ``peak`` (larger -> more peaked, as
real next-token distributions are); draft rows are softmax of the same logits plus Gaussian noise of
scale ``noise`` (0 -> draft == target, every draft accepted). Draft tokens are sampled from the draft
rows, as a real drafter would (or, with ``greedy_drafter``, are the argmax of the draft logits, as a
greedy drafter's would be). Everything is drawn from one seeded generator: same arguments, same
tensors, on any device.

Acceptance calibration: instead of a noise scale, a caller may ask for a mean acceptance length
``tau`` (tokens emitted per verify call, accepted drafts + 1, between 1 and K+1). Each draft position
is accepted with the same probability ``alpha`` (rows are i.i.d.), so
``tau = 1 + alpha + ... + alpha**K``; :func:`calibrate_noise` solves that for ``alpha`` and then
bisects the noise scale until a sample of rows of the same vocabulary size has that ``alpha``:
``E[sum_x min(p(x), q(x))]`` for rejection sampling, ``P(argmax(draft) == argmax(target))`` for
greedy verification. The value really obtained on a workload is given by
:func:`expected_acceptance` (exact expectation given the drawn tensors) and is what the benchmark
results record, beside the value measured from the backends' outputs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

# Named acceptance regimes -> draft noise scale (at peak=3), for callers that pass a regime name to
# ``acceptance``. Kept for compatibility; the benchmarks calibrate with ``acceptance_length``.
ACCEPTANCE_NOISE = {"high": 0.5, "medium": 1.5, "low": 4.0}

# Named acceptance regimes -> per-position acceptance probability alpha. The requested mean
# acceptance length at K drafts is then 1 + alpha + ... + alpha**K (see acceptance_length_for).
ACCEPTANCE_RATE = {"high": 0.8, "medium": 0.6, "low": 0.3}


@dataclass
class Workload:
    """One verify call's inputs. Shapes: ids [B, K] int64, draft [B, K, V] or None, target [B, K+1, V].

    ``noise`` is the draft noise scale used; ``requested_acceptance_length`` the calibration target
    (None when the noise was given directly).
    """

    draft_token_ids: torch.Tensor
    draft_probs: torch.Tensor | None
    target_probs: torch.Tensor
    noise: float | None = None
    requested_acceptance_length: float | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        B, K1, V = self.target_probs.shape
        return B, K1 - 1, V

    def nbytes(self) -> int:
        """Bytes held by the three input tensors."""
        total = self.draft_token_ids.nbytes + self.target_probs.nbytes
        return total + (self.draft_probs.nbytes if self.draft_probs is not None else 0)


def noise_for(acceptance: str | float) -> float:
    """The draft noise scale for a named regime (``high``, ``medium``, ``low``) or a number."""
    if isinstance(acceptance, str):
        try:
            return ACCEPTANCE_NOISE[acceptance]
        except KeyError:
            raise ValueError(
                f"acceptance must be one of {sorted(ACCEPTANCE_NOISE)} or a number, got {acceptance!r}"
            ) from None
    return float(acceptance)


def length_from_rate(alpha: float, num_draft: int) -> float:
    """Mean acceptance length ``1 + alpha + ... + alpha**K`` for per-position acceptance ``alpha``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return float(sum(alpha**j for j in range(num_draft + 1)))


def rate_from_length(length: float, num_draft: int) -> float:
    """Invert :func:`length_from_rate`: the per-position acceptance giving mean length ``length``."""
    if not 1.0 <= length <= num_draft + 1:
        raise ValueError(
            f"acceptance_length must be in [1, K+1] = [1, {num_draft + 1}], got {length!r}"
        )
    if num_draft == 0 or length >= num_draft + 1:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):  # length_from_rate is increasing in alpha
        mid = (lo + hi) / 2
        if length_from_rate(mid, num_draft) < length:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def acceptance_length_for(regime: str | float, num_draft: int) -> float:
    """The requested mean acceptance length for a regime name, ``"rate=ALPHA"`` or a number.

    A number is the mean acceptance length itself and must lie in ``[1, K+1]``.
    """
    if isinstance(regime, str):
        if regime in ACCEPTANCE_RATE:
            return length_from_rate(ACCEPTANCE_RATE[regime], num_draft)
        if regime.startswith("rate="):
            return length_from_rate(float(regime[5:]), num_draft)
        try:
            regime = float(regime)
        except ValueError:
            raise ValueError(
                f"acceptance regime must be one of {sorted(ACCEPTANCE_RATE)}, 'rate=ALPHA' or a "
                f"mean acceptance length, got {regime!r}"
            ) from None
    length = float(regime)
    rate_from_length(length, num_draft)  # range check
    return length


def _position_rate(logits: torch.Tensor, eps: torch.Tensor, noise: float, greedy: bool) -> float:
    """Mean per-position acceptance over sample rows ``logits`` [R, V] at draft noise ``noise``."""
    draft_logits = logits + noise * eps
    if greedy:
        return float((draft_logits.argmax(-1) == logits.argmax(-1)).double().mean())
    q = torch.softmax(logits, dim=-1)
    p = torch.softmax(draft_logits, dim=-1)
    return float(torch.minimum(p, q).sum(-1).double().mean())


@functools.lru_cache(maxsize=256)
def calibrate_noise(
    num_draft: int,
    vocab_size: int,
    acceptance_length: float,
    *,
    mode: str = "random",
    peak: float = 3.0,
    rows: int | None = None,
    seed: int = 12345,
) -> float:
    """The draft noise scale whose workloads have mean acceptance length ``acceptance_length``.

    Args:
        num_draft, vocab_size: K and V of the workloads to calibrate for.
        acceptance_length: requested mean tokens emitted per call, in ``[1, K+1]``.
        mode: ``"random"`` (rejection sampling, drafts sampled from p) or ``"greedy"`` (argmax
            verification, greedy drafter).
        peak: logit scale of the target rows, as in :func:`make_workload`.
        rows: sample rows (on the CPU, float32) used to estimate the per-position acceptance;
            default 64 for random mode (a smooth estimate), 256 for greedy (a 0/1 frequency).
        seed: seed of the sample (fixed, so calibration is deterministic and cached).

    Returns:
        The noise scale (0.0 when every draft must be accepted).
    """
    if mode not in ("random", "greedy"):
        raise ValueError(f"mode must be 'random' or 'greedy', got {mode!r}")
    alpha = rate_from_length(acceptance_length, num_draft)
    if alpha >= 1.0:
        return 0.0
    if rows is None:
        rows = 256 if mode == "greedy" else 64
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((rows, vocab_size), generator=gen) * peak
    eps = torch.randn((rows, vocab_size), generator=gen)
    greedy = mode == "greedy"
    # Bisect log(noise): the acceptance falls as the noise grows (common random numbers make the
    # estimate a monotone function of the noise, so bisection is well defined).
    lo, hi = math.log(1e-4), math.log(1e3)
    if _position_rate(logits, eps, math.exp(hi), greedy) > alpha:
        return math.exp(hi)  # cannot get that low; the most noise we allow
    for _ in range(32):
        mid = (lo + hi) / 2
        if _position_rate(logits, eps, math.exp(mid), greedy) > alpha:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def make_workload(
    batch_size: int,
    num_draft: int,
    vocab_size: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    acceptance: str | float = "high",
    peak: float = 3.0,
    with_draft_probs: bool = True,
    seed: int = 0,
    acceptance_length: float | None = None,
    greedy_drafter: bool = False,
) -> Workload:
    """Draw an LLM-like verify workload.

    Args:
        batch_size, num_draft, vocab_size: B, K and V.
        dtype: probability dtype (float32, float16 or bfloat16); computed in float32, then cast.
        device: where the tensors live (and are generated).
        acceptance: a regime name from ``ACCEPTANCE_NOISE`` or the noise scale itself (ignored when
            ``acceptance_length`` is given).
        peak: logit scale of the target rows.
        with_draft_probs: False gives ``draft_probs=None`` (a deterministic drafter proposing the
            argmax of its noisy logits).
        seed: seed of the generator that draws everything.
        acceptance_length: calibrate the noise (see :func:`calibrate_noise`) so that the mean
            acceptance length is about this, in ``[1, K+1]``.
        greedy_drafter: draft ids are the argmax of the draft logits (draft_probs still given);
            the natural input for greedy verification. Calibration then targets greedy acceptance.
    """
    device = torch.device(device)
    B, K, V = batch_size, num_draft, vocab_size
    if acceptance_length is not None:
        greedy_calibration = greedy_drafter or not with_draft_probs
        noise = calibrate_noise(
            K,
            V,
            float(acceptance_length),
            mode="greedy" if greedy_calibration else "random",
            peak=peak,
        )
    else:
        noise = noise_for(acceptance)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    logits = torch.randn((B, K + 1, V), generator=gen, device=device) * peak
    target = torch.softmax(logits, dim=-1)
    draft_logits = logits[:, :K] + noise * torch.randn((B, K, V), generator=gen, device=device)
    del logits
    draft = torch.softmax(draft_logits, dim=-1)
    if with_draft_probs:
        if greedy_drafter:
            ids = draft_logits.argmax(dim=-1)
        elif B * K > 0:
            ids = torch.multinomial(draft.reshape(B * K, V), 1, generator=gen).reshape(B, K)
        else:
            ids = torch.zeros((B, K), dtype=torch.int64, device=device)
        draft_probs = draft.to(dtype)
    else:
        ids = draft_logits.argmax(dim=-1)
        draft_probs = None
    return Workload(
        ids.to(torch.int64),
        draft_probs,
        target.to(dtype),
        noise=noise,
        requested_acceptance_length=acceptance_length,
    )


@dataclass(frozen=True)
class AcceptanceStats:
    """Exact expectations for one workload (over the verifier's randomness, tensors fixed).

    Attributes:
        mean_length: mean tokens emitted per request (accepted drafts + 1).
        mean_accepted: mean accepted drafts per request (``mean_length - 1``).
        reject_fraction: fraction of requests that reject some draft (and so read a draft row).
        position_rate: mean per-position acceptance probability.
    """

    mean_length: float
    mean_accepted: float
    reject_fraction: float
    position_rate: float

    def to_dict(self) -> dict[str, float]:
        return {
            "mean_length": self.mean_length,
            "mean_accepted": self.mean_accepted,
            "reject_fraction": self.reject_fraction,
            "position_rate": self.position_rate,
        }


def expected_acceptance(workload: Workload, mode: str = "random") -> AcceptanceStats:
    """Expected acceptance of ``workload`` under ``mode``, exactly, from its tensors.

    Random mode: draft k of request b is accepted with probability ``a = min(1, q(x)/p(x))`` at its
    id x, so the expected length is ``1 + sum_j prod_{i<j} a_i``. Greedy mode is deterministic: the
    length is one plus the leading run of drafts equal to the target argmax.
    """
    if mode not in ("random", "greedy"):
        raise ValueError(f"mode must be 'random' or 'greedy', got {mode!r}")
    B, K, V = workload.shape
    ids = workload.draft_token_ids.to(torch.int64)
    q = workload.target_probs
    if B == 0:
        return AcceptanceStats(float("nan"), float("nan"), float("nan"), float("nan"))
    if K == 0:
        return AcceptanceStats(1.0, 0.0, 0.0, 1.0)
    if mode == "greedy":
        a = (ids == q[:, :K].argmax(dim=-1)).double()
    else:
        q_at = q[:, :K].gather(-1, ids.unsqueeze(-1)).squeeze(-1).double()
        if workload.draft_probs is None:
            p_at = torch.ones_like(q_at)
        else:
            p_at = workload.draft_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1).double()
        a = torch.where(p_at > 0, (q_at / p_at.clamp_min(1e-300)).clamp(max=1.0), 1.0)
    reach = torch.cumprod(a, dim=-1)  # probability that drafts 0..j are all accepted
    mean_accepted = float(reach.sum(-1).mean())
    all_accepted = float(reach[:, -1].mean())
    return AcceptanceStats(
        mean_length=1.0 + mean_accepted,
        mean_accepted=mean_accepted,
        reject_fraction=1.0 - all_accepted,
        position_rate=float(a.mean()),
    )
