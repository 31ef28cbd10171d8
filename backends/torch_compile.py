"""``torch-compile``: the vectorized algorithm compiled by ``torch.compile``.

Mode: ``"default"`` with ``dynamic=True``. ``"reduce-overhead"`` would add CUDA graphs, but records a
graph per input shape and keeps static copies of every input (B*K*V floats), which a sampler called
with ever-changing batch sizes cannot afford; ``"max-autotune"`` spends minutes per shape for no
gain on this memory-bound code. Two parts stay eager: the uniforms (a ``torch.Generator`` argument
breaks the graph) and the inverse-CDF scan over the vocabulary (torch 2.11's inductor fails to
generate its split-scan kernel for a cumsum of symbolic length on CUDA: ``InductorError`` in
``SplitScan`` codegen, seen on an H100). See docs/torch-compile.md.

A long-running process must stay usable whatever it is called with, so the number of graphs is
bounded: the arguments are normalized before the compiled call (ids as int64; greedy calls pass no
draft_probs and no uniforms; random calls always check the uniforms), and sizes are traced without
0/1 specialization or duck sizing, so one graph per (device, dtype, mode, draft_probs given) serves
every B >= 1, K >= 1, V >= 1: at most 9 graphs per device, and 6 more for ``rule="block"`` (random
mode only; its decision is its own compiled function). K = 0 (nothing to decide) runs eagerly.
Should the compiler still refuse a graph (torch 2.13's CPU C++ codegen fails on some float16 greedy
graphs, for one), that variant and pattern of size-1 dimensions runs eagerly from then on (the same
vectorized code, identical tokens), with a one-time warning.
"""

from __future__ import annotations

import functools
import threading
import types
import warnings
from collections.abc import Callable

from specsample.contract import Backend, Capabilities, VerifyInputs, VerifyOutput
from specsample.contract_tree import TREE_SAMPLING, TreeVerifyInputs, TreeVerifyOutput
from specsample.rng import draw_uniforms

from ._block_vectorized import block_select_rows, verify_block_tensors
from ._vectorized import assemble, inverse_cdf_rows, select_rows, verify_tensors

#: dynamo's recompile limit for this backend's calls only (the process-wide setting is untouched);
#: well above the 15 graphs per device the normalization allows.
RECOMPILE_LIMIT = 64


@functools.cache
def compiled(fn: Callable, variant: tuple = ()) -> Callable:
    """``fn`` under torch.compile, one compiled function per ``variant`` (compiled lazily).

    Dynamo keeps its cache, and its recompile limit, per code object: each variant compiles its own
    copy of ``fn``'s code, so the graphs of one variant never use up another's budget.
    """
    import torch

    if variant:
        code = fn.__code__.replace()  # equal, but a distinct object: a cache of its own
        fn = functools.wraps(fn)(
            types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        )
    return torch.compile(fn, dynamic=True, mode="default", fullgraph=True)


