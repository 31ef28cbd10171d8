"""Target for Nsight Compute: cuda-cpp calls at B, K=8, V=128256, fp32, low acceptance, after the
extension is built and the inputs exist. argv: B and launch options as key=value (e.g. chunks=0
cluster=16); without options one random and one greedy call with the automatic configuration."""

import sys

import torch
from specsample.backends.cuda_cpp import load_op, verify_op
from specsample.workloads import make_workload

load_op()
B = int(sys.argv[1]) if len(sys.argv) > 1 else 1
opts = dict(a.split("=") for a in sys.argv[2:])
mode = opts.pop("mode", None)
kw = {k: int(v) for k, v in opts.items()}
w = make_workload(B, 8, 128256, device="cuda", acceptance="low", seed=1)
torch.cuda.synchronize()
for m in [mode] if mode else ["random", "greedy"]:
    verify_op(w.draft_token_ids, w.draft_probs, w.target_probs, mode=m, **kw)
torch.cuda.synchronize()
