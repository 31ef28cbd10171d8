"""The tree kernel's torch op for ``cuda-cpp``: ``torch.ops.specsample.verify_tree``.

The kernel is ``verify_tree_kernel`` in ``csrc/kernel_tree.cuh`` (one thread block per request,
one launch per call; docs/dev/cuda-kernel.md, "Tree verification"); the op is registered by
``csrc/verify_torch_tree.cu`` in the same extension as ``specsample::verify``. This module registers
its fake (meta) implementation and turns validated
:class:`~specsample.contract_tree.TreeVerifyInputs` into one call.
"""

from __future__ import annotations

import threading

#: the op's name and schema (``TORCH_LIBRARY_FRAGMENT`` in ``csrc/verify_torch_tree.cu``)
TREE_OP_NAME = "specsample::verify_tree"
TREE_OP_SCHEMA = (
    "verify_tree(Tensor draft_token_ids, Tensor parents, Tensor num_nodes, Tensor? draft_probs, "
    "Tensor target_probs, Tensor? uniforms, Generator? generator, bool greedy, bool distinct, "
    "bool without, int max_depth, int cluster=0, bool traversal=False) -> "
    "(Tensor, Tensor, Tensor, Tensor)"
)
#: nodes per request the kernel holds (kMaxTreeNodes in csrc/kernel_tree.cuh)
MAX_TREE_NODES = 128
#: blocks per request the kernel is built for (thread-block clusters from sm_90)
TREE_CLUSTER_SIZES = (1, 2, 4, 8, 16)


def tree_cluster_size(batch_size: int, num_sms: int, clusters: bool) -> int:
    """Blocks per request of a call (``tree_cluster_size`` in ``csrc/verify_torch_tree.cu``): 16 up to
    B = 4, then the largest of 8, 4, 2 that keeps ``B * CL`` blocks within one per SM, else 1."""
    if not clusters:
        return 1
    if batch_size <= 4:
        return 16
    for cl in (8, 4, 2):
        if batch_size * cl <= num_sms:
            return cl
    return 1


def is_traversal(inputs) -> bool:
    """True when a call runs the traversal kernel: ``rule="traversal"`` in random mode (greedy
    mode is the token rule's walk)."""
    return inputs.rule == "traversal" and inputs.mode == "random"


_lock = threading.Lock()
_op = None


def _register_fake() -> None:
    import torch

    @torch.library.register_fake(TREE_OP_NAME)
    def _verify_tree_fake(
        draft_token_ids, parents, num_nodes, draft_probs, target_probs, uniforms, generator, greedy,
        distinct, without, max_depth, cluster=0, traversal=False,
    ):  # fmt: skip
        B = target_probs.shape[0]
        tokens = target_probs.new_empty((B, max_depth + 1), dtype=torch.int64)
        num = target_probs.new_empty((B,), dtype=torch.int64)
        nodes = target_probs.new_empty((B, max_depth), dtype=torch.int64)
        status = target_probs.new_empty((B,), dtype=torch.int32)
        return tokens, num, nodes, status


def load_tree_op():
    """Build/load the extension once and return ``torch.ops.specsample.verify_tree``."""
    global _op
    if _op is not None:
        return _op
    from .cuda_cpp import load_op

    load_op()  # builds and loads the extension that registers both ops
    with _lock:
        if _op is None:
            import torch

            _register_fake()
            _op = torch.ops.specsample.verify_tree
    return _op


def verify_tree_cuda_cpp(inputs, cluster: int = 0):
    """One launch of the tree kernel on validated ``TreeVerifyInputs``; ``TreeVerifyOutput``.

    ``cluster`` forces the blocks per request (1, 2, 4, 8 or 16; 0: :func:`tree_cluster_size`),
    for tests and tuning.

    Greedy mode, the target-only rule (``draft_probs=None``) or recursive rejection sampling
    with or without replacement (token rule); ``rule="traversal"`` in random mode runs the
    traversal kernel (``csrc/kernel_traversal.cuh``, one block per request: ``cluster`` 0 or 1),
    in greedy mode the token rule's walk. The coins are ``inputs.uniforms`` or, without them,
    drawn in the kernel from the generator's Philox state (node i's coin is the chain kernel's
    i-th uniform of subsequence b; no host sync).
    """
    from specsample.contract_tree import TreeVerifyOutput

    greedy = inputs.mode == "greedy"
    if cluster > 1 and is_traversal(inputs) and not greedy:
        # refused here, as cupy does, before the op: the op's own check (a C++ exception) crashed
        # the process on an H100 instead of raising RuntimeError, and is not yet understood
        raise ValueError(
            f"rule='traversal' runs one block per request: cluster must be 0 or 1, got {cluster}"
        )
    has_u = inputs.uniforms is not None and not greedy
    has_p = inputs.draft_probs is not None and not greedy
    tokens, num, nodes, status = load_tree_op()(
        inputs.draft_token_ids,
        inputs.parents,
        inputs.num_nodes,
        inputs.draft_probs if has_p else None,
        inputs.target_probs,
        inputs.uniforms if has_u else None,
        inputs.generator if not (greedy or has_u) else None,
        greedy,
        inputs.needs_distinct_siblings,
        inputs.draft_sampling == "without_replacement",
        inputs.max_depth,
        cluster,
        is_traversal(inputs),
    )
    return TreeVerifyOutput(tokens, num, nodes, status)