class TorchCompileBackend(Backend):
    name = "torch-compile"
    description = "The vectorized algorithm under torch.compile (inductor, dynamic shapes)."
    capabilities = Capabilities(
        host_sync_free=True,
        status_flags=True,
        serving=True,
        tree_modes=("random", "greedy"),
        tree_sampling=TREE_SAMPLING,
        tree_rules=("token",),
        rules=("token", "block"),
    )

    def __init__(self) -> None:
        # Graphs the compiler gave up on: a variant (device type, dtype, greedy, draft_probs None)
        # and which of B, K, V are 1 (dynamo traces those sizes separately).
        self._eager_variants: set[tuple] = set()
        self._lock = threading.Lock()

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        import torch

        if not hasattr(torch, "compile"):
            return False, f"torch {torch.__version__} has no torch.compile"
        return True, ""

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        import torch

        from ._memory import check_vectorized_call

        check_vectorized_call(inputs, self.name)  # a clear error before allocating, on CUDA
        greedy = inputs.mode == "greedy"
        uniforms = inputs.uniforms
        if uniforms is None and not greedy:
            uniforms = draw_uniforms(
                inputs.batch_size, inputs.num_draft, inputs.generator, inputs.device
            )
        ids = inputs.draft_token_ids.to(torch.int64)  # one graph for int32 and int64 ids
        # Greedy reads neither draft_probs nor uniforms: passing None keeps their presence out of
        # the guards. Random mode always checks the uniforms (drawn ones are in [0, 1) anyway).
        draft_probs = None if greedy else inputs.draft_probs
        uniforms = None if greedy else uniforms
        variant = (inputs.device.type, str(inputs.target_probs.dtype), greedy, draft_probs is None)
        sizes = (inputs.batch_size == 1, inputs.num_draft == 1, inputs.vocab_size == 1)
        if inputs.rule == "block" and not greedy and inputs.num_draft > 0:
            return self._verify_block(
                variant + ("block",), sizes, ids, draft_probs, inputs, uniforms
            )
        if inputs.num_draft == 0 or (variant, sizes) in self._eager_variants:
            token_ids, num_emitted, flags = verify_tensors(
                ids, draft_probs, inputs.target_probs, uniforms, greedy, not greedy
            )
            return VerifyOutput(token_ids, num_emitted, flags)
        try:
            token_ids, num_emitted, flags = _compiled_verify(
                variant, ids, draft_probs, inputs.target_probs, uniforms, greedy
            )
        except Exception as exc:
            if not _is_compiler_error(exc):
                raise
            self._fall_back((variant, sizes), exc)
            token_ids, num_emitted, flags = verify_tensors(
                ids, draft_probs, inputs.target_probs, uniforms, greedy, not greedy
            )
        return VerifyOutput(token_ids, num_emitted, flags)

    def _verify_serving(self, inputs):
        """The serving call: :func:`serving_select` compiled (one graph per variant of the
        arguments' kinds), the inverse-CDF draw and assembly eager, as in :meth:`_verify`."""
        from specsample.serving import ServingOutput

        from ._serving_vectorized import finish, serving_arguments, serving_select

        args = serving_arguments(inputs)
        variant = (
            "serving", inputs.device.type, str(inputs.target.dtype), inputs.target_is_logits,
            None if inputs.draft is None else inputs.draft_is_logits, inputs.uses_top_k,
            inputs.uses_top_p, inputs.uniforms is not None,
        )  # fmt: skip
        sizes = (inputs.batch_size == 1, inputs.num_draft == 1, inputs.vocab_size == 1)
        if inputs.num_draft == 0 or (variant, sizes) in self._eager_variants:
            return ServingOutput(*finish(args[0], *serving_select(*args)))
        try:
            selected = _compiled_serving_select(variant, args)
        except Exception as exc:
            if not _is_compiler_error(exc):
                raise
            self._fall_back((variant, sizes), exc)
            selected = serving_select(*args)
        return ServingOutput(*finish(args[0], *selected))

    def _verify_tree(self, inputs: TreeVerifyInputs) -> TreeVerifyOutput:
        """Tree verification runs torch-vectorized's tensor algorithm eagerly (identical tokens).

        Compiling its structure/path pass works but specializes on N's pointer-jumping rounds, D
        and the rule: a CPU run of the tree checks spent over ten minutes compiling, so it stays
        eager until a compiled variant is measured to pay off on a GPU.
        """
        from .torch_vectorized import verify_tree_inputs

        return verify_tree_inputs(inputs)

    def _verify_block(self, variant, sizes, ids, draft_probs, inputs, uniforms) -> VerifyOutput:
        """Block verification (random mode, K >= 1): its own graphs, the same eager fallback."""
        if (variant, sizes) not in self._eager_variants:
            try:
                return VerifyOutput(
                    *_compiled_verify_block(
                        variant, ids, draft_probs, inputs.target_probs, uniforms
                    )
                )
            except Exception as exc:
                if not _is_compiler_error(exc):
                    raise
                self._fall_back((variant, sizes), exc)
        return VerifyOutput(
            *verify_block_tensors(ids, draft_probs, inputs.target_probs, uniforms, True)
        )

    def _fall_back(self, key: tuple, exc: Exception) -> None:
        with self._lock:
            first = not self._eager_variants
            self._eager_variants.add(key)
        if first and key[0][0] == "serving":
            warnings.warn(
                f"torch-compile: torch.compile failed for the serving variant {key[0][1:]} with "
                f"{type(exc).__name__}; it and any other variant the compiler refuses run "
                "eagerly (same tokens) from now on. This warning is shown once.",
                RuntimeWarning,
                stacklevel=4,
            )
        elif first:
            (device, dtype, greedy, no_draft, *rule), (b1, k1, v1) = key
            ones = ", ".join(f"{n}=1" for n, one in (("B", b1), ("K", k1), ("V", v1)) if one)
            warnings.warn(
                "torch-compile: torch.compile failed for the variant "
                f"(device={device}, dtype={dtype}, mode={'greedy' if greedy else 'random'}, "
                f"draft_probs={'None' if no_draft else 'given'}"
                f"{', rule=block' if rule else ''}"
                f"{f', {ones}' if ones else ''}) with "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                "it and any other variant the compiler refuses run eagerly (same tokens) "
                "from now on. This warning is shown once.",
                RuntimeWarning,
                stacklevel=4,
            )


