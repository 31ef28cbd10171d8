"""``torch-vectorized``: batched PyTorch tensor ops, no Python loop over B or K, no host sync."""

from __future__ import annotations

from specsample.contract import Backend, Capabilities, VerifyInputs, VerifyOutput
from specsample.rng import draw_uniforms

from ._block_vectorized import verify_block_tensors
from ._memory import check_vectorized_call
from ._vectorized import verify_tensors


class TorchVectorizedBackend(Backend):
    name = "torch-vectorized"
    description = "Batched PyTorch tensor ops; no loop over B or K, no host sync (CPU and GPU)."
    capabilities = Capabilities(
        cuda_graphs=True, host_sync_free=True, status_flags=True, rules=("token", "block")
    )

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        check_vectorized_call(inputs, self.name)  # a clear error before allocating, on CUDA
        greedy = inputs.mode == "greedy"
        uniforms = inputs.uniforms
        if uniforms is None and not greedy:
            uniforms = draw_uniforms(
                inputs.batch_size, inputs.num_draft, inputs.generator, inputs.device
            )
        if inputs.rule == "block" and not greedy and inputs.num_draft > 0:
            token_ids, num_emitted, status = verify_block_tensors(
                inputs.draft_token_ids,
                inputs.draft_probs,
                inputs.target_probs,
                uniforms,
                check_uniforms=inputs.uniforms is not None,
            )
            return VerifyOutput(token_ids, num_emitted, status)
        token_ids, num_emitted, status = verify_tensors(
            inputs.draft_token_ids,
            inputs.draft_probs,
            inputs.target_probs,
            uniforms,
            greedy,
            check_uniforms=inputs.uniforms is not None,
        )
        return VerifyOutput(token_ids, num_emitted, status)
