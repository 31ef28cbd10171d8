"""SGLang's tree verification kernels (``sgl_kernel.tree_speculative_sampling_target_only`` and
``sgl_kernel.verify_tree_greedy``) behind specsample's ``verify_tree`` contract.

SGLang lays a tree out over N+1 *positions* (position 0 is the root, position ``i+1`` node i,
as in docs/contract-trees.md) with linked lists: ``retrive_next_token`` (first child) and
``retrive_next_sibling`` (next sibling), built here by :func:`specsample.trees.to_sglang`. What
the adapter maps (docs/peers.md):

- ``candidates`` ``[B, N+1]`` int32: the root's slot (never read as a draft) then the drafts;
  ``retrive_index`` ``[B, N+1]`` int32: ``b*(N+1) + position``, the flat slot of ``predicts``.
- ``target_probs`` ``[B, N+1, V]`` go in unchanged (same layout as the contract's).
- ``draft_probs``: a fresh zero ``[B, N+1, V]`` float32 buffer per call; the target-only kernel
  writes the rejected siblings' target mass into it to form its residual.
- Coins: the target-only rule reads one coin per position, the contract the coin of the
  position's first child (``uniforms[b, c1]``). The adapter gathers
  ``uniform_samples[b, pos] = uniforms[b, first_child(pos)]`` and passes ``uniforms[b, N]`` as
  ``uniform_samples_for_final_sampling``, so explicit uniforms give the contract's tokens and
  the exact tree checks run. ``threshold_single = threshold_acc = 1`` (SGLang's exact rule).
- Outputs: ``accept_index`` ``[B, D+1]`` (the root's slot, then the accepted nodes' slots),
  ``accept_token_num`` (accepted nodes) and ``predicts`` (the token emitted at each slot) give
  ``token_ids``, ``num_emitted`` and ``accepted_nodes``.
- Greedy: ``target_predict`` is the argmax of every position's target row (first maximum).
- ``verify()`` chains are the tree ``[-1, 0, ..., K-2]`` in greedy mode. Random chains are not
  claimed: SGLang's random kernel is target-only (it reads no draft distribution) and the chain
  contract passes draft probabilities; the random tree checks cover the target-only rule.

The layout arrays depend only on the tree, and building them reads ``parents`` on the host. For
chains they are built once per (B, K, device) and cached; for trees they are built in every call
(a host read of ``parents`` and ``num_nodes`` inside the timed region; docs/peers.md says so).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import torch
from specsample import Backend, Capabilities
from specsample.contract import VerifyInputs, VerifyOutput
from specsample.contract_tree import TreeVerifyInputs, TreeVerifyOutput
from specsample.trees import to_sglang

MODULE = "sgl_kernel"
INSTALL_HINT = "pip install sgl-kernel matching the installed torch (docs/peers.md)"


def _kernels() -> Any:
    """``sgl_kernel``, imported on first use."""
    return importlib.import_module(MODULE)


def sglang_layout(
    parents: torch.Tensor, num_nodes: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(retrive_index, retrive_next_token, retrive_next_sibling)``, each ``[B, N+1]`` int32 on
    ``device``, for ``parents`` ``[B, N]`` (padding nodes past ``num_nodes`` left out)."""
    B, N = parents.shape
    nxt, sib = to_sglang(parents, num_nodes)
    index = torch.arange(B * (N + 1), dtype=torch.int32, device=device).reshape(B, N + 1)
    return index, nxt.to(device, torch.int32), sib.to(device, torch.int32)


def coins_by_position(uniforms: torch.Tensor, next_token: torch.Tensor) -> torch.Tensor:
    """SGLang's per-position coins ``[B, N+1]`` from the contract's per-node ``uniforms``
    ``[B, N+1]``: position ``pos`` gets the coin of its first child (0 where it has none)."""
    first = next_token.to(torch.int64)
    node = (first - 1).clamp_min(0)
    coins = torch.gather(uniforms[:, :-1], 1, node) if uniforms.shape[1] > 1 else node.float()
    return torch.where(first > 0, coins, torch.zeros_like(coins)).contiguous()


