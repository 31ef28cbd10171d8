"""Speculative generation with any registered backend in the verify step, and its baseline.

One speculative step, for every request of the batch at once:

1. **draft**: the draft model proposes ``K`` tokens, one forward per token, with its own KV cache
   (the first forward also feeds the token the draft has not seen yet: one, or two when every
   draft token of the previous step was accepted);
2. **target**: the target scores the pending token and the ``K`` proposals in one forward
   (``K + 1`` positions, KV cache), giving ``target_probs`` [B, K+1, V];
3. **verify**: ``backend.verify(draft_ids, draft_probs, target_probs, mode=...)``;
4. **bookkeeping**: the emitted tokens are appended (a request's KV caches roll back for free:
   the next write starts after its last kept token), and one host synchronization reads whether
   every request has its ``max_new_tokens`` (and the status of the verify call).

Requests that are done keep riding along (static batching) but stop growing; their steps are not
counted in the acceptance statistics. The baseline, :func:`autoregressive_generate`, decodes with
the target alone, one forward and one sample per token. Prefill (the prompt) is timed apart and
excluded from tokens/s in both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..contract import MODES, Backend
from .model import CausalLM
from .phases import PhaseTimer


@dataclass
class GenerationResult:
    """Output and measurements of one generation run.

    Attributes:
        tokens: ``[B, max_new_tokens]`` int64, the generated tokens (prompt excluded).
        steps: decoding steps (target forwards after the prompt).
        wall_s: seconds of decoding (prefill excluded), host clock, device synchronized.
        prefill_s: seconds of the prompt forward(s).
        phases: seconds per phase (``draft``, ``target``, ``verify``, ``bookkeeping`` for
            speculation; ``target``, ``sample``, ``bookkeeping`` for the baseline); empty when
            not timed.
        accepted_histogram: speculation only: ``[K+1]`` counts of request-steps that accepted
            ``0..K`` draft tokens (requests still generating only).
        backend: the backend that ran every verify call (None for the baseline).
        verify_calls: how many times ``backend.verify`` was called.
        last_verify: the arguments of the last verify call ``(draft_ids, draft_probs,
            target_probs)`` when asked for (to count its kernel launches afterwards), else None.
    """

    tokens: torch.Tensor
    steps: int
    wall_s: float
    prefill_s: float
    phases: dict[str, float] = field(default_factory=dict)
    accepted_histogram: list[int] | None = None
    backend: str | None = None
    verify_calls: int = 0
    last_verify: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None

    @property
    def new_tokens(self) -> int:
        """Tokens generated over the batch (``B * max_new_tokens``)."""
        return int(self.tokens.numel())

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of decoding, over the batch."""
        return self.new_tokens / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def mean_accepted(self) -> float | None:
        """Mean accepted draft tokens per request-step (0..K); None for the baseline."""
        h = self.accepted_histogram
        if h is None or sum(h) == 0:
            return None
        return sum(i * c for i, c in enumerate(h)) / sum(h)

    def to_dict(self) -> dict[str, Any]:
        """Measurements as JSON-ready values (the tokens are left out)."""
        mean = self.mean_accepted
        return {
            "backend": self.backend,
            "new_tokens": self.new_tokens,
            "steps": self.steps,
            "wall_s": self.wall_s,
            "prefill_s": self.prefill_s,
            "tokens_per_s": self.tokens_per_s,
            "phases_s": dict(self.phases),
            "accepted_histogram": self.accepted_histogram,
            "mean_accepted": mean,
            "tokens_per_step": None if mean is None else mean + 1.0,
            "verify_calls": self.verify_calls,
        }


def _check_common(
    prompts: torch.Tensor, max_new_tokens: int, mode: str, temperature: float
) -> tuple[int, int]:
    if not isinstance(prompts, torch.Tensor) or prompts.dim() != 2:
        raise ValueError(
            f"prompts: expected a [B, T] integer tensor, got "
            f"{tuple(prompts.shape) if isinstance(prompts, torch.Tensor) else type(prompts).__name__}"
        )
    if prompts.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"prompts: expected int32 or int64, got {prompts.dtype}")
    b, t = prompts.shape
    if b < 1 or t < 1:
        raise ValueError(
            f"prompts: expected at least one request of at least one token, got {b}x{t}"
        )
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected an integer >= 1, got {max_new_tokens!r}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if not (temperature > 0):
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    return b, t


