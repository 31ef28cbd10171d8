"""``torch-vectorized``: batched PyTorch tensor ops, no Python loop over B or K, no host sync."""

from __future__ import annotations

from specsample.contract import Backend, Capabilities, VerifyInputs, VerifyOutput
from specsample.contract_tree import TREE_SAMPLING, TreeVerifyInputs, TreeVerifyOutput
from specsample.rng import draw_uniforms
from specsample.serving import ServingInputs, ServingOutput

from ._block_vectorized import verify_block_tensors
from ._memory import check_vectorized_call
from ._vectorized import verify_tensors


class TorchVectorizedBackend(Backend):
    name = "torch-vectorized"
    description = "Batched PyTorch tensor ops; no loop over B or K, no host sync (CPU and GPU)."
    capabilities = Capabilities(
        cuda_graphs=True,
        host_sync_free=True,
        status_flags=True,
        serving=True,
        tree_modes=("random", "greedy"),
        tree_sampling=TREE_SAMPLING,
        tree_rules=("token",),
        rules=("token", "block"),
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

    def _verify_serving(self, inputs: ServingInputs) -> ServingOutput:
        from ._serving_vectorized import serving_arguments, serving_tensors

        return ServingOutput(*serving_tensors(*serving_arguments(inputs)))

    def _verify_tree(self, inputs: TreeVerifyInputs) -> TreeVerifyOutput:
        return verify_tree_inputs(inputs)


def verify_tree_inputs(inputs: TreeVerifyInputs, prepare_fn=None) -> TreeVerifyOutput:
    """Draw the coins if needed and run the batched tree algorithm (backends/_tree_vectorized.py)."""
    from ._tree_vectorized import prepare, verify_tree_tensors

    greedy = inputs.mode == "greedy"
    uniforms = inputs.uniforms
    if uniforms is None and not greedy:
        uniforms = draw_uniforms(
            inputs.batch_size, inputs.num_nodes_max, inputs.generator, inputs.device
        )
    token_ids, num_emitted, accepted, status = verify_tree_tensors(
        inputs.draft_token_ids,
        inputs.parents,
        inputs.num_nodes,
        inputs.draft_probs,
        inputs.target_probs,
        uniforms,
        greedy=greedy,
        draft_sampling=inputs.draft_sampling,
        distinct=inputs.needs_distinct_siblings,
        check_uniforms=inputs.uniforms is not None,
        max_depth=inputs.max_depth,
        prepare_fn=prepare if prepare_fn is None else prepare_fn,
    )
    return TreeVerifyOutput(token_ids, num_emitted, accepted, status)
