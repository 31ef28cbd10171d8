"""``torch-compile``: the vectorized algorithm compiled by ``torch.compile``.

Mode: ``"default"`` with ``dynamic=True``. ``"reduce-overhead"`` would add CUDA graphs, but records a
graph per input shape and keeps static copies of every input (B*K*V floats), which a sampler called
with ever-changing batch sizes cannot afford; ``"max-autotune"`` spends minutes per shape for no
gain on this memory-bound code. ``dynamic=True`` compiles B, K and V as symbols from the first call,
so a new batch size does not recompile. Two parts stay eager: the uniforms (a ``torch.Generator``
argument breaks the graph) and the inverse-CDF scan over the vocabulary (torch 2.11's inductor fails
to generate its split-scan kernel for a cumsum of symbolic length on CUDA: ``InductorError`` in
``SplitScan`` codegen, seen on an H100). See docs/torch-compile.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from specsample.contract import Backend, Capabilities, VerifyInputs, VerifyOutput
from specsample.rng import draw_uniforms

from ._vectorized import assemble, inverse_cdf_rows, select_rows

RECOMPILE_LIMIT = 64


@functools.cache
def compiled(fn: Callable) -> Callable:
    """``fn`` under torch.compile (compiled lazily, on the first call of each variant)."""
    import torch

    return torch.compile(fn, dynamic=True, mode="default", fullgraph=True)


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
            num_accepted, x = compiled(select_rows)(
                inputs.draft_token_ids, inputs.draft_probs, inputs.target_probs, uniforms, greedy
            )
            last = x if greedy else inverse_cdf_rows(x, uniforms[:, inputs.num_draft])
            token_ids, num_emitted = compiled(assemble)(inputs.draft_token_ids, num_accepted, last)
        return VerifyOutput(token_ids, num_emitted)
