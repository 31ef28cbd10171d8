"""vLLM's v1 ``vllm.v1.sample.rejection_sampler.rejection_sample`` behind specsample's contract.

vLLM verifies a flattened batch: every request's drafts one after the other (``T = B*K`` rows
here, since the contract's chains all have K drafts), ``cu_num_draft_tokens`` the inclusive
running sum of the draft counts, target and draft probabilities ``[T, V]`` *without* the bonus
row, and bonus tokens sampled by the caller. What the adapter maps (docs/peers.md):

- ``draft_token_ids`` ``[B, K]`` -> ``[T]`` int32 (a view when already int32);
  ``draft_probs`` ``[B, K, V]`` -> ``[T, V]`` (a view); ``draft_probs=None`` -> None (vLLM's
  n-gram path, p(x) = 1).
- ``target_probs`` ``[B, K+1, V]`` -> rows ``0..K-1`` as a contiguous ``[T, V]``: one copy of
  ``B*K*V`` values inside the timed call (vLLM asserts contiguity; the contract's layout
  interleaves the bonus rows). The bonus token is drawn by the adapter from row K with
  ``torch.multinomial`` (random) or argmax (greedy), as vLLM's engine does before the call.
- ``num_draft_tokens`` (a host list), ``cu_num_draft_tokens`` (int32 on the device) and the
  sampling metadata depend only on B, K and the device: built once per shape and reused, so
  after the first call they are not in the timed region.
- Sampling metadata is the handful of attributes ``rejection_sample`` reads (``all_greedy``,
  ``all_random``, ``temperature``, ``generators``), duck-typed so the adapter does not follow
  the constructor of vLLM's ``SamplingMetadata``, which changes between releases.
- Randomness: vLLM draws its acceptance uniforms and the exponential noise of its residual
  sampling itself, from the per-request generators it is given. The contract's ``generator``
  goes in as every request's generator (same state, same tokens); the device's default generator
  goes in as no per-request generator (vLLM's unseeded path, one draw). vLLM's signature takes
  no uniforms and the residual token comes from exponential races, not an inverse CDF, so the
  contract's ``uniforms`` cannot be coupled: ``Capabilities(uniforms=False)``.
- ``num_emitted`` is the count of non-placeholder (-1) entries of vLLM's ``[B, K+1]`` output.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from types import SimpleNamespace
from typing import Any

import torch
from specsample import Backend, Capabilities
from specsample.contract import VerifyInputs, VerifyOutput

MODULE = "vllm.v1.sample.rejection_sampler"
FUNCTION = "rejection_sample"
#: the parameters of the v1 signature this adapter calls, in order
PARAMETERS = (
    "draft_token_ids",
    "num_draft_tokens",
    "max_spec_len",
    "cu_num_draft_tokens",
    "draft_probs",
    "target_probs",
    "bonus_token_ids",
    "sampling_metadata",
)
#: vLLM's per-step limit on drafts (MAX_SPEC_LEN in the module)
MAX_SPEC_LEN = 32
GREEDY_TEMPERATURE = -1.0
INSTALL_HINT = "pip install vllm next to specsample (its own torch build; docs/peers.md)"


def _rejection_sample() -> Any:
    """vLLM's function, imported on first use; TypeError if its parameters are not the v1 ones
    this adapter maps."""
    fn = getattr(importlib.import_module(MODULE), FUNCTION)
    names = tuple(inspect.signature(fn).parameters)
    if names[: len(PARAMETERS)] != PARAMETERS:
        raise TypeError(
            f"{MODULE}.{FUNCTION} has parameters {names}; specsample-vllm maps {PARAMETERS} "
            "(vLLM's v1 rejection sampler)"
        )
    return fn


def _is_default(gen: torch.Generator | None, dev: torch.device) -> bool:
    if gen is None:
        return True
    if dev.type == "cuda":
        return gen is torch.cuda.default_generators[dev.index or 0]
    return gen is torch.default_generator


def flat_layout(batch: int, num_draft: int, device: torch.device) -> tuple[list[int], torch.Tensor]:
    """``(num_draft_tokens, cu_num_draft_tokens)`` for B chains of K drafts: ``[K]*B`` on the host
    and the inclusive running sum ``[K, 2K, ..., B*K]`` int32 on ``device``."""
    counts = [num_draft] * batch
    cu = torch.arange(1, batch + 1, dtype=torch.int32, device=device) * num_draft
    return counts, cu


class VllmBackend(Backend):
    name = "vllm"
    description = "Peer: vLLM v1 rejection_sample (flattened layout, own RNG; specsample-vllm)."
    peer = "vLLM"
    # float32: vLLM hands its sampler float32 probabilities (softmax of float32 logits).
    capabilities = Capabilities(
        dtypes=("float32",),
        devices=("cuda",),
        needs_gpu=True,
        max_k=MAX_SPEC_LEN,
        uniforms=False,
    )

    def __init__(self) -> None:
        self._layouts: dict[tuple[int, int, torch.device], tuple[list[int], torch.Tensor]] = {}

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("vllm") is None:
            return False, f"vllm not installed ({INSTALL_HINT})"
        if "cpu" not in cls.capabilities.devices and not torch.cuda.is_available():
            return False, "no CUDA device"
        return True, ""

    def _layout(self, B: int, K: int, dev: torch.device) -> tuple[list[int], torch.Tensor]:
        key = (B, K, dev)
        if key not in self._layouts:
            self._layouts[key] = flat_layout(B, K, dev)
        return self._layouts[key]

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        rejection_sample = _rejection_sample()
        B, K, V = inputs.batch_size, inputs.num_draft, inputs.vocab_size
        q = inputs.target_probs
        dev = q.device
        counts, cu = self._layout(B, K, dev)
        ids = inputs.draft_token_ids.to(torch.int32).reshape(B * K)
        draft = None if inputs.draft_probs is None else inputs.draft_probs.reshape(B * K, V)
        target = q[:, :K].reshape(B * K, V).contiguous()  # the one copy (bonus rows left out)
        greedy = inputs.mode == "greedy"
        gen = inputs.generator
        if greedy:
            bonus = q[:, K].argmax(dim=-1, keepdim=True).to(torch.int32)
        else:
            bonus = torch.multinomial(q[:, K].float(), 1, generator=gen).to(torch.int32)
        metadata = SimpleNamespace(
            all_greedy=greedy,
            all_random=not greedy,
            temperature=torch.full(
                (B,), GREEDY_TEMPERATURE if greedy else 1.0, dtype=torch.float32, device=dev
            ),
            generators={} if _is_default(gen, dev) else dict.fromkeys(range(B), gen),
            top_k=None,
            top_p=None,
        )
        out = rejection_sample(ids, counts, K, cu, draft, target, bonus.contiguous(), metadata)
        tokens = out.to(torch.int64)
        num_emitted = (tokens != -1).sum(dim=1)
        return VerifyOutput(tokens, num_emitted)