class SglangBackend(Backend):
    name = "sglang"
    description = (
        "Peer: SGLang sgl-kernel tree verification (target-only and greedy; specsample-sglang)."
    )
    peer = "SGLang"
    capabilities = Capabilities(
        modes=("greedy",),
        dtypes=("float32",),
        devices=("cuda",),
        needs_gpu=True,
        tree_modes=("random", "greedy"),
        tree_sampling=("target_only",),
        tree_rules=("token",),
    )

    def __init__(self) -> None:
        self._layouts: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if importlib.util.find_spec(MODULE) is None:
            return False, f"sgl_kernel not installed ({INSTALL_HINT})"
        if "cpu" not in cls.capabilities.devices and not torch.cuda.is_available():
            return False, "no CUDA device"
        return True, ""

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        B, K = inputs.batch_size, inputs.num_draft
        dev = inputs.target_probs.device
        parents = torch.arange(-1, K - 1, device=dev).expand(B, K)
        num_nodes = torch.full((B,), K, dtype=torch.int64, device=dev)
        tokens, n, _ = self._run(
            inputs.draft_token_ids,
            parents,
            num_nodes,
            inputs.target_probs,
            "greedy",
            K,
            None,
            chain_key=(B, K, dev),
        )
        return VerifyOutput(tokens, n)

    def _verify_tree(self, inputs: TreeVerifyInputs) -> TreeVerifyOutput:
        u = inputs.uniforms
        if inputs.mode == "random" and u is None:
            shape = (inputs.batch_size, inputs.num_nodes_max + 1)
            u = torch.rand(shape, generator=inputs.generator, device=inputs.target_probs.device)
        tokens, n, nodes = self._run(
            inputs.draft_token_ids,
            inputs.parents,
            inputs.num_nodes,
            inputs.target_probs,
            inputs.mode,
            inputs.max_depth,
            u,
        )
        status = torch.zeros(inputs.batch_size, dtype=torch.int32, device=tokens.device)
        return TreeVerifyOutput(tokens, n, nodes, status)

    def _layout(
        self,
        parents: torch.Tensor,
        num_nodes: torch.Tensor,
        dev: torch.device,
        chain_key: tuple | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if chain_key is None:
            return sglang_layout(parents, num_nodes, dev)
        if chain_key not in self._layouts:
            self._layouts[chain_key] = sglang_layout(parents, num_nodes, dev)
        return self._layouts[chain_key]

    def _run(
        self,
        ids: torch.Tensor,
        parents: torch.Tensor,
        num_nodes: torch.Tensor,
        q: torch.Tensor,
        mode: str,
        depth: int,
        u: torch.Tensor | None,
        chain_key: tuple | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sgl = _kernels()
        B, N = ids.shape
        dev = q.device
        index, nxt, sib = self._layout(parents, num_nodes, dev, chain_key)
        candidates = torch.zeros((B, N + 1), dtype=torch.int32, device=dev)
        candidates[:, 1:] = ids.to(torch.int32)
        predicts = torch.full((B * (N + 1),), -1, dtype=torch.int32, device=dev)
        accept_index = torch.full((B, depth + 1), -1, dtype=torch.int32, device=dev)
        accept_num = torch.zeros(B, dtype=torch.int32, device=dev)
        layout = (predicts, accept_index, accept_num, candidates, index, nxt, sib)
        if mode == "greedy":
            sgl.verify_tree_greedy(*layout, q.argmax(dim=-1).to(torch.int64))
        else:
            assert u is not None
            sgl.tree_speculative_sampling_target_only(
                *layout,
                coins_by_position(u, nxt),
                u[:, N].contiguous(),
                q.contiguous(),
                torch.zeros((B, N + 1, q.shape[-1]), dtype=torch.float32, device=dev),
                threshold_single=1.0,
                threshold_acc=1.0,
                deterministic=True,
            )
        n = accept_num.to(torch.int64)
        j = torch.arange(depth + 1, device=dev)
        emitted = j.unsqueeze(0) <= n.unsqueeze(1)
        slots = accept_index.to(torch.int64).clamp_min(0)
        tokens = torch.where(emitted, predicts.to(torch.int64)[slots], torch.full_like(slots, -1))
        node_of_slot = slots[:, 1:] - (torch.arange(B, device=dev) * (N + 1)).unsqueeze(1) - 1
        nodes = torch.where(emitted[:, 1:], node_of_slot, torch.full_like(node_of_slot, -1))
        return tokens, n + 1, nodes
