"""Deliberately broken block-verification backends: the exact losslessness check must fail each.

Each mutant is the float64 block reference with one published mistake (``BUGS``); ``correct`` has
none and must pass.
"""

from __future__ import annotations

import torch
from specsample.contract import Backend, Capabilities, VerifyInputs, VerifyOutput
from specsample.reference import inverse_cdf, reference_coins
from specsample.reference_block import (
    accepted_length,
    block_residual,
    block_thresholds,
    block_weights,
    draft_rows,
    final_row,
    residual_mass,
)

BUGS = {
    "correct": "none",
    "token-wise-residual": "block thresholds, but the last token from the token rule's "
    "residual max(0, q - p)",
    "ordinary-residual": "the residual masses and the residual use max(0, q - p) (no prefix "
    "weight)",
    "stop-at-first-failure": "block thresholds, but the first failed coin ends the step",
}


def _thresholds_unweighted(ids, p_rows, q_rows):
    K = len(ids)
    w = block_weights(ids, p_rows, q_rows)
    p_full = draft_rows(ids, p_rows, q_rows)
    h = []
    for k in range(K - 1):
        z = residual_mass(1.0, p_full[k + 1], q_rows[k + 1])
        denom = z + 1.0 - w[k + 1]
        h.append(z / denom if denom > 0 else 1.0)
    return h + [w[K]] if K else h


def _request(bug, ids, p_rows, q_rows, u):
    K = len(ids)
    h = (_thresholds_unweighted if bug == "ordinary-residual" else block_thresholds)(
        ids, p_rows, q_rows
    )
    if bug == "stop-at-first-failure":
        tau = next((k for k in range(K) if not u[k] < h[k]), K)
    else:
        tau = accepted_length(u[:K], h)
    if bug in ("token-wise-residual", "ordinary-residual") and tau < K:
        row = block_residual(1.0, draft_rows(ids, p_rows, q_rows)[tau], q_rows[tau])
    else:
        row = final_row(tau, ids, p_rows, q_rows)
    return list(ids[:tau]) + [inverse_cdf(torch.tensor(row, dtype=torch.float64), u[K])]


def make_block_mutant(bug: str) -> Backend:
    """A CPU backend claiming ``rule="block"`` with the given bug (a key of ``BUGS``)."""

    class _Mutant(Backend):
        name = f"block-mutant-{bug}"
        capabilities = Capabilities(
            devices=("cpu",), modes=("random",), dtypes=("float32",), rules=("token", "block")
        )

        def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
            from specsample.reference import reference_verify

            if inputs.rule == "token":
                return reference_verify(
                    inputs.draft_token_ids,
                    inputs.draft_probs,
                    inputs.target_probs,
                    uniforms=inputs.uniforms,
                    generator=inputs.generator,
                )
            B, K = inputs.batch_size, inputs.num_draft
            u = reference_coins(inputs, K).tolist()
            ids = inputs.draft_token_ids.to(torch.int64).tolist()
            q = inputs.target_probs.to(torch.float64).tolist()
            p = None if inputs.draft_probs is None else inputs.draft_probs.double().tolist()
            tok = torch.full((B, K + 1), -1, dtype=torch.int64)
            num = torch.zeros(B, dtype=torch.int64)
            for b in range(B):
                t = _request(bug, ids[b], None if p is None else p[b], q[b], u[b])
                tok[b, : len(t)] = torch.tensor(t)
                num[b] = len(t)
            return VerifyOutput(tok, num, torch.zeros(B, dtype=torch.int32))

    return _Mutant()
