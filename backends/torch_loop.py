"""``torch-loop``: the classic baseline, a Python loop over requests and draft positions.

Deliberately naive (every decision is a host read, so O(B*K) kernel launches and host syncs): it is
the yardstick the reports measure speedups against. It draws its uniforms exactly like
``torch-vectorized``, so the two agree token for token for the same generator state.
"""

from __future__ import annotations

import torch
from specsample.contract import Backend, Capabilities, VerifyInputs, VerifyOutput
from specsample.contract_tree import TREE_SAMPLING, TreeVerifyInputs, TreeVerifyOutput
from specsample.rng import draw_uniforms
from specsample.serving import ServingInputs, ServingOutput
from specsample.status import FLOAT32_MAX, Status

from ._block_loop import block_request


def _bad(x: torch.Tensor) -> bool:
    """NaN, infinite or negative anywhere in ``x`` (one host read)."""
    return not bool(((x >= 0) & (x < float("inf"))).all().item())


class TorchLoopBackend(Backend):
    name = "torch-loop"
    description = "Naive baseline: Python loop over B and K with per-element host reads."
    capabilities = Capabilities(
        status_flags=True,
        serving=True,
        tree_modes=("random", "greedy"),
        tree_sampling=TREE_SAMPLING,
        tree_rules=("token", "traversal"),
        rules=("token", "block"),
    )

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        B, K, V = inputs.batch_size, inputs.num_draft, inputs.vocab_size
        device = inputs.device
        ids, p_all, q_all = inputs.draft_token_ids, inputs.draft_probs, inputs.target_probs
        greedy = inputs.mode == "greedy"
        u = inputs.uniforms
        if u is None and not greedy:
            u = draw_uniforms(B, K, inputs.generator, device)
        token_ids = torch.full((B, K + 1), -1, dtype=torch.int64, device=device)
        num_emitted = torch.zeros(B, dtype=torch.int64, device=device)
        status = torch.zeros(B, dtype=torch.int32, device=device)
        for b in range(B):
            flags, tokens = self._request(b, K, V, ids, p_all, q_all, u, greedy, inputs)
            status[b] = flags
            for k, t in enumerate(tokens):
                token_ids[b, k] = t
            num_emitted[b] = len(tokens)
        return VerifyOutput(token_ids, num_emitted, status)

    def _verify_tree(self, inputs: TreeVerifyInputs) -> TreeVerifyOutput:
        from ._tree_loop import verify_tree_loop

        return verify_tree_loop(inputs)

    @staticmethod
    def _request(b, K, V, ids, p_all, q_all, u, greedy, inputs) -> tuple[int, list[int]]:
        """One request: ``(status flags, tokens)`` (docs/contract.md, "Status")."""
        xs = [int(ids[b, k].item()) for k in range(K)]
        flags = Status.BAD_DRAFT_ID if any(not 0 <= x < V for x in xs) else Status.OK
        tokens: list[int] = []
        if greedy:
            if flags:
                return int(flags), []
            for k in range(K + 1):
                if _bad(q_all[b, k]):
                    return int(Status.BAD_TARGET_VALUE), []
                best = int(q_all[b, k].argmax().item())
                if k == K or xs[k] != best:
                    return 0, tokens + [best]
                tokens.append(xs[k])
        # Random mode: every drafted entry (and explicit uniforms) first.
        for k, x in enumerate(xs):
            if 0 <= x < V:
                if _bad(q_all[b, k, x]):
                    flags |= Status.BAD_TARGET_VALUE
                if p_all is not None and _bad(p_all[b, k, x]):
                    flags |= Status.BAD_DRAFT_VALUE
        if inputs.uniforms is not None and not bool(((u[b] >= 0) & (u[b] < 1)).all().item()):
            flags |= Status.BAD_UNIFORM
        if flags:
            return int(flags), []
        if inputs.rule == "block":
            return block_request(b, xs, p_all, q_all, u)
        row = K
        for k, x in enumerate(xs):
            p = 1.0 if p_all is None else float(p_all[b, k, x].item())
            if not float(u[b, k].item()) * p < float(q_all[b, k, x].item()):
                row = k
                break
            tokens.append(x)
        q_row = q_all[b, row].to(torch.float32)
        if _bad(q_row):
            return int(Status.BAD_TARGET_VALUE), []
        r = q_row
        if row < K:
            if p_all is None:
                p_row = torch.zeros_like(q_row)
                p_row[xs[row]] = 1.0
            else:
                p_row = p_all[b, row].to(torch.float32)
                if _bad(p_row):
                    return int(Status.BAD_DRAFT_VALUE), []
            r = torch.clamp(q_row - p_row, min=0.0)
            if r.sum().item() == 0.0:
                r = q_row
        total = float(r.sum(dtype=torch.float64).item())
        if total > FLOAT32_MAX:
            return int(Status.ROW_SUM_OVERFLOW), []
        if total == 0.0:
            return int(Status.ZERO_ROW), []
        cdf = torch.cumsum(r, dim=0)
        threshold = float(u[b, K].item()) * cdf[-1].item()
        last = int((cdf > threshold).to(torch.int8).argmax().item())
        if cdf[last].item() <= threshold:  # rounding put the threshold at the total
            last = int(torch.nonzero(r > 0)[-1].item())
        return 0, tokens + [last]

    def _verify_serving(self, inputs: ServingInputs) -> ServingOutput:
        """One request at a time: each is cut to its own K_b drafts (a host read) and verified
        with the shared tensor code on a batch of one."""
        from ._serving_vectorized import serving_arguments, serving_tensors

        args = serving_arguments(inputs)
        B, K = inputs.batch_size, inputs.num_draft
        token_ids = torch.full((B, K + 1), -1, dtype=torch.int64, device=inputs.device)
        num_emitted = torch.zeros(B, dtype=torch.int64, device=inputs.device)
        status = torch.zeros(B, dtype=torch.int32, device=inputs.device)
        for b in range(B):
            k = int(inputs.num_draft_tokens[b].item())
            one = [
                a[b : b + 1] if isinstance(a, torch.Tensor) else a for a in args
            ]  # every tensor argument has the batch first
            one[0], one[2], one[9] = one[0][:, :k], one[2][:, : k + 1], one[9][:, : k + 1]
            if one[4] is not None:
                one[4] = one[4][:, :k]
            ids, num, flags = serving_tensors(*one)
            token_ids[b, : k + 1] = ids[0]
            num_emitted[b] = num[0]
            status[b] = flags[0]
        return ServingOutput(token_ids, num_emitted, status)
