"""``torch-compile``: the vectorized algorithm compiled by ``torch.compile``.

Mode: ``"default"`` with ``dynamic=True``. ``"reduce-overhead"`` would add CUDA graphs, but records a
graph per input shape and keeps static copies of every input (B*K*V floats), which a sampler called
with ever-changing batch sizes cannot afford; ``"max-autotune"`` spends minutes per shape for no
gain on this memory-bound code. ``dynamic=True`` compiles B, K and V as symbols from the first call,
so a new batch size does not recompile. The uniforms are drawn eagerly (one launch) because a
``torch.Generator`` argument breaks the graph. See docs/torch-compile.md for why compiling the loop
version does not help.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from specsample.contract import Backend, Capabilities, VerifyInputs, VerifyOutput
from specsample.rng import draw_uniforms

from ._vectorized import verify_tensors


@functools.lru_cache(maxsize=1)
def compiled_verify() -> Callable:
    """The compiled :func:`verify_tensors` (compiled lazily, on the first call of each variant)."""
    import torch

    return torch.compile(verify_tensors, dynamic=True, mode="default", fullgraph=True)


RECOMPILE_LIMIT = 64


class TorchCompileBackend(Backend):
    name = "torch-compile"
    description = "The vectorized algorithm under torch.compile (inductor, dynamic shapes)."
    capabilities = Capabilities(host_sync_free=True)

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        import torch

        if not hasattr(torch, "compile"):
            return False, f"torch {torch.__version__} has no torch.compile"
        return True, ""

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        import torch

        greedy = inputs.mode == "greedy"
        uniforms = inputs.uniforms
        if uniforms is None and not greedy:
            uniforms = draw_uniforms(
                inputs.batch_size, inputs.num_draft, inputs.generator, inputs.device
            )
        # Each (mode, draft_probs given, dtype, size-1 dims) variant is its own graph; allow them all
        # without touching the process-wide limit (sizes 2..N share one dynamic graph).
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            token_ids, num_emitted = compiled_verify()(
                inputs.draft_token_ids, inputs.draft_probs, inputs.target_probs, uniforms, greedy
            )
        return VerifyOutput(token_ids, num_emitted)