def _check_vocab(prompts: torch.Tensor, vocab_size: int) -> None:
    low, high = int(prompts.min()), int(prompts.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"prompts: token ids must lie in [0, {vocab_size}) (the target's vocabulary), "
            f"got ids from {low} to {high}"
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prefill(model: CausalLM, prompts: torch.Tensor, capacity: int) -> None:
    """Reset the cache and run every prompt token but the last (which is pending)."""
    b, t = prompts.shape
    model.reset(b, capacity)
    if t > 1:
        model.forward(prompts[:, :-1], torch.zeros(b, dtype=torch.int64, device=prompts.device))


def _round_up(capacity: int) -> int:
    """KV-cache length, rounded up to a multiple of 16 (aligned rows let fused attention kernels
    take the attention mask)."""
    return -(-capacity // 16) * 16


def _probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)


def _pick(probs: torch.Tensor, mode: str, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of ``probs`` [..., V]: argmax (greedy) or a sample (random)."""
    if mode == "greedy":
        return probs.argmax(dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def autoregressive_generate(
    target: CausalLM,
    prompts: torch.Tensor,
    *,
    max_new_tokens: int,
    mode: str = "random",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    timed: bool = True,
) -> GenerationResult:
    """Decode with the target alone: one forward and one token per step (the baseline).

    Args:
        target: a :class:`~specsample.decode.model.CausalLM`.
        prompts: ``[B, T]`` int64 token ids, ``T >= 1``.
        max_new_tokens: N, tokens generated per request.
        mode: ``"greedy"`` (argmax of the target's probabilities) or ``"random"`` (a sample).
        temperature: the logits are divided by it before the softmax.
        generator: a ``torch.Generator`` on ``prompts.device`` for random mode.
        timed: record time per phase (``target``, ``sample``, ``bookkeeping``).

    Returns:
        :class:`GenerationResult` with ``tokens`` [B, N] int64.
    """
    b, t = _check_common(prompts, max_new_tokens, mode, temperature)
    _check_vocab(prompts, target.vocab_size)
    device = prompts.device
    prompts = prompts.long()
    timer = PhaseTimer(device if timed else None)
    _sync(device)
    t0 = time.perf_counter()
    _prefill(target, prompts, _round_up(t + max_new_tokens + 1))
    _sync(device)
    t1 = time.perf_counter()
    out = torch.empty(b, max_new_tokens, dtype=torch.int64, device=device)
    pending = prompts[:, -1:]
    start = torch.full((b,), t - 1, dtype=torch.int64, device=device)
    for i in range(max_new_tokens):
        timer.start()
        logits = target.forward(pending, start)
        timer.mark("target")
        token = _pick(_probs(logits[:, -1], temperature), mode, generator)
        timer.mark("sample")
        out[:, i] = token
        pending = token[:, None]
        start = start + 1
        timer.mark("bookkeeping")
    _sync(device)
    t2 = time.perf_counter()
    return GenerationResult(
        tokens=out,
        steps=max_new_tokens,
        wall_s=t2 - t1,
        prefill_s=t1 - t0,
        phases=timer.totals() if timed else {},
    )


def speculative_generate(
    target: CausalLM,
    draft: CausalLM,
    prompts: torch.Tensor,
    *,
    backend: Backend,
    num_draft: int,
    max_new_tokens: int,
    mode: str = "random",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    timed: bool = True,
    max_steps: int | None = None,
    keep_last_verify: bool = False,
) -> GenerationResult:
    """Speculative decoding: the draft proposes ``num_draft`` tokens, the target scores them in one
    forward, ``backend.verify`` decides (see the module docstring for the step).

    Args:
        target, draft: :class:`~specsample.decode.model.CausalLM` models with the same vocabulary.
        prompts: ``[B, T]`` int64 token ids, ``T >= 1``, on the models' device.
        backend: a registered backend (``specsample.get_backend(name)``).
        num_draft: K >= 0, draft tokens per step (0 makes every step a plain target sample drawn
            by the backend).
        max_new_tokens: N, tokens kept per request (a request may overshoot inside its last step;
            the extra tokens are dropped).
        mode: ``"greedy"``: the draft proposes its argmax and the verify is argmax verification,
            so the output equals target-only greedy decoding. ``"random"``: the draft samples from
            its distribution, the verify is rejection sampling, and the output is distributed as
            target-only sampling.
        temperature: applied to both models' logits.
        generator: a ``torch.Generator`` on ``prompts.device``, used by the draft's sampling and
            by the verify call.
        timed: record time per phase (``draft``, ``target``, ``verify``, ``bookkeeping``).
        max_steps: stop after this many steps even if some request is short (warm-up runs).
        keep_last_verify: keep the last verify call's arguments in the result.

    Returns:
        :class:`GenerationResult` with ``tokens`` [B, N] int64 and the accepted-length histogram.

    Raises:
        ValueError: mismatched vocabularies, ``num_draft < 0``, bad prompts or arguments; also a
            request the backend flagged in ``status`` (the error names it).
    """
    b, t = _check_common(prompts, max_new_tokens, mode, temperature)
    if not isinstance(num_draft, int) or isinstance(num_draft, bool) or num_draft < 0:
        raise ValueError(f"num_draft: expected an integer >= 0, got {num_draft!r}")
    if draft.vocab_size != target.vocab_size:
        raise ValueError(
            f"draft: its vocabulary has {draft.vocab_size} tokens but the target's has "
            f"{target.vocab_size}; speculative decoding needs one vocabulary"
        )
    _check_vocab(prompts, target.vocab_size)
    k = num_draft
    device = prompts.device
    prompts = prompts.long()
    capacity = _round_up(t + max_new_tokens + 2 * k + 2)
    timer = PhaseTimer(device if timed else None)
    rows = torch.arange(b, device=device)
    offsets = torch.arange(k + 1, device=device)

    _sync(device)
    t0 = time.perf_counter()
    _prefill(target, prompts, capacity)
    if k > 0:
        _prefill(draft, prompts, capacity)
    _sync(device)
    t1 = time.perf_counter()

    seq = torch.zeros(b, capacity, dtype=torch.int64, device=device)
    seq[:, :t] = prompts
    length = torch.full((b,), t, dtype=torch.int64, device=device)  # tokens in seq
    draft_valid = torch.full((b,), t - 1, dtype=torch.int64, device=device)  # draft cache fill
    goal = t + max_new_tokens
    histogram = torch.zeros(k + 1, dtype=torch.int64, device=device)
    steps = 0
    verify_calls = 0
    while True:
        timer.start()
        active = length < goal
        # -- draft: K proposals (the first forward also catches the draft up on pending tokens)
        if k > 0:
            draft_ids = torch.empty(b, k, dtype=torch.int64, device=device)
            draft_probs = (
                torch.empty(b, k, target.vocab_size, dtype=torch.float32, device=device)
                if mode == "random"
                else None
            )
            catch_up = seq[rows[:, None], draft_valid[:, None] + offsets[None, :2]]
            logits = draft.forward(catch_up, draft_valid)
            last = logits[rows, length - 1 - draft_valid]  # [B, V]: after the last real token
            for i in range(k):
                p = _probs(last, temperature)
                token = _pick(p, mode, generator)
                draft_ids[:, i] = token
                if draft_probs is not None:
                    draft_probs[:, i] = p
                if i + 1 < k:
                    last = draft.forward(token[:, None], length + i)[:, 0]
        else:
            draft_ids = torch.empty(b, 0, dtype=torch.int64, device=device)
            draft_probs = (
                torch.empty(b, 0, target.vocab_size, dtype=torch.float32, device=device)
                if mode == "random"
                else None
            )
        timer.mark("draft")
        # -- target: the pending token and the K proposals, one forward
        pending = seq[rows, length - 1][:, None]
        target_in = torch.cat([pending, draft_ids], dim=1)
        target_probs = _probs(target.forward(target_in, length - 1), temperature)
        timer.mark("target")
        # -- verify
        out = backend.verify(draft_ids, draft_probs, target_probs, mode=mode, generator=generator)
        verify_calls += 1
        timer.mark("verify")
        # -- bookkeeping: append the emitted tokens of the requests still generating
        emitted = torch.where(active, out.num_emitted, torch.zeros_like(out.num_emitted))
        where = length[:, None] + offsets[None, :]
        keep = offsets[None, :] < emitted[:, None]
        seq.scatter_(1, where, torch.where(keep, out.token_ids, seq.gather(1, where)))
        accepted = (emitted - 1).clamp(min=0)
        histogram.index_add_(0, accepted, active.long())  # no host sync (a mask index would)
        caught_up = length + torch.clamp(accepted, max=max(k - 1, 0))
        draft_valid = torch.where(active, caught_up, draft_valid)
        length = length + emitted
        steps += 1
        # the one host synchronization of a step: is every request done, did the backend flag one
        shortest, flagged = torch.stack([length.min(), (out.status != 0).any().long()]).tolist()
        timer.mark("bookkeeping")
        if flagged:
            out.raise_for_status()
        if shortest >= goal or (max_steps is not None and steps >= max_steps):
            break
    _sync(device)
    t2 = time.perf_counter()
    return GenerationResult(
        tokens=seq[:, t:goal].clone(),
        steps=steps,
        wall_s=t2 - t1,
        prefill_s=t1 - t0,
        phases=timer.totals() if timed else {},
        accepted_histogram=histogram.tolist(),
        backend=backend.name,
        verify_calls=verify_calls,
        last_verify=(draft_ids, draft_probs, target_probs) if keep_last_verify else None,
    )
