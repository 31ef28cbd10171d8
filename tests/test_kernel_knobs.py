"""Every compile-time knob of the CUDA kernel (``-DSPECSAMPLE_*``, listed in verify_kernel.cuh) is
built at a non-default value and checked token for token against the float64 reference, so an A/B
variant that tools/kernel_ab.py may time is always a correct kernel.

Each variant compiles only the few kernels its knob changes (CuPy/NVRTC), then runs random mode
(with uniforms, and with planted bad values for the status flags) and greedy mode through them.
"""

from __future__ import annotations

import re

import pytest
import torch
from specsample.backends import _cuda_build
from specsample.reference import reference_verify
from specsample.workloads import make_workload

# knob -> (non-default value, cluster sizes whose kernels it changes)
KNOBS = {
    "SPECSAMPLE_GREEDY_STEP_BYTES": (4096, (16,)),
    "SPECSAMPLE_GREEDY_STEP_GROWTH": (4, (16,)),
    "SPECSAMPLE_GREEDY_MIN_BLOCKS": (1, (4,)),
    "SPECSAMPLE_GREEDY_GROUP_MIN_CL": (4, (4, 16)),
    "SPECSAMPLE_WAVE_SMALL": (4, (4,)),
    "SPECSAMPLE_WAVE_LARGE": (1, (16,)),
    "SPECSAMPLE_RANDOM_MIN_BLOCKS": (1, (4,)),
    "SPECSAMPLE_ASYNC_EXCHANGE": (0, (4, 16)),
}
# the block-verification kernel's knobs (kernel_block.cuh), checked by
# tests/test_cuda_block.py::test_block_knobs
BLOCK_KNOBS = (
    "SPECSAMPLE_BLOCK_WAVE",
    "SPECSAMPLE_BLOCK_PREFETCH_BYTES",
    "SPECSAMPLE_BLOCK_SPLIT_ROWS",
    "SPECSAMPLE_BLOCK_PICK_VECS",
)


def test_the_knob_list_matches_the_kernel():
    """Every #ifndef knob of the kernel sources is tested here, and no other."""
    text = "\n".join(
        (_cuda_build.csrc_dir() / name).read_text() for name in _cuda_build.kernel_sources()
    )
    knobs = set(re.findall(r"^#ifndef (SPECSAMPLE_[A-Z_]+)", text, flags=re.M))
    assert knobs == set(KNOBS) | set(BLOCK_KNOBS)


@pytest.mark.gpu(needs=("cupy",))
@pytest.mark.parametrize("knob", sorted(KNOBS))
def test_knob_variant_is_exact(knob):
    from specsample.backends import cupy_backend

    value, clusters = KNOBS[knob]
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the knobs tune the cluster kernels (sm_90)")
    device = torch.cuda.current_device()
    mod = cupy_backend._Module(
        device,
        extra_options=(f"-D{knob}={value}",),
        only=lambda key: key[0] == "float32" and key[1] in clusters,
    )
    for cluster in clusters:
        for seed, (B, K, V) in enumerate([(3, 6, 40000), (2, 16, 4099)]):
            w = make_workload(B, K, V, device="cuda", acceptance="low", seed=seed)
            u = torch.rand(
                B, K + 1, device="cuda", generator=torch.Generator("cuda").manual_seed(1)
            )
            q = w.target_probs.clone()
            q[B - 1, 0, 5] = float("nan")  # one flagged request (read or not, as the walk decides)
            for mode in ("random", "greedy"):
                kw = {"uniforms": u} if mode == "random" else {}
                ref = reference_verify(w.draft_token_ids, w.draft_probs, q, mode=mode, **kw)
                tok, num, status = cupy_backend.verify_torch(
                    w.draft_token_ids,
                    w.draft_probs,
                    q,
                    mode=mode,
                    cluster=cluster,
                    module=mod,
                    split=0,
                    **kw,
                )
                label = f"{knob}={value} cluster={cluster} {mode} B={B} K={K} V={V}"
                assert torch.equal(status.cpu(), ref.status.cpu()), label
                assert torch.equal(num.cpu(), ref.num_emitted.cpu()), label
                assert torch.equal(tok.cpu(), ref.token_ids.cpu()), label
