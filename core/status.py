"""Per-request status flags of :class:`specsample.VerifyOutput` (``status``, ``[B]`` int32).

The default call checks values where they are read (in the kernel, or with tensor ops on the rows
a PyTorch backend reads) and reports a bad request here instead of raising: no host sync, no pass
over the whole input, CUDA-graph capturable. ``0`` means the request is fine; any other value is a
bitwise OR of the flags below, and the request's outputs are then ``token_ids`` all ``-1`` and
``num_emitted`` ``0``, identically on every backend. :meth:`VerifyOutput.raise_for_status` turns a
non-zero status into the ``ValueError`` an eager check would raise. Which entries are read, and so
which flags a request can get, is defined in docs/contract.md ("Status").
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class Status(enum.IntFlag):
    """The bits of ``VerifyOutput.status``."""

    OK = 0
    #: a draft id outside ``[0, V)`` (every one of the request's K ids is checked)
    BAD_DRAFT_ID = 1
    #: a ``target_probs`` entry that was read is NaN, infinite or negative
    BAD_TARGET_VALUE = 2
    #: a ``draft_probs`` entry that was read is NaN, infinite or negative
    BAD_DRAFT_VALUE = 4
    #: an explicit uniform outside ``[0, 1)`` (or NaN)
    BAD_UNIFORM = 8
    #: the distribution the last token is drawn from sums to zero (random mode)
    ZERO_ROW = 16
    #: the distribution the last token is drawn from sums past the largest float32 (random mode)
    ROW_SUM_OVERFLOW = 32
    #: tree verification: ``parents``/``num_nodes``/``max_depth`` describe no valid tree (a parent
    #: that is not -1 or an earlier node, a real node under a padding node, ``num_nodes`` outside
    #: ``0..N``, a node deeper than ``max_depth``); docs/contract-trees.md
    BAD_TREE = 64
    #: tree verification: two siblings share a token where the rule needs distinct siblings
    #: (target-only, without replacement)
    REPEATED_SIBLING = 128
    #: a per-request parameter of a serving call (``temperature``, ``top_k``, ``top_p``, a draft
    #: count, ``offsets``) is out of range; only for parameters on a GPU (docs/serving.md)
    BAD_PARAMETER = 256


#: largest finite float32; a row whose sum exceeds it is flagged ``ROW_SUM_OVERFLOW``
FLOAT32_MAX = 3.4028234663852886e38

_PROBLEMS = {
    Status.BAD_DRAFT_ID: ("draft_token_ids", "holds an id outside [0, V)"),
    Status.BAD_TARGET_VALUE: ("target_probs", "holds a NaN, infinite or negative value"),
    Status.BAD_DRAFT_VALUE: ("draft_probs", "holds a NaN, infinite or negative value"),
    Status.BAD_UNIFORM: ("uniforms", "holds a value outside [0, 1)"),
    Status.ZERO_ROW: (
        "target_probs",
        "has a row that sums to zero where the last token is drawn from it",
    ),
    Status.ROW_SUM_OVERFLOW: (
        "target_probs",
        "has a row whose sum exceeds the largest float32 (3.4e38) where the last token is drawn "
        "from it",
    ),
    Status.BAD_TREE: (
        "parents",
        "does not describe a valid tree (a parent that is not -1 or an earlier real node, "
        "num_nodes outside 0..N, or a node deeper than max_depth)",
    ),
    Status.REPEATED_SIBLING: (
        "draft_token_ids",
        "repeats a token among siblings where the rule needs distinct siblings",
    ),
    Status.BAD_PARAMETER: (
        "a sampling parameter",
        "(temperature, top_k, top_p, draft count or offset) is out of range",
    ),
}


def describe(flags: int) -> str:
    """A readable list of the problems in ``flags``, naming the argument of each.

    >>> describe(Status.BAD_DRAFT_ID | Status.BAD_UNIFORM)
    'draft_token_ids holds an id outside [0, V); uniforms holds a value outside [0, 1)'
    """
    parts = [f"{arg} {what}" for bit, (arg, what) in _PROBLEMS.items() if flags & bit]
    unknown = int(flags) & ~sum(int(b) for b in _PROBLEMS)
    if unknown:
        parts.append(f"unknown status bits {unknown:#x}")
    return "; ".join(parts) if parts else "ok"


def status_error(status: torch.Tensor) -> ValueError | None:
    """The ``ValueError`` for a ``[B]`` status tensor, or None when every request is fine.

    Reads the tensor on the host (one sync). The message names the first flagged request, its
    problems and argument, and how many other requests are flagged.
    """
    import torch

    host = status.detach().to("cpu", torch.int64)  # the one sync
    flagged = torch.nonzero(host).flatten().tolist()
    if not flagged:
        return None
    first = flagged[0]
    flags = int(host[first])
    more = len(flagged) - 1
    tail = f" ({more} more request{'s' if more != 1 else ''} flagged: {flagged[1:6]}" + (
        ", ...)" if more > 5 else ")"
    )
    return ValueError(
        f"request {first}: {describe(flags)} (status={flags})" + (tail if more else "")
    )