def _is_compiler_error(exc: BaseException) -> bool:
    """True for the errors with which dynamo or inductor refuse a graph (not for input errors)."""
    import torch._dynamo.exc as dynamo_exc

    refusals: tuple[type[BaseException], ...] = (
        dynamo_exc.TorchDynamoException,
        dynamo_exc.FailOnRecompileLimitHit,  # not a TorchDynamoException
    )
    try:
        from torch._inductor.exc import InductorError  # raised unwrapped by some C++ failures

        refusals += (InductorError,)
    except ImportError:
        pass
    return isinstance(exc, refusals)


def _compiled_verify(variant, ids, draft_probs, target_probs, uniforms, greedy):
    """The compiled parts around the eager inverse-CDF scan; shapes as in ``select_rows``."""
    import torch
    from torch.fx.experimental import _config as fx_config

    with (
        torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT),
        fx_config.patch(backed_size_oblivious=True, use_duck_shape=False),
    ):
        num_accepted, x, flags = compiled(select_rows, variant)(
            ids, draft_probs, target_probs, uniforms, greedy, not greedy
        )
        last = x if greedy else inverse_cdf_rows(x, uniforms[:, ids.shape[1]])
        token_ids, num_emitted = compiled(assemble)(ids, num_accepted, last, flags)
    return token_ids, num_emitted, flags


def _compiled_serving_select(variant, args):
    """:func:`serving_select` under torch.compile with the settings of :func:`_compiled_verify`."""
    import torch
    from torch.fx.experimental import _config as fx_config

    from ._serving_vectorized import serving_select

    with (
        torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT),
        fx_config.patch(backed_size_oblivious=True, use_duck_shape=False),
    ):
        return compiled(serving_select, variant)(*args)


def _compiled_verify_block(variant, ids, draft_probs, target_probs, uniforms):
    """Block verification: the compiled decision around the eager inverse-CDF scan."""
    import torch
    from torch.fx.experimental import _config as fx_config

    with (
        torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT),
        fx_config.patch(backed_size_oblivious=True, use_duck_shape=False),
    ):
        tau, x, flags = compiled(block_select_rows, variant)(
            ids, draft_probs, target_probs, uniforms, True
        )
        last = inverse_cdf_rows(x, uniforms[:, ids.shape[1]].to(torch.float64))
        token_ids, num_emitted = compiled(assemble)(ids, tau, last, flags)
    return token_ids, num_emitted, flags
