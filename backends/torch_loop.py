"""``torch-loop``: the classic baseline, a Python loop over requests and draft positions.

Deliberately naive (every decision is a host read, so O(B*K) kernel launches and host syncs): it is
the yardstick the reports measure speedups against. It draws its uniforms exactly like
``torch-vectorized``, so the two agree token for token for the same generator state.
"""

from __future__ import annotations

import torch
from specsample.contract import Backend, Capabilities, VerifyInputs, VerifyOutput
from specsample.rng import draw_uniforms


class TorchLoopBackend(Backend):
    name = "torch-loop"
    description = "Naive baseline: Python loop over B and K with per-element host reads."
    capabilities = Capabilities()

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        B, K = inputs.batch_size, inputs.num_draft
        device = inputs.device
        ids, p_all, q_all = inputs.draft_token_ids, inputs.draft_probs, inputs.target_probs
        greedy = inputs.mode == "greedy"
        u = inputs.uniforms
        if u is None and not greedy:
            u = draw_uniforms(B, K, inputs.generator, device)
        token_ids = torch.full((B, K + 1), -1, dtype=torch.int64, device=device)
        num_emitted = torch.empty(B, dtype=torch.int64, device=device)
        for b in range(B):
            row = K
            for k in range(K):
                x = int(ids[b, k].item())
                if greedy:
                    ok = x == int(q_all[b, k].argmax().item())
                else:
                    p = 1.0 if p_all is None else float(p_all[b, k, x].item())
                    ok = float(u[b, k].item()) * p < float(q_all[b, k, x].item())
                if not ok:
                    row = k
                    break
                token_ids[b, k] = x
            q_row = q_all[b, row].to(torch.float32)
            if greedy:
                last = int(q_row.argmax().item())
            else:
                r = q_row
                if row < K:
                    if p_all is None:
                        p_row = torch.zeros_like(q_row)
                        p_row[int(ids[b, row].item())] = 1.0
                    else:
                        p_row = p_all[b, row].to(torch.float32)
                    r = torch.clamp(q_row - p_row, min=0.0)
                    if r.sum().item() == 0.0:
                        r = q_row
                cdf = torch.cumsum(r, dim=0)
                threshold = float(u[b, K].item()) * cdf[-1].item()
                last = int((cdf > threshold).to(torch.int8).argmax().item())
                if cdf[last].item() <= threshold:  # rounding put the threshold at the total
                    last = int(torch.nonzero(r > 0)[-1].item())
            token_ids[b, row] = last
            num_emitted[b] = row + 1
        return VerifyOutput(token_ids, num_emitted)
