"""A NumPy implementation of specsample's verification contract (CPU, float32/float16).

Inputs arrive validated and contiguous (``specsample.Backend.verify`` checks them: this backend
does not claim ``status_flags``, so every value is checked eagerly before ``_verify`` runs); this
class only implements ``_verify``. Tensors may require grad: they are detached before NumPy sees
them. Randomness is drawn from the torch generator it is given, so the same
generator state gives the same output, as the contract requires.
"""

from __future__ import annotations

import numpy as np
import torch
from specsample import Backend, Capabilities
from specsample.contract import VerifyInputs, VerifyOutput


class NumpyBackend(Backend):
    name = "numpy"
    description = "Example third-party plugin: NumPy on the CPU (specsample-numpy)."
    # No bfloat16: NumPy has no such type. The conformance suite reports it as "not claimed".
    capabilities = Capabilities(devices=("cpu",), dtypes=("float32", "float16"))

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, ""

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        B, K = inputs.batch_size, inputs.num_draft
        ids = inputs.draft_token_ids.detach().numpy().astype(np.int64)
        # float64 makes u * p < q exact for float32/float16 inputs, as the reference decides it.
        q = inputs.target_probs.detach().numpy().astype(np.float64)
        p = (
            None
            if inputs.draft_probs is None
            else inputs.draft_probs.detach().numpy().astype(np.float64)
        )
        rows = np.arange(B)
        if inputs.mode == "greedy":
            accept = ids == q[:, :K].argmax(axis=-1)
        else:
            u = inputs.uniforms
            if u is None:  # column k < K decides draft k, column K drives the last token
                u = torch.rand((B, K + 1), generator=inputs.generator, dtype=torch.float32)
            u = u.detach().numpy().astype(np.float64)
            q_at = np.take_along_axis(q[:, :K], ids[..., None], axis=-1)[..., 0]
            p_at = 1.0 if p is None else np.take_along_axis(p, ids[..., None], axis=-1)[..., 0]
            accept = u[:, :K] * p_at < q_at
        # Drafts accepted = length of the leading run of accepts.
        n_acc = np.cumprod(accept, axis=1).sum(axis=1) if K else np.zeros(B, dtype=np.int64)
        last_q = q[rows, n_acc]  # the row the last token comes from: [B, V]
        if inputs.mode == "greedy":
            last = last_q.argmax(axis=-1)
        else:
            r = last_q.copy()
            rejected = n_acc < K
            if rejected.any():
                k = n_acc[rejected]
                if p is None:
                    p_row = np.zeros_like(r[rejected])
                    p_row[np.arange(k.size), ids[rejected, k]] = 1.0
                else:
                    p_row = p[rows[rejected], k]
                res = np.maximum(r[rejected] - p_row, 0.0)
                empty = res.sum(axis=-1) == 0  # p == q up to rounding: fall back to q
                res[empty] = r[rejected][empty]
                r[rejected] = res
            cdf = np.cumsum(r, axis=-1)
            threshold = u[:, K] * cdf[:, -1]
            last = (cdf > threshold[:, None]).argmax(axis=-1)  # smallest j with cdf[j] > u*sum
        token_ids = np.full((B, K + 1), -1, dtype=np.int64)
        positions = np.arange(K + 1)
        padded = np.concatenate([ids, np.zeros((B, 1), dtype=np.int64)], axis=1)
        keep = positions[None, :] < n_acc[:, None]
        token_ids[keep] = padded[keep]
        token_ids[rows, n_acc] = last
        return VerifyOutput(torch.from_numpy(token_ids), torch.from_numpy(n_acc + 1))
