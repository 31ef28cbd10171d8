"""The status bits of :class:`specsample.Status` as Triton compile-time constants.

Every Triton kernel of this package imports its bits from here, so the kernels and the contract
cannot disagree on a value.
"""

from __future__ import annotations

import triton.language as tl
from specsample.status import Status

BAD_ID = tl.constexpr(int(Status.BAD_DRAFT_ID))
BAD_TARGET = tl.constexpr(int(Status.BAD_TARGET_VALUE))
BAD_DRAFT = tl.constexpr(int(Status.BAD_DRAFT_VALUE))
BAD_UNIFORM = tl.constexpr(int(Status.BAD_UNIFORM))
ZERO_ROW = tl.constexpr(int(Status.ZERO_ROW))
OVERFLOW = tl.constexpr(int(Status.ROW_SUM_OVERFLOW))
BAD_TREE = tl.constexpr(int(Status.BAD_TREE))
REPEATED = tl.constexpr(int(Status.REPEATED_SIBLING))
BAD_PARAMETER = tl.constexpr(int(Status.BAD_PARAMETER))
