"""Synthetic, LLM-like inputs for tests and benchmarks.

Target rows are softmax(logits) with Gaussian logits scaled by ``peak`` (larger -> more peaked, as
real next-token distributions are); draft rows are softmax of the same logits plus Gaussian noise of
scale ``noise`` (0 -> draft == target, every draft accepted). Draft tokens are sampled from the draft
rows, as a real drafter would. Everything is drawn from one seeded generator: same arguments, same
tensors, on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Named acceptance regimes -> draft noise scale (at peak=3; the benchmark runner measures and records
# the acceptance actually obtained).
ACCEPTANCE_NOISE = {"high": 0.5, "medium": 1.5, "low": 4.0}


@dataclass
class Workload:
    """One verify call's inputs. Shapes: ids [B, K] int64, draft [B, K, V] or None, target [B, K+1, V]."""

    draft_token_ids: torch.Tensor
    draft_probs: torch.Tensor | None
    target_probs: torch.Tensor

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
) -> Workload:
    """Draw an LLM-like verify workload.

    Args:
        batch_size, num_draft, vocab_size: B, K and V.
        dtype: probability dtype (float32, float16 or bfloat16); computed in float32, then cast.
        device: where the tensors live (and are generated).
        acceptance: a regime name from ``ACCEPTANCE_NOISE`` or the noise scale itself.
        peak: logit scale of the target rows.
        with_draft_probs: False gives ``draft_probs=None`` (a deterministic drafter proposing the
            argmax of its noisy logits).
        seed: seed of the generator that draws everything.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    B, K, V = batch_size, num_draft, vocab_size
    logits = torch.randn((B, K + 1, V), generator=gen, device=device) * peak
    target = torch.softmax(logits, dim=-1)
    noise = noise_for(acceptance)
    draft_logits = logits[:, :K] + noise * torch.randn((B, K, V), generator=gen, device=device)
    draft = torch.softmax(draft_logits, dim=-1)
    if with_draft_probs:
        if B * K > 0:
            ids = torch.multinomial(draft.reshape(B * K, V), 1, generator=gen).reshape(B, K)
        else:
            ids = torch.zeros((B, K), dtype=torch.int64, device=device)
        draft_probs = draft.to(dtype)
    else:
        ids = draft_logits.argmax(dim=-1)
        draft_probs = None
    return Workload(ids.to(torch.int64), draft_probs, target.to(dtype))
