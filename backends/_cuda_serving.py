"""``cuda-cpp``'s serving entry point: the ``specsample::verify_serving`` torch op.

The op is built with the rest of the extension (``csrc/verify_torch_serving.cu``, kernel
``csrc/kernel_serving.cuh``); this module registers its fake (meta) implementation, so the op
works under ``torch.compile`` and inside CUDA graphs, and turns validated
:class:`specsample.serving.ServingInputs` into one launch. See docs/serving.md and
docs/dev/cuda-kernel.md ("Serving").
"""

from __future__ import annotations

import threading
from typing import Any

SERVING_OP_NAME = "specsample::verify_serving"
SERVING_OP_SCHEMA = (
    "verify_serving(Tensor draft_token_ids, Tensor num_draft_tokens, Tensor target, "
    "Tensor? draft, Tensor temperature, Tensor top_k, Tensor top_p, Tensor param_flags, "
    "Tensor? uniforms, Tensor? seeds, Tensor? offsets, Generator? generator, "
    "bool target_logits, bool draft_logits) -> (Tensor, Tensor, Tensor)"
)

_lock = threading.Lock()
_op = None


def _register_fake() -> None:
    import torch

    @torch.library.register_fake(SERVING_OP_NAME)
    def _serving_fake(
        draft_token_ids,
        num_draft_tokens,
        target,
        draft,
        temperature,
        top_k,
        top_p,
        param_flags,
        uniforms,
        seeds,
        offsets,
        generator,
        target_logits,
        draft_logits,
    ):
        B, K1 = target.shape[0], target.shape[1]
        tokens = target.new_empty((B, K1), dtype=torch.int64)
        num = target.new_empty((B,), dtype=torch.int64)
        status = target.new_empty((B,), dtype=torch.int32)
        return tokens, num, status


def load_serving_op() -> Any:
    """Build/load the extension once and return ``torch.ops.specsample.verify_serving``."""
    global _op
    if _op is not None:
        return _op
    with _lock:
        if _op is None:
            import torch

            from .cuda_cpp import load_op

            load_op()
            _register_fake()
            _op = torch.ops.specsample.verify_serving
    return _op


def serving_op(inputs: Any) -> tuple[Any, Any, Any]:
    """One launch for validated :class:`specsample.serving.ServingInputs` (``B > 0``):
    ``(token_ids [B, K+1] int64, num_emitted [B] int64, status [B] int32)``.

    Coins: ``inputs.uniforms``, else ``inputs.seeds`` / ``inputs.offsets``, else
    ``inputs.generator`` (its Philox state advanced by ``4 * ceil((K+1) / 4)``, subsequence ``b``
    per request, as the verify op draws).
    """
    op = load_serving_op()
    explicit = inputs.uniforms is not None or inputs.seeds is not None
    return op(
        inputs.draft_token_ids,
        inputs.num_draft_tokens,
        inputs.target,
        inputs.draft,
        inputs.temperature,
        inputs.top_k,
        inputs.top_p,
        inputs.param_flags,
        inputs.uniforms,
        inputs.seeds,
        inputs.offsets,
        None if explicit else inputs.generator,
        inputs.target_is_logits,
        inputs.draft_is_logits,
    )
