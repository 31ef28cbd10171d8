"""Target for Nsight Compute: one verify call at B, K=8, V=128256, fp32, low acceptance, profiled
between cudaProfilerStart/Stop (run ncu with --profile-from-start off), after a warm-up call that
builds, compiles or tunes. argv: B, then key=value options: backend=cuda-cpp|triton (default
cuda-cpp), mode=random|greedy (default: one call of each), and for cuda-cpp the op's launch
options (cluster=16 threads=256 ...)."""

import sys

import specsample
import torch
from specsample.backends.cuda_cpp import verify_op
from specsample.workloads import make_workload

B = int(sys.argv[1]) if len(sys.argv) > 1 else 1
opts = dict(a.split("=") for a in sys.argv[2:])
backend = opts.pop("backend", "cuda-cpp")
mode = opts.pop("mode", None)
kw = {k: int(v) for k, v in opts.items()}
w = make_workload(B, 8, 128256, device="cuda", acceptance="low", seed=1)


def call(m):
    if backend == "cuda-cpp":
        return verify_op(w.draft_token_ids, w.draft_probs, w.target_probs, mode=m, **kw)
    be = specsample.get_backend(backend)
    return be.verify(w.draft_token_ids, w.draft_probs, w.target_probs, mode=m, check_finite=False)


modes = [mode] if mode else ["random", "greedy"]
for m in modes:
    call(m)  # warm-up: build / compile / tune
torch.cuda.synchronize()
torch.cuda.profiler.start()
for m in modes:
    call(m)
torch.cuda.synchronize()
torch.cuda.profiler.stop()
