"""Block verification (``rule="block"``) on the CUDA kernel: launch shape and the ``cuda-cpp`` op.

The kernel is ``csrc/kernel_block.cuh`` (one cluster of blocks per request, or at the smallest
batches the split variant with many blocks per request; one launch per call; docs/dev/cuda-kernel.md,
"Block verification"). ``cuda-cpp`` calls it through the torch custom op
``specsample::verify_block`` (defined in ``csrc/verify_torch_block.cu``, built with the token op), and
``cupy`` launches the same kernels through NVRTC (:mod:`specsample.backends._cupy_block`). Both
take their launch shape from :func:`block_launch_config`.
"""

from __future__ import annotations

import threading

from specsample.contract import VerifyInputs, VerifyOutput

OP_NAME = "specsample::verify_block"

_lock = threading.Lock()
_op = None
_device_facts: dict[int, tuple[int, bool]] = {}


def block_launch_config(batch: int, num_sms: int, clusters: bool) -> tuple[int, int]:
    """``(cluster, threads)``: blocks per request and threads per block of the block kernel.

    Every request reads ``2K`` full rows (``K`` without draft probabilities) plus its bonus row,
    so the kernel spreads each request over as many SMs as the batch leaves free: the smallest
    power of two ``cluster`` (at most 16, 1 without clusters) with ``batch * cluster >= 2 *
    num_sms``; 512 threads while the grid fits one block per SM, else 256.
    """
    if batch < 1 or num_sms < 1:
        raise ValueError(f"batch and num_sms must be >= 1, got batch={batch}, num_sms={num_sms}")
    cluster = 1
    if clusters:
        while cluster < 16 and batch * cluster < 2 * num_sms:
            cluster *= 2
    threads = 512 if batch * cluster <= num_sms else 256
    return cluster, threads


SPLIT_MIN_CHUNK = 512  # elements of a row per split block, at least


def block_split_chunks(batch: int, vocab: int, num_sms: int, clusters: bool) -> int:
    """Blocks per request of the split block kernel, or 0 for the cluster kernel.

    The cluster kernel puts a request on at most 16 SMs (one without clusters), which leaves most
    of the GPU idle at the smallest batches. The split kernel cuts each request's vocabulary into
    ``min(num_sms // batch, vocab // SPLIT_MIN_CHUNK)`` chunks of one block each (about one block
    per SM over the batch; each chunk at least ``SPLIT_MIN_CHUNK`` elements of a row) and pays for
    it with a pass over a workspace by the request's last block; it is chosen only when that gives
    a request more blocks than the cluster kernel would (B <= 4 on a 132-SM H100 at V = 128256).
    """
    if batch < 1 or vocab < 1 or num_sms < 1:
        raise ValueError(
            f"batch, vocab and num_sms must be >= 1, got batch={batch}, vocab={vocab}, "
            f"num_sms={num_sms}"
        )
    cluster, _ = block_launch_config(batch, num_sms, clusters)
    chunks = min(num_sms // batch, vocab // SPLIT_MIN_CHUNK)
    return chunks if chunks > cluster else 0


def uses_block_kernel(inputs: VerifyInputs) -> bool:
    """Whether a call runs the block kernel: ``rule="block"`` in random mode with drafts. In greedy
    mode the rules coincide (docs/rules.md), and with ``K = 0`` both emit a draw from the bonus
    row, so the token kernel serves those calls."""
    return inputs.rule == "block" and inputs.mode == "random" and inputs.num_draft > 0


def _register_fake() -> None:
    import torch

    @torch.library.register_fake(OP_NAME)
    def _verify_block_fake(
        draft_token_ids, draft_probs, target_probs, uniforms, generator, cluster, threads, split=0
    ):
        B, K1 = target_probs.shape[0], target_probs.shape[1]
        tokens = target_probs.new_empty((B, K1), dtype=torch.int64)
        num = target_probs.new_empty((B,), dtype=torch.int64)
        status = target_probs.new_empty((B,), dtype=torch.int32)
        return tokens, num, status


def load_block_op():
    """Build/load the extension once (with the token op) and return
    ``torch.ops.specsample.verify_block``."""
    global _op
    if _op is not None:
        return _op
    from . import cuda_cpp

    cuda_cpp.load_op()
    with _lock:
        if _op is None:
            import torch

            _register_fake()
            _op = torch.ops.specsample.verify_block
    return _op


def verify_block_op(
    draft_token_ids,
    draft_probs,
    target_probs,
    *,
    generator=None,
    uniforms=None,
    cluster: int = 0,
    threads: int = 0,
    split: int = -1,
):
    """Block verification through the custom op, no validation: ``(token_ids, num_emitted,
    status)``.

    Args:
        draft_token_ids: ``[B, K]`` int32/int64 CUDA tensor, ``K >= 1``.
        draft_probs: ``[B, K, V]`` float32/float16/bfloat16, or None (deterministic drafter).
        target_probs: ``[B, K+1, V]``, same dtype and device.
        generator: a CUDA ``torch.Generator`` for the coins when ``uniforms`` is None (the
            device's default generator when both are None).
        uniforms: ``[B, K+1]`` float32 coins, or None.
        cluster, threads: the cluster kernel's launch shape; 0 takes :func:`block_launch_config`'s
            (tuning and tests only).
        split: blocks per request of the split kernel; -1 takes :func:`block_split_chunks`'s
            when neither ``cluster`` nor ``threads`` is given, 0 forces the cluster kernel. The
            op launches the cluster kernel instead while the stream is being captured into a
            CUDA graph (the split kernel's workspace belongs to one stream).

    Returns:
        ``token_ids`` ``[B, K+1]`` int64, ``num_emitted`` ``[B]`` int64, ``status`` ``[B]`` int32,
        as :func:`specsample.reference_verify` with ``rule="block"`` defines them.
    """
    import torch

    if split < -1:
        raise ValueError(f"split must be -1 (automatic), 0 (off) or a chunk count, got {split}")
    op = load_block_op()
    automatic = split < 0 and not cluster and not threads
    if not cluster or not threads or split < 0:
        index = target_probs.device.index
        index = torch.cuda.current_device() if index is None else index
        facts = _device_facts.get(index)
        if facts is None:
            props = torch.cuda.get_device_properties(index)
            facts = _device_facts[index] = (props.multi_processor_count, props.major >= 9)
        B, V = max(1, target_probs.shape[0]), max(1, target_probs.shape[2])
        auto = block_launch_config(B, *facts)
        cluster = cluster or auto[0]
        threads = threads or auto[1]
        split = block_split_chunks(B, V, *facts) if automatic else max(split, 0)
    return op(
        draft_token_ids, draft_probs, target_probs, uniforms, generator, cluster, threads, split
    )


def verify_block_inputs(inputs: VerifyInputs) -> VerifyOutput:
    """``cuda-cpp``'s ``rule="block"`` path for validated random-mode inputs."""
    token_ids, num_emitted, status = verify_block_op(
        inputs.draft_token_ids,
        inputs.draft_probs,
        inputs.target_probs,
        generator=inputs.generator if inputs.uniforms is None else None,
        uniforms=inputs.uniforms,
    )
    return VerifyOutput(token_ids, num_emitted, status)
