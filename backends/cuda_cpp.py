"""``cuda-cpp``: one fused CUDA C++ kernel per call, as a torch custom op.

The kernel (``csrc/verify_kernel.cuh``) and its binding (``csrc/verify_torch*.cu``) are compiled just
in time by ``torch.utils.cpp_extension`` on first use, for the device's own architecture, and cached
in torch's extension directory; ``specsample build`` does it ahead of time. The binding registers
``torch.ops.specsample.verify`` (schema in :data:`specsample.backends._cuda_build.OP_SCHEMA`); this
module registers its fake (meta) implementation, so the op works under ``torch.compile`` and inside
CUDA graphs. See docs/backends/cuda-cpp.md.
"""

from __future__ import annotations

import threading

from specsample.contract import Backend, VerifyInputs, VerifyOutput

from . import _cuda_block, _cuda_build

_op_lock = threading.Lock()
_op = None


def _register_fake() -> None:
    import torch

    @torch.library.register_fake(_cuda_build.OP_NAME)
    def _verify_fake(
        draft_token_ids,
        draft_probs,
        target_probs,
        uniforms,
        generator,
        greedy,
        cluster=0,
        threads=0,
        rows_per_step=0,
        split=-1,
    ):
        B, K1 = target_probs.shape[0], target_probs.shape[1]
        tokens = target_probs.new_empty((B, K1), dtype=torch.int64)
        num = target_probs.new_empty((B,), dtype=torch.int64)
        status = target_probs.new_empty((B,), dtype=torch.int32)
        return tokens, num, status


def load_op(verbose: bool = False):
    """Build/load the extension once and return ``torch.ops.specsample.verify``."""
    global _op
    if _op is not None:
        return _op
    with _op_lock:
        if _op is None:
            import torch

            _cuda_build.build_extension(verbose=verbose)
            _register_fake()
            _op = torch.ops.specsample.verify
    return _op


def verify_op(
    draft_token_ids,
    draft_probs,
    target_probs,
    *,
    mode: str = "random",
    generator=None,
    uniforms=None,
    cluster: int = 0,
    threads: int = 0,
    rows_per_step: int = 0,
    split: int = -1,
):
    """Call the custom op directly (no validation): ``(token_ids, num_emitted, status)``.

    ``cluster``/``threads``/``rows_per_step`` override the automatic launch configuration (0 =
    automatic); ``split`` picks greedy mode's kernel (-1: automatic, the split kernel at the
    smallest batches; 0: always the cluster kernel; N > 0: the split kernel with N chunks per row).
    They exist for tuning and tests.
    """
    op = load_op()
    return op(
        draft_token_ids,
        draft_probs,
        target_probs,
        uniforms,
        generator,
        mode == "greedy",
        cluster,
        threads,
        rows_per_step,
        split,
    )


class CudaCppBackend(Backend):
    name = "cuda-cpp"
    description = "One fused CUDA C++ kernel per call (torch extension, JIT-built on first use)."
    capabilities = _cuda_build.KERNEL_CAPABILITIES

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        reason = _cuda_build.torch_cuda_reason()
        if reason:
            return False, reason
        if _cuda_build.find_nvcc() is None:
            return False, "nvcc not found (install the CUDA toolkit or set CUDA_HOME)"
        reason = _cuda_build.ninja_reason()
        if reason:
            return False, reason
        return True, ""

    @classmethod
    def build(cls, verbose: bool = False) -> str:
        """Compile (if needed) and load the extension now; return the shared library's path."""
        path = _cuda_build.build_extension(verbose=verbose)
        load_op()
        return path

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        if _cuda_block.uses_block_kernel(inputs):
            return _cuda_block.verify_block_inputs(inputs)
        token_ids, num_emitted, status = verify_op(
            inputs.draft_token_ids,
            inputs.draft_probs,
            inputs.target_probs,
            mode=inputs.mode,
            generator=inputs.generator if inputs.uniforms is None else None,
            uniforms=inputs.uniforms,
        )
        return VerifyOutput(token_ids, num_emitted, status)

    def _verify_serving(self, inputs):
        """The serving entry point: one launch of ``specsample::verify_serving``."""
        from specsample.serving import ServingOutput

        from ._cuda_serving import serving_op

        return ServingOutput(*serving_op(inputs))

    def _verify_tree(self, inputs):
        """Tree verification (greedy, target-only): one launch of the tree kernel
        (``csrc/kernel_tree.cuh``, ``backends/_cuda_tree.py``)."""
        from . import _cuda_tree

        return _cuda_tree.verify_tree_cuda_cpp(inputs)
