"""FlashInfer's ``flashinfer.sampling.chain_speculative_sampling`` behind specsample's contract.

What the adapter maps (docs/peers.md has the whole table):

- ``draft_token_ids`` go in as int32 (FlashInfer's kernel reads int32; an int64 tensor is
  converted here, one small cast).
- ``target_probs`` ``[B, K+1, V]`` go in as they are (FlashInfer wants the bonus row too);
  ``draft_probs=None`` (a deterministic drafter) becomes the one-hot ``[B, K, V]`` FlashInfer
  needs, built inside the call, so its cost is timed.
- The two counters FlashInfer adds into in place are fresh int32 zeros on every call (an int64
  buffer is silently converted to a copy and comes back as zeros; a reused buffer accumulates).
- ``num_emitted`` is FlashInfer's *emitted* draft count plus one. Its *accepted* count is never
  read: it tests every draft position on its own, including positions after the first rejection,
  so it overstates the accepted prefix.
- Randomness is FlashInfer's own Philox stream, seeded from the contract's ``generator`` (same
  generator state, same tokens). There is no way to hand it the contract's ``uniforms``, so the
  backend claims ``Capabilities(uniforms=False)``: the exact checks are not claimed and the
  statistical checks decide correctness.
- Under CUDA-graph capture the seed and offset go in as device tensors that the captured call
  advances itself, so every replay draws new numbers (FlashInfer reads the generator on the host
  otherwise, once, at capture, and every replay would repeat the same tokens). The offset tensor
  is created by the first call outside a capture: created inside one, its zero fill would be part
  of the graph and reset the offset on every replay. Capturing before any eager call on the
  device is refused with a RuntimeError that says so.

FlashInfer is imported on the first call, never at registration.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from typing import Any

import torch
from specsample import Backend, Capabilities
from specsample.contract import VerifyInputs, VerifyOutput

#: the module and function mapped, and the version whose signature the adapter follows
MODULE = "flashinfer.sampling"
FUNCTION = "chain_speculative_sampling"
MAPPED_VERSION = "0.7.0"
INSTALL_HINT = (
    "pip install 'specsample-flashinfer[peer]' (flashinfer-python==0.7.0; JIT-builds its "
    "sampling module with nvcc on first use; offline route in docs/peers.md)"
)


#: the parameters of FlashInfer 0.7.0's function this adapter passes, in order
PARAMETERS = (
    "draft_probs",
    "draft_token_ids",
    "target_probs",
    "maybe_output_accepted_token_num",
    "maybe_output_emitted_draft_token_num",
    "deterministic",
    "generator",
    "seed",
    "offset",
)


def _chain_function() -> Any:
    """FlashInfer's function, imported on first use; TypeError naming the parameters if the
    installed FlashInfer's signature is not the one this adapter maps."""
    fn = getattr(importlib.import_module(MODULE), FUNCTION)
    names = tuple(inspect.signature(fn).parameters)
    if names[: len(PARAMETERS)] != PARAMETERS:
        raise TypeError(
            f"{MODULE}.{FUNCTION} has parameters {names}; specsample-flashinfer maps "
            f"{PARAMETERS} (FlashInfer {MAPPED_VERSION})"
        )
    return fn


#: where the Philox offset of captured calls starts (eager calls use the generator's own offset)
GRAPH_OFFSET_START = 1 << 62


def _capturing(device: torch.device) -> bool:
    """Whether the current stream of ``device`` is capturing a CUDA graph."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def philox_increment(batch: int, num_draft: int) -> int:
    """How far FlashInfer advances its Philox offset per call: ``B * (K+1)`` numbers rounded up to
    a multiple of 4 (one Philox draw gives four)."""
    return (batch * (num_draft + 1) + 3) // 4 * 4


class FlashInferBackend(Backend):
    name = "flashinfer"
    description = (
        "Peer: FlashInfer 0.7.0 chain_speculative_sampling (own RNG, float32 inside; "
        "specsample-flashinfer)."
    )
    peer = "FlashInfer"
    # random mode only: FlashInfer has no greedy chain verification. float16/bfloat16 are
    # accepted and copied to float32 inside FlashInfer (correct, slower). No status flags: the
    # kernel does not bounds-check draft ids, so the core checks every value eagerly first.
    capabilities = Capabilities(
        modes=("random",),
        devices=("cuda",),
        needs_gpu=True,
        cuda_graphs=True,
        uniforms=False,
    )

    def __init__(self) -> None:
        # Per device: the int64 Philox offset every captured call advances (created eagerly).
        self._graph_offsets: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("flashinfer") is None:
            return False, f"flashinfer not installed ({INSTALL_HINT})"
        if "cuda" in cls.capabilities.devices and "cpu" not in cls.capabilities.devices:
            if not torch.cuda.is_available():
                return False, "no CUDA device"
        return True, ""

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        chain_speculative_sampling = _chain_function()
        B, K, V = inputs.batch_size, inputs.num_draft, inputs.vocab_size
        dev = inputs.target_probs.device
        ids32 = inputs.draft_token_ids.to(torch.int32)
        q = inputs.target_probs
        if inputs.draft_probs is None:
            p = torch.zeros((B, K, V), dtype=q.dtype, device=dev)
            p.scatter_(2, inputs.draft_token_ids.to(torch.int64).unsqueeze(-1), 1.0)
        else:
            p = inputs.draft_probs
        accepted = torch.zeros(B, dtype=torch.int32, device=dev)
        emitted = torch.zeros(B, dtype=torch.int32, device=dev)
        rng: dict[str, Any] = {"generator": inputs.generator}
        if _capturing(dev):
            rng = self._captured_rng(inputs, dev)
            rng["offset"].add_(philox_increment(B, K))  # captured: every replay advances it
        elif dev not in self._graph_offsets:
            # Far past any offset an eager generator reaches: replays do not reuse its numbers.
            self._graph_offsets[dev] = torch.full(
                (1,), GRAPH_OFFSET_START, dtype=torch.int64, device=dev
            )
        result = chain_speculative_sampling(
            p, ids32, q, accepted, emitted, deterministic=True, **rng
        )
        tokens = result[0] if isinstance(result, tuple) else result
        # The emitted count comes from the buffer this call zeroed, never from the accepted one.
        num_emitted = emitted.to(torch.int64) + 1
        return VerifyOutput(tokens.to(torch.int64), num_emitted)

    def _captured_rng(self, inputs: VerifyInputs, dev: torch.device) -> dict[str, torch.Tensor]:
        """``seed`` and ``offset`` device tensors for a call being captured in a CUDA graph."""
        offset = self._graph_offsets.get(dev)
        if offset is None:
            raise RuntimeError(
                f"flashinfer: call verify once on {dev} outside CUDA-graph capture before "
                "capturing it (that call creates the Philox offset the graph advances on every "
                "replay; created during the capture, its reset would be replayed too)"
            )
        gen = inputs.generator
        seed_value = gen.initial_seed() if gen is not None else torch.cuda.initial_seed()
        # A fill captured with the graph: replays rewrite the same seed, which is harmless.
        seed = torch.full((1,), seed_value & (2**63 - 1), dtype=torch.int64, device=dev)
        return {"seed": seed, "offset": offset}
