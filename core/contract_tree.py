"""Tree verification's inputs and outputs: :class:`TreeVerifyOutput` and :class:`TreeVerifyInputs`.

:meth:`specsample.Backend.verify_tree` validates its arguments into :class:`TreeVerifyInputs` and
hands them to the backend's ``_verify_tree``; the rules are defined by
:func:`specsample.reference_tree.reference_verify_tree` (float64) and docs/contract-trees.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: ``draft_sampling`` values: how the siblings of a position were drawn from its draft distribution
DRAFT_SAMPLING = ("with_replacement", "without_replacement")
#: the random rules a backend can claim in ``Capabilities.tree_sampling``: ``"target_only"`` is
#: ``draft_probs=None`` (one-hot drafts), the others are ``DRAFT_SAMPLING``
TREE_SAMPLING = ("target_only", *DRAFT_SAMPLING)
#: ``rule`` values of :meth:`specsample.Backend.verify_tree`: ``"token"`` accepts one node at a
#: time along the walk (docs/contract-trees.md); ``"traversal"`` tries the nodes leaf to root with
#: sequence-level weights (docs/rules.md), for trees drafted with replacement
TREE_RULES = ("token", "traversal")


@dataclass
class TreeVerifyOutput:
    """Result of one tree verification call.

    Attributes:
        token_ids: ``[B, D+1]`` int64: the accepted drafts along the path, then one emitted token,
            then ``-1``.
        num_emitted: ``[B]`` int64: accepted nodes + 1, or 0 for a flagged request.
        accepted_nodes: ``[B, D]`` int64: node indices of the accepted path from the root, then
            ``-1`` (all ``-1`` for a flagged request).
        status: ``[B]`` int32 bits of :class:`specsample.Status`, 0 for a request verified
            normally.
    """

    token_ids: torch.Tensor
    num_emitted: torch.Tensor
    accepted_nodes: torch.Tensor
    status: torch.Tensor

    def raise_for_status(self) -> TreeVerifyOutput:
        """Raise ``ValueError`` if any request is flagged; return ``self`` otherwise.

        Reads ``status`` on the host (one synchronization); the message names the first flagged
        request, the argument and the problem.
        """
        from .status import status_error

        error = status_error(self.status)
        if error is not None:
            raise error
        return self


@dataclass
class TreeVerifyInputs:
    """Validated, normalized inputs handed to :meth:`Backend._verify_tree`.

    Tensors are contiguous and on one device. Shapes: ``draft_token_ids`` [B, N] int32/int64,
    ``parents`` [B, N] int64, ``num_nodes`` [B] int64 (filled with N when the caller gave None),
    ``draft_probs`` [B, N, V] or None, ``target_probs`` [B, N+1, V], ``uniforms`` [B, N+1] float32
    or None. With ``validate="status"`` no value has been checked: ids, parents, ``num_nodes``,
    probabilities and uniforms may be anything, and the backend flags what it reads in
    ``status`` (docs/contract-trees.md, "Status and validation"). ``max_depth`` is D, already
    resolved (N when the caller gave None). ``draft_sampling`` is None unless random mode with
    ``draft_probs``. ``generator`` is set when random mode draws its uniforms.
    """

    draft_token_ids: torch.Tensor
    parents: torch.Tensor
    num_nodes: torch.Tensor
    draft_probs: torch.Tensor | None
    target_probs: torch.Tensor
    mode: str
    draft_sampling: str | None
    max_depth: int
    rule: str
    generator: torch.Generator | None
    uniforms: torch.Tensor | None
    batch_size: int
    num_nodes_max: int
    vocab_size: int
    device: torch.device = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def needs_distinct_siblings(self) -> bool:
        """True when the rule requires distinct sibling tokens (target-only, without replacement)."""
        if self.mode != "random":
            return False
        return self.draft_probs is None or self.draft_sampling == "without_replacement"

    @property
    def sampling(self) -> str | None:
        """The random rule as named in ``Capabilities.tree_sampling``; None in greedy mode."""
        if self.mode != "random":
            return None
        return "target_only" if self.draft_probs is None else self.draft_sampling
