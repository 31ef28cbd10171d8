"""Target for Nsight Compute: one cuda-cpp call at B=1, K=8, V=128256, fp32, low acceptance
(random, then greedy) after the extension is built and the inputs exist."""

import torch
from specsample.backends.cuda_cpp import load_op, verify_op
from specsample.workloads import make_workload

load_op()
w = make_workload(1, 8, 128256, device="cuda", acceptance="low", seed=1)
torch.cuda.synchronize()
verify_op(w.draft_token_ids, w.draft_probs, w.target_probs)
verify_op(w.draft_token_ids, w.draft_probs, w.target_probs, mode="greedy")
torch.cuda.synchronize()
